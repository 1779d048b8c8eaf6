"""download-weights, auto-download and model resolution against a fake hub on 127.0.0.1 (no real network).

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import, so these tests run the real CLI in
subprocesses with the environment set.
"""

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PATCH14, PHOTOS, TINY, TINY_TEXT, build_checkpoint, run_cli, run_on_terminal
from fakehub import FakeHub, _File, git_blob_sha1

JUNK = {"tokenizer.json": b"{}", "spiece.model": b"x" * 100, "pytorch_model.bin": b"pickle" * 100,
        "tf_model.h5": b"h5" * 100, "flax_model.msgpack": b"m" * 100, "onnx/model.onnx": b"o" * 100,
        "README.md": b"# model card"}
# Mirrors that leave the hub's hashes out of the model info; what else they strip (FakeHub.strip_hashes).
MIRRORS = {"info": {}, "info-tree": {"tree": True}, "info-etag": {"etag": True}}
TINY_FILES = "config.json, model.safetensors, preprocessor_config.json"


def checkpoint_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubrepos")
    build_checkpoint(root / "tiny", TINY)
    build_checkpoint(root / "full", PATCH14, layout="full", shard_size="20KB",
                     text={**TINY_TEXT, "vocab_size": 300}, tokenizer="siglip")
    tiny = checkpoint_files(root / "tiny")
    with FakeHub() as h:
        h.tiny_commit = h.add_repo("acme/siglip-tiny", {**tiny, **JUNK})
        h.add_repo("acme/siglip-tiny", {**tiny, "README.md": b"v2"}, revision="v2")
        h.add_repo("acme/siglip-full", root / "full")
        h.add_repo("acme/gated-siglip", tiny, gated=True)
        h.add_repo("acme/pickle-only", {"config.json": tiny["config.json"], "pytorch_model.bin": b"p" * 1000})
        truncated = tiny["model.safetensors"][:-64]
        h.add_repo("acme/truncated", {**tiny, "model.safetensors": truncated})
        cfg = json.loads(tiny["config.json"])
        h.add_repo("acme/mismatch", {**tiny, "config.json": json.dumps({**cfg, "intermediate_size": 40}).encode()})
        h.add_repo("acme/clip", {**tiny, "config.json": json.dumps({"model_type": "clip"}).encode()})
        h.add_repo("acme/naflex", {**tiny, "config.json": json.dumps({"model_type": "siglip2"}).encode()})
        h.add_repo("acme/cut", tiny)
        h.add_repo("acme/corrupt", tiny)
        for kind, stripped in MIRRORS.items():
            for repo in (f"acme/mirror-{kind}", f"acme/mirror-{kind}-corrupt"):
                h.add_repo(repo, tiny)
                h.strip_hashes(repo, **stripped)
            h.corrupt_file(f"acme/mirror-{kind}-corrupt", "model.safetensors")
        h.add_repo("acme/bare-mirror", tiny)
        h.strip_hashes("acme/bare-mirror", tree=True, etag=True)
        yield h


def hub_env(hub: FakeHub, tmp: Path, **extra) -> dict:
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp / "cache"), "HF_HOME": str(tmp / "hfhome"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HUB_ETAG_TIMEOUT": "5",
           "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    return {**env, **extra}


def snapshot_files(tmp: Path, repo: str) -> list[str]:
    snaps = list((tmp / "cache" / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
    assert len(snaps) == 1
    return sorted(str(p.relative_to(snaps[0])) for p in snaps[0].rglob("*") if p.is_file())


def blobs(tmp: Path, repo: str) -> list[Path]:
    folder = tmp / "cache" / f"models--{repo.replace('/', '--')}" / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_download_fetches_only_what_it_needs_then_embed_runs_offline(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    proc = run_cli("download-weights", "acme/siglip-tiny", env=env)
    assert proc.returncode == 0, proc.stderr
    assert snapshot_files(tmp_path, "acme/siglip-tiny") == ["config.json", "model.safetensors",
                                                            "preprocessor_config.json"]
    fetched = {path for method, path in hub.requests if method == "GET" and "/resolve/" in path}
    assert not any(name in p for p in fetched for name in JUNK)
    lines = dict(line.split(":", 1) for line in proc.stdout.strip().splitlines())
    assert lines["model"].strip() == "acme/siglip-tiny"
    assert lines["revision"].strip() == hub.tiny_commit
    assert lines["path"].strip().endswith(f"snapshots/{hub.tiny_commit}")
    assert lines["size"].strip().endswith("in 3 files")

    before = len(hub.requests)
    out = tmp_path / "cat.safetensors"
    proc = run_cli("embed", str(PHOTOS[0]), "--model", "acme/siglip-tiny", "-o", str(out),
                   env=hub_env(hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert len(hub.requests) == before  # offline: not a single request
    from siglip_cli.writers import read_embeddings

    array, meta = read_embeddings(out)
    assert array.shape == (16, 32)
    assert (meta["model"], meta["revision"], meta["norm"]) == ("acme/siglip-tiny", hub.tiny_commit, "checkpoint")

    proc = run_cli("download-weights", "acme/siglip-tiny", "--verify", env=hub_env(hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stderr and hub.tiny_commit in proc.stdout
    assert len(hub.requests) == before


def test_first_embed_downloads_automatically_and_a_pinned_revision_makes_no_request(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    out = tmp_path / "a.npy"
    proc = run_cli("embed", str(PHOTOS[0]), "--model", "acme/siglip-tiny", "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "acme/siglip-tiny is not in the cache: downloading it" in proc.stderr
    assert np.load(out).shape == (16, 32)
    before = len(hub.requests)
    pinned = f"acme/siglip-tiny@{hub.tiny_commit}"
    proc = run_cli("embed", str(PHOTOS[0]), "--model", pinned, "-o", str(tmp_path / "b.npy"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(hub.requests) == before
    assert np.array_equal(np.load(tmp_path / "b.npy"), np.load(out))


def test_revision_downloads_that_commit(hub, tmp_path):
    proc = run_cli("download-weights", "acme/siglip-tiny@v2", env=hub_env(hub, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert hub.tiny_commit not in proc.stdout
    refs = tmp_path / "cache" / "models--acme--siglip-tiny" / "refs" / "v2"
    assert refs.read_text() in proc.stdout


def test_full_checkpoint_says_the_text_tower_comes_along(hub, tmp_path):
    proc = run_cli("download-weights", "acme/siglip-full", env=hub_env(hub, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "is a full SigLIP checkpoint: its weights" in proc.stderr
    assert "it comes with its tokenizer" in proc.stderr
    assert "text tower" in proc.stdout
    files = snapshot_files(tmp_path, "acme/siglip-full")
    assert "model.safetensors.index.json" in files and len([f for f in files if f.startswith("model-0")]) > 2
    assert {"spiece.model", "tokenizer_config.json"} <= set(files)  # the text commands' tokenizer
    assert "checksum: verified" in proc.stdout  # the tokenizer files too
    # the text commands run from the cache alone
    proc = run_cli("embed-text", "a cat", "-m", "acme/siglip-full", "-o", str(tmp_path / "t.npy"),
                   env=hub_env(hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "t.npy").shape == (1, 32)  # the text width: this fixture has no projection


def test_a_cached_full_model_without_its_tokenizer_gets_it(hub, tmp_path):
    """A cache filled by an older siglip (no tokenizer files): the text commands fetch the tokenizer."""
    env = hub_env(hub, tmp_path)
    assert run_cli("download-weights", "acme/siglip-full", env=env).returncode == 0
    snap = next((tmp_path / "cache" / "models--acme--siglip-full" / "snapshots").iterdir())
    (snap / "spiece.model").unlink()
    proc = run_cli("embed-text", "a cat", "-m", "acme/siglip-full", "-o", str(tmp_path / "t.npy"),
                   env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "no tokenizer" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = run_cli("embed-text", "a cat", "-m", "acme/siglip-full", "-o", str(tmp_path / "t.npy"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "its tokenizer is not in the cache: downloading it" in proc.stderr
    assert (snap / "spiece.model").is_file()


def _fails(args, env, code, message):
    proc = run_cli(*args, env=env)
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, proc.stderr
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    return errors[0]


@pytest.mark.parametrize("repo, message", [
    ("acme/no-such-model", "model acme/no-such-model not found on the Hugging Face hub: check the id"),
    ("acme/gated-siglip", "model acme/gated-siglip is gated: accept its terms at"),
    ("acme/siglip-tiny@nope", "revision 'nope' not found in acme/siglip-tiny"),
    ("acme/pickle-only", "acme/pickle-only has no safetensors weights (only pytorch_model.bin): siglip never "
                         "unpickles weights"),
    ("acme/truncated", "model.safetensors: truncated or corrupt safetensors file"),
    ("acme/mismatch", "weights do not fit config.json: shape mismatch: vision_model.encoder.layers.0.mlp.fc1.bias"),
    ("acme/clip", "unsupported architecture model_type='clip'"),
    ("acme/naflex", "SigLIP 2 NaFlex checkpoints (model_type 'siglip2') are not supported"),
])
def test_hub_errors_are_one_line_with_exit_2(hub, tmp_path, repo, message):
    before = len(hub.requests)
    _fails(["download-weights", repo], hub_env(hub, tmp_path), 2, message)
    if repo in ("acme/clip", "acme/naflex"):  # refused from config.json alone: the weights never come
        assert not [p for m, p in hub.requests[before:] if m == "GET" and p.endswith(".safetensors")]


@pytest.mark.parametrize("args, message", [
    (["acme/x--y"], "model 'acme/x--y': no such directory, and not a Hugging Face model id"),
    (["acme/siglip-tiny@"], "nothing after '@'"),
    (["acme/siglip-tiny@v1", "--revision", "v2"], "and --revision 'v2' disagree"),
    (["acme/siglip-tiny", "--local-dir", "/proc/nope"], "cannot store acme/siglip-tiny in /proc/nope"),
])
def test_bad_ids_and_places_are_one_line_errors(hub, tmp_path, args, message):
    _fails(["download-weights", *args], hub_env(hub, tmp_path), 2, message)


def test_offline_download_weights_reports_the_cached_copy(hub, tmp_path):
    assert run_cli("download-weights", "acme/siglip-tiny", env=hub_env(hub, tmp_path)).returncode == 0
    proc = run_cli("download-weights", "acme/siglip-tiny", env=hub_env(hub, tmp_path, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    assert hub.tiny_commit in proc.stdout and proc.stderr == ""


def test_embed_uses_a_model_in_a_custom_cache_dir(hub, tmp_path):
    big = tmp_path / "big-disk"
    assert run_cli("download-weights", "acme/siglip-tiny", "--cache-dir", str(big),
                   env=hub_env(hub, tmp_path)).returncode == 0
    before = len(hub.requests)
    proc = run_cli("embed", str(PHOTOS[0]), "--model", "acme/siglip-tiny", "--cache-dir", str(big), "--offline",
                   "-o", str(tmp_path / "x.npy"), env=hub_env(hub, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert len(hub.requests) == before and not (tmp_path / "cache").exists()


def test_gated_repo_works_with_a_token(hub, tmp_path):
    proc = run_cli("download-weights", "acme/gated-siglip", env=hub_env(hub, tmp_path, HF_TOKEN=hub.token))
    assert proc.returncode == 0, proc.stderr


def test_offline_with_an_empty_cache_names_the_command(hub, tmp_path):
    for extra, env in ((["--offline"], hub_env(hub, tmp_path)), ([], hub_env(hub, tmp_path, HF_HUB_OFFLINE="1"))):
        _fails(["embed", str(PHOTOS[0]), "--model", "acme/siglip-tiny", "-o", str(tmp_path / "x.npy"), *extra], env,
               2, "model acme/siglip-tiny is not in the Hugging Face cache and downloads are off")
    err = _fails(["download-weights", "acme/siglip-tiny"], hub_env(hub, tmp_path, HF_HUB_OFFLINE="1"), 2,
                 "HF_HUB_OFFLINE=1 forbids downloading")
    assert "`siglip download-weights acme/siglip-tiny`" in err
    assert not (tmp_path / "x.npy").exists()


def test_network_unreachable(hub, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = hub_env(hub, tmp_path, HF_ENDPOINT=closed)
    _fails(["download-weights", "acme/siglip-tiny"], env, 2, f"cannot reach the Hugging Face hub at {closed}")
    err = _fails(["embed", str(PHOTOS[0]), "-o", str(tmp_path / "x.npy")], env, 2,
                 "cannot reach the Hugging Face hub")
    assert "`siglip download-weights google/siglip-base-patch16-224`, or use --random-init" in err


def test_a_download_cut_off_resumes_and_leaves_nothing_corrupt(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    hub.cut_file("acme/cut", "model.safetensors", after_bytes=5000, times=6)  # huggingface_hub retries 5 times
    err = _fails(["download-weights", "acme/cut"], env, 2, "download of acme/cut was cut off")
    assert "run `siglip download-weights acme/cut` again; a partial file is never used" in err
    snaps = tmp_path / "cache" / "models--acme--cut" / "snapshots"
    assert not list(snaps.rglob("model.safetensors"))  # nothing half-written is visible
    proc = run_cli("download-weights", "acme/cut", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not [b for b in blobs(tmp_path, "acme/cut") if b.name.endswith(".incomplete")]
    proc = run_cli("download-weights", "acme/cut", "--verify", env=env)
    assert proc.returncode == 0, proc.stderr


def test_a_corrupted_body_of_the_right_size_is_caught_and_removed(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    hub.corrupt_file("acme/corrupt", "model.safetensors")
    err = _fails(["download-weights", "acme/corrupt"], env, 2, "acme/corrupt: model.safetensors is corrupt (sha256")
    assert "the bad file was removed" in err
    assert not list((tmp_path / "cache" / "models--acme--corrupt").rglob("model.safetensors"))
    assert all(b.stat().st_size < 1000 for b in blobs(tmp_path, "acme/corrupt"))  # only the small json files


def test_verify_catches_a_cache_file_damaged_after_download(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    assert run_cli("download-weights", "acme/siglip-tiny", env=env).returncode == 0
    blob = max(blobs(tmp_path, "acme/siglip-tiny"), key=lambda b: b.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    _fails(["download-weights", "acme/siglip-tiny", "--verify"], env, 2, "model.safetensors is corrupt")
    _fails(["download-weights", "acme/never-downloaded", "--verify"], env, 2,
           "model acme/never-downloaded is not in the Hugging Face cache: run `siglip download-weights")


def test_local_dir_download_and_verify(hub, tmp_path):
    env = hub_env(hub, tmp_path)
    local = tmp_path / "weights"
    proc = run_cli("download-weights", "acme/siglip-tiny", "--local-dir", str(local), env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in local.iterdir() if p.is_file()) == ["config.json", "model.safetensors",
                                                                     "preprocessor_config.json"]
    proc = run_cli("download-weights", "acme/siglip-tiny", "--local-dir", str(local), "--verify", env=env)
    assert proc.returncode == 0, proc.stderr
    assert hub.tiny_commit in proc.stdout
    proc = run_cli("embed", str(PHOTOS[0]), "--model", str(local), "-o", str(tmp_path / "x.npy"), env=env)
    assert proc.returncode == 0, proc.stderr


def test_models_lists_known_checkpoints_and_the_cache(hub, tmp_path):
    from siglip_cli.catalog import model_rows

    cache = tmp_path / "cache"
    for repo, files in (("siglip-base-patch16-224", ["config.json", "model.safetensors"]),
                        ("siglip-so400m-patch14-384", ["config.json"])):  # what a cut-off download leaves
        snap = cache / f"models--google--{repo}" / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        for f in files:
            (snap / f).write_text("{}")
    rows = {r["id"]: r for r in model_rows(cache)}
    base = rows["google/siglip-base-patch16-224"]
    assert (base["width"], base["depth"], base["patch"], base["resolution"], base["tokens"]) == (768, 12, 16, 224, 196)
    assert base["vision_params"] == 92_884_224 and base["cached"] is True
    assert abs(base["download_bytes"] - 812_560_000) < 2_000_000  # the hub's model.safetensors: 813 MB
    so400m = rows["google/siglip-so400m-patch14-384"]
    assert (so400m["width"], so400m["tokens"], so400m["cached"]) == (1152, 729, False)  # config only
    assert not any("naflex" in r for r in rows)
    proc = run_cli("models", env=hub_env(hub, tmp_path))
    assert proc.returncode == 0
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("google/siglip-base-patch16-224 "))
    assert line.split()[1:6] == ["768", "12", "16", "224", "93M"] and line.rstrip().endswith("yes")
    proc = run_cli("models", "--json", env=hub_env(hub, tmp_path))
    assert len(json.loads(proc.stdout)) == len(rows)
    assert (base["timm"], base["open_clip"]) == ("timm/vit_base_patch16_siglip_224.webli", "timm/ViT-B-16-SigLIP")
    proc = run_cli("models", "--layouts", env=hub_env(hub, tmp_path))
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("google/siglip2-so400m-patch14-384 "))
    assert line.split() == ["google/siglip2-so400m-patch14-384", "timm/vit_so400m_patch14_siglip_378.v2_webli",
                            "timm/ViT-SO400M-14-SigLIP2-378"]
    assert len({r["timm"] for r in rows.values()}) == len(rows) == len({r["open_clip"] for r in rows.values()})


def test_disk_full_is_one_clear_line():
    from siglip_cli.hub import HubError, hub_errors

    with pytest.raises(HubError, match=r"disk full while downloading acme/x to /big: free some space or pass "
                                          r"--cache-dir on a bigger disk"):
        with hub_errors("acme/x", None, Path("/big")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_download_progress_is_drawn_on_a_terminal_stderr_only(hub, tmp_path):
    env = {**os.environ, **hub_env(hub, tmp_path), "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    code, text, stdout = run_on_terminal(["download-weights", "acme/siglip-full"], env)
    assert code == 0
    assert "downloading" in text and "kB" in text  # rich's bar: description and bytes
    assert "\x1b[" in text  # drawn with terminal control codes
    assert "downloading" not in stdout and stdout.startswith("model:    acme/siglip-full")


@pytest.mark.parametrize("status, message", [
    (500, "the Hugging Face hub answered 500 for acme/x (Server error): run `siglip download-weights acme/x` "
          "again later"),
    (403, "access to acme/x was refused (403): log in with `hf auth login` (or set HF_TOKEN)"),
])
def test_other_http_answers_are_named(status, message):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    from siglip_cli.hub import HubError, hub_errors

    response = httpx2.Response(status, request=httpx2.Request("GET", "http://hub/api/models/acme/x"))
    with pytest.raises(HubError) as e:
        with hub_errors("acme/x", None):
            raise HfHubHTTPError("Server error", response=response)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("kind", list(MIRRORS))
def test_a_mirror_without_files_metadata_still_verifies_through_what_huggingface_hub_recorded(hub, tmp_path, kind):
    """No hashes in the model info: the tree listing huggingface_hub caches per commit, or the ETag it names
    the blob after (info-tree: the only record left), still catches a corrupted body of the right size."""
    env, offline = hub_env(hub, tmp_path), hub_env(hub, tmp_path, HF_HUB_OFFLINE="1")
    repo = f"acme/mirror-{kind}"
    err = _fails(["download-weights", f"{repo}-corrupt"], env, 2,
                 f"{repo}-corrupt: model.safetensors is corrupt (sha256")
    assert "the bad file was removed" in err
    assert not list((tmp_path / "cache" / f"models--acme--mirror-{kind}-corrupt").rglob("model.safetensors"))
    local = tmp_path / "local"
    for where in ([], ["--local-dir", str(local)]):
        proc = run_cli("download-weights", repo, *where, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "NOT verified" not in proc.stderr and "Warning" not in proc.stderr
        proc = run_cli("download-weights", repo, *where, "--verify", env=offline)
        assert proc.returncode == 0, proc.stderr


def test_a_mirror_with_no_hash_anywhere_says_not_verified_and_verify_refuses(hub, tmp_path):
    env, offline = hub_env(hub, tmp_path), hub_env(hub, tmp_path, HF_HUB_OFFLINE="1")
    local = tmp_path / "local"
    for where in ([], ["--local-dir", str(local)]):
        for run_env, reason in ((env, f"the hub at {hub.url} sent no hash for them (no files metadata"),
                                (offline, "no hash was recorded for them when downloaded")):
            proc = run_cli("download-weights", "acme/bare-mirror", *where, env=run_env)
            assert proc.returncode == 0, proc.stderr  # the files are kept: nothing says they are bad
            warnings = [line for line in proc.stderr.splitlines() if "verified" in line]
            assert len(warnings) == 1, proc.stderr
            assert warnings[0].startswith(f"Warning: acme/bare-mirror: {TINY_FILES} NOT verified"), proc.stderr
            assert reason in warnings[0]
        err = _fails(["download-weights", "acme/bare-mirror", *where, "--verify"], offline, 2,
                     f"acme/bare-mirror: {TINY_FILES} NOT verified: no hash was recorded for them when downloaded")
        assert "`siglip download-weights acme/bare-mirror` against a hub that sends hashes" in err


def test_embed_says_when_its_automatic_download_could_not_be_verified(hub, tmp_path):
    out = tmp_path / "x.npy"
    proc = run_cli("embed", str(PHOTOS[0]), "--model", "acme/bare-mirror", "-o", str(out), env=hub_env(hub, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"Warning: acme/bare-mirror: {TINY_FILES} NOT verified" in proc.stderr
    assert np.load(out).shape == (16, 32)


def test_download_weights_names_the_files_it_verified_and_those_it_could_not(hub, tmp_path):
    script = ("import json, sys, warnings\n"
              "from siglip_cli.hub import download_weights\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always')\n"
              "    done = download_weights(sys.argv[1], progress=False)\n"
              "print(json.dumps([done.verified, done.unverified, [str(w.message) for w in caught]]))")

    def download(repo):
        proc = subprocess.run([sys.executable, "-c", script, repo], capture_output=True, text=True,
                              env={**os.environ, **hub_env(hub, tmp_path)}, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    everything = TINY_FILES.split(", ")
    assert download("acme/siglip-tiny") == [everything, [], []]
    assert download("acme/mirror-info-tree") == [everything, [], []]  # the ETags: sha256 and git blob ids
    verified, unverified, warned = download("acme/bare-mirror")
    assert (verified, unverified, len(warned)) == ([], everything, 1)
    assert warned[0].startswith(f"acme/bare-mirror: {TINY_FILES} NOT verified")


def test_a_git_object_id_verifies_the_file_or_the_lfs_pointer_that_names_it(tmp_path):
    """A listing without `lfs` fields still carries each file's git object id: for a weight file, that of its LFS
    pointer (which names the sha256 and size). Both kinds verify; a wrong one is corruption."""
    from siglip_cli.hub import ChecksumError, verify_files

    data = os.urandom(5000)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    pointer = _File("model.safetensors", data)  # what the hub records for this file in LFS
    for want in (pointer.sha256, pointer.blob_id, git_blob_sha1(data)):
        verify_files("acme/x", tmp_path, {"model.safetensors": want})
    with pytest.raises(ChecksumError, match="acme/x: model.safetensors is corrupt"):
        verify_files("acme/x", tmp_path, {"model.safetensors": git_blob_sha1(data[:-1] + bytes([data[-1] ^ 1]))})
    assert not path.exists()


def test_the_summary_says_whether_the_files_were_verified(hub, tmp_path):
    """Needs cli.py's download-weights to print the `checksum:` line from Downloaded.verified / unverified."""
    env = hub_env(hub, tmp_path)
    for args, line in ((["acme/siglip-tiny"], "checksum: verified (3 files)"),
                       (["acme/siglip-tiny", "--verify"], "checksum: verified (3 files)"),
                       (["acme/bare-mirror"], f"checksum: NOT verified: {TINY_FILES} (no hash from the hub)")):
        proc = run_cli("download-weights", *args, env=env)
        assert proc.returncode == 0, proc.stderr
        assert line in proc.stdout.splitlines(), proc.stdout


def test_timm_and_open_clip_repositories_download_their_safetensors_only(tmp_path):
    pytest.importorskip("timm")
    from test_layouts import ARCH, TIMM_TINY, open_clip_folder, save_timm, timm_model, vision_cfg

    model = timm_model()
    save_timm(model, tmp_path / "timm")
    (tmp_path / "timm" / "pytorch_model.bin").write_bytes(b"pickle" * 100)
    state = {f"visual.trunk.{k}": v for k, v in model.state_dict().items()}
    open_clip_folder(tmp_path / "oc", state, {"embed_dim": 32, "vision_cfg": vision_cfg(timm_model_kwargs=TIMM_TINY)})
    (tmp_path / "oc" / "open_clip_pytorch_model.bin").write_bytes(b"pickle" * 100)
    with FakeHub() as h:
        h.add_repo(f"timm/{ARCH}.tiny", tmp_path / "timm")
        h.add_repo("timm/ViT-tiny-SigLIP", tmp_path / "oc")
        env = hub_env(h, tmp_path)
        for repo, files in ((f"timm/{ARCH}.tiny", ["config.json", "model.safetensors"]),
                            ("timm/ViT-tiny-SigLIP", ["open_clip_config.json", "open_clip_model.safetensors"])):
            proc = run_cli("download-weights", repo, env=env)
            assert proc.returncode == 0, proc.stderr
            assert snapshot_files(tmp_path, repo) == files and "checksum: verified (2 files)" in proc.stdout
            out = tmp_path / f"{repo.split('/')[1]}.npy"
            proc = run_cli("embed", str(PHOTOS[0]), "--model", repo, "--pool", "map", "-o", str(out),
                           env={**env, "HF_HUB_OFFLINE": "1"})
            assert proc.returncode == 0, proc.stderr
        a, b = np.load(tmp_path / f"{ARCH}.tiny.npy"), np.load(tmp_path / "ViT-tiny-SigLIP.npy")
        np.testing.assert_array_equal(a, b)  # the same weights in two layouts: the same vector
