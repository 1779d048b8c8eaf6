"""Nothing lost, no run aborted: hostile and unlucky inputs, names, outputs, faults and signals (issue 10).

Each test reproduces one way the promise broke; the faults are real OS faults where the machine allows
(RLIMIT_FSIZE, a tiny or read-only tmpfs, closed descriptors, a FIFO, /dev/null, SIGTERM).
"""

import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.atomic import STALE_AFTER_S, TMP_SUFFIX, atomic_write_bytes
from siglip_cli.batch import embed_to
from siglip_cli.cli import app
from siglip_cli.decode import DecodeBudget, decode_bytes, load_image
from siglip_cli.embed import Embedder
from siglip_cli.errors import ImageError, OutputError
from siglip_cli.preprocess import imagenet_preprocessing
from siglip_cli.writers import StackedWriter, read_embeddings

from conftest import PHOTOS, TINY, build_checkpoint, run_cli

SIGLIP = [sys.executable, "-m", "siglip_cli"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-trust")
    build_checkpoint(path, TINY)
    return path


@pytest.fixture(scope="module")
def emb():
    return Embedder(SiglipVisionModel.random_init(SiglipVisionConfig(**TINY)), imagenet_preprocessing(32),
                    device="cpu")


def photos(folder: Path, n: int = 3, bad: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(PHOTOS[i % len(PHOTOS)], folder / f"img{i:02d}{PHOTOS[i % len(PHOTOS)].suffix}")
    for i in range(bad):
        (folder / f"bad{i:02d}.jpg").write_bytes(b"not a jpeg " * 10)
    return folder


def records(report: Path) -> list[dict]:
    return [json.loads(line) for line in report.read_text().splitlines()]


def invoke(*args: str):
    """The real command in-process (CliRunner): for refusals that happen before any model is loaded."""
    return CliRunner().invoke(app, list(args))


def one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# --- data loss -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("victim", ["output", "sidecar", "input", "folder-output"])
def test_report_never_overwrites_an_input_or_an_output(tmp_path, model_dir, victim):
    src = photos(tmp_path / "src", 2)
    first = sorted(src.iterdir())[0]
    if victim == "folder-output":
        out, report = f"{tmp_path / 'emb'}/", tmp_path / "emb" / f"{first.name}.npy"
    else:
        out = str(tmp_path / "all.npy")
        report = {"output": tmp_path / "all.npy", "sidecar": tmp_path / "all.npy.json", "input": first}[victim]
    report.parent.mkdir(exist_ok=True)
    if not report.exists():
        report.write_bytes(b"precious")
    before = report.read_bytes()
    line = one_error_line(invoke("embed", str(src), "--model", str(model_dir), "-o", out, "--report", str(report)))
    assert "would overwrite an input or an output of this run" in line
    assert report.read_bytes() == before


def test_report_writes_through_devices_fifos_and_symlinks(tmp_path, model_dir):
    src = photos(tmp_path / "src", 2)
    null_before = os.stat("/dev/null")
    result = invoke("embed", str(src), "--model", str(model_dir), "-o", str(tmp_path / "a.npy"), "--report",
                    "/dev/null")
    assert result.exit_code == 0, result.output
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == null_before.st_rdev  # still the device

    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    result = invoke("embed", str(src), "--model", str(model_dir), "-o", str(tmp_path / "b.npy"), "--report", str(fifo))
    reader.join(30)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [json.loads(line)["status"] for line in got[0].splitlines()] == ["embedded", "embedded"]

    target = tmp_path / "real.jsonl"
    target.write_text("old")
    (tmp_path / "link.jsonl").symlink_to(target)
    result = invoke("embed", str(src), "--model", str(model_dir), "-o", str(tmp_path / "c.npy"), "--report",
                    str(tmp_path / "link.jsonl"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.jsonl").is_symlink() and len(records(target)) == 2


def test_embeddings_output_is_never_replaced_by_a_regular_file_over_a_fifo_or_symlink(tmp_path, model_dir):
    src = photos(tmp_path / "src", 2)
    os.mkfifo(tmp_path / "pipe.npy")
    line = one_error_line(invoke("embed", str(src), "--model", str(model_dir), "-o", str(tmp_path / "pipe.npy")))
    assert "is a FIFO" in line and stat.S_ISFIFO(os.lstat(tmp_path / "pipe.npy").st_mode)
    (tmp_path / "null.npy").symlink_to("/dev/null")
    line = one_error_line(invoke("embed", str(src), "--model", str(model_dir), "-o", str(tmp_path / "null.npy")))
    assert "is a device" in line and os.readlink(tmp_path / "null.npy") == "/dev/null"
    (tmp_path / "data").mkdir()
    (tmp_path / "link.npy").symlink_to(tmp_path / "data" / "real.npy")
    result = invoke("embed", str(src), "--model", str(model_dir), "-o", str(tmp_path / "link.npy"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "link.npy").is_symlink()
    assert np.load(tmp_path / "data" / "real.npy").shape == (2, 16, 32)
    assert read_embeddings(tmp_path / "link.npy")[1]["sources"] == [str(p) for p in sorted(src.iterdir())]


def _temp(folder: Path, name: str, age: float, suffix=TMP_SUFFIX, host="ffffff", pid=1) -> Path:
    tmp = folder / f".{name}.{host}-{pid}.abcd1234{suffix}"
    tmp.write_bytes(b"half")
    os.utime(tmp, (time.time() - age, time.time() - age))
    return tmp


def test_only_provably_abandoned_temps_are_removed(tmp_path):
    import fcntl

    long = "x" * 130  # two outputs whose names share more than the old 120-byte prefix
    live = _temp(tmp_path, long + "-other.npy", age=3600)
    holder = os.open(live, os.O_RDWR)  # another run, still writing it: it holds the writer's lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    from siglip_cli.atomic import _HOST

    # Its run, on this host, was killed a moment ago (a pid above any pid_max: no such process).
    dead = _temp(tmp_path, long + "-dead.npy", age=0, host=_HOST, pid=2 ** 22 + 7)
    young = _temp(tmp_path, long + "-new.npy", age=0, suffix=".siglip-new", host=_HOST, pid=2 ** 22 + 7)
    old = _temp(tmp_path, long + "-old.npy", age=3600, suffix=".siglip-new")  # its writer died creating it
    remote = _temp(tmp_path, long + "-remote.npy", age=0)  # another host's: its lock may not be visible here
    mine = tmp_path / ".precious.siglip-tmp"  # a user's file that merely ends like a temp
    mine.write_bytes(b"mine")
    try:
        atomic_write_bytes(tmp_path / f"{long}.npy", b"data")
        assert live.exists() and young.exists() and mine.exists() and remote.exists()
        assert not dead.exists() and not old.exists()
    finally:
        os.close(holder)
    assert STALE_AFTER_S <= 3600


def test_a_rerun_right_after_sigkill_leaves_no_temp(tmp_path, model_dir):
    src = photos(tmp_path / "src", 30)
    args = [*SIGLIP, "embed", str(src), "--model", str(model_dir), "-o", str(tmp_path / "all.npy"),
            "--batch-size", "1", "--workers", "1"]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(f".all.npy.*{TMP_SUFFIX}")):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert list(tmp_path.glob(f".all.npy.*{TMP_SUFFIX}"))  # the killed run's temp
    assert subprocess.run(args, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.npy", "all.npy.json", "src"]


def test_a_shard_given_twice_finishes_twice_without_false_failures(tmp_path, model_dir):
    src = photos(tmp_path / "src", 24)
    args = [*SIGLIP, "embed", str(src), "--model", str(model_dir), "-o", f"{tmp_path / 'emb'}/", "--batch-size", "1",
            "--workers", "1"]
    procs = [subprocess.Popen([*args, "--report", str(tmp_path / f"r{i}.jsonl")], stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == \
        sorted([".siglip.json", *(f"{p.name}.npy" for p in src.iterdir())])
    for i in range(2):
        assert all(r["status"] in ("embedded", "skipped") for r in records(tmp_path / f"r{i}.jsonl"))


def test_stacked_safetensors_stays_readable_past_the_header_limit(tmp_path):
    # 120,000 sources of 1,000 bytes: 120 MB of paths, over safetensors' 100 MB header limit.
    n, out = 120_000, tmp_path / "big.safetensors"
    writer = StackedWriter(out, n, {"model": "m"})
    for i in range(n):
        writer.add(np.full(2, i, dtype=np.float32), f"/data/{i:09d}/" + "p" * 983)
    writer.finish()
    array, meta = read_embeddings(out)
    assert array.shape == (n, 2) and array[-1, 0] == n - 1
    assert len(meta["sources"]) == n and meta["sources"][7].startswith("/data/000000007/") and meta["model"] == "m"
    with open(out, "rb") as f:
        assert int.from_bytes(f.read(8), "little") < 1024  # the header stays small at any scale


def test_a_failed_input_reserves_nothing_in_the_stacked_header(tmp_path):
    writer = StackedWriter(tmp_path / "few.safetensors", 1_000_000, {"model": "m"})
    writer.add(np.zeros(4, dtype=np.float32), "a.jpg")
    writer.finish()
    assert (tmp_path / "few.safetensors").stat().st_size < 1024
    assert read_embeddings(tmp_path / "few.safetensors")[1]["sources"] == ["a.jpg"]


def _stacked(path: Path, value: float, sources: list[str]) -> None:
    writer = StackedWriter(path, len(sources), {"model": "m"})
    for s in sources:
        writer.add(np.full(3, value, dtype=np.float32), s)
    writer.finish()


def test_a_npy_and_its_sidecar_change_together_or_are_refused(tmp_path, monkeypatch):
    out = tmp_path / "e.npy"
    _stacked(out, 1.0, ["a", "b"])
    real_replace = os.replace

    def die_before_the_sidecar(src, dst):  # the process is killed between the two renames
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die_before_the_sidecar)
    with pytest.raises(KeyboardInterrupt):
        _stacked(out, 2.0, ["c", "d"])
    monkeypatch.undo()
    assert np.load(out)[0, 0] == 2.0 and json.loads((tmp_path / "e.npy.json").read_text())["sources"] == ["a", "b"]
    with pytest.raises(OutputError, match=r"e\.npy\.json does not describe .*e\.npy"):
        read_embeddings(out)
    _stacked(out, 3.0, ["e", "f"])  # a rerun makes the pair whole again
    assert read_embeddings(out)[1]["sources"] == ["e", "f"]


def test_a_full_disk_while_writing_the_sidecar_keeps_the_old_pair(tmp_path, monkeypatch):
    out = tmp_path / "e.npy"
    _stacked(out, 1.0, ["a", "b"])
    real_fsync = os.fsync
    calls = []

    def full_on_the_second(fd):  # the array's temp is complete; the sidecar's cannot be stored
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_on_the_second)
    with pytest.raises(OutputError, match="No space left on device"):
        _stacked(out, 2.0, ["c", "d"])
    monkeypatch.undo()
    array, meta = read_embeddings(out)
    assert array[0, 0] == 1.0 and meta["sources"] == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "e.npy.json"]


def test_a_file_and_a_folder_output_at_the_same_path_collide(tmp_path, emb):
    (tmp_path / "k.npy").mkdir()
    shutil.copy(PHOTOS[1], tmp_path / "k.npy" / "q.png")
    shutil.copy(PHOTOS[0], tmp_path / "k")  # an image without a suffix, named in the list
    listing = tmp_path / "list.txt"
    listing.write_text("k.npy/q.png\nk\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        from siglip_cli.inputs import collect

        summary = embed_to(emb, collect([], str(listing)), "out/", report=tmp_path / "r.jsonl")
    finally:
        os.chdir(cwd)
    got = {r["path"]: r for r in records(tmp_path / "r.jsonl")}
    assert got["k.npy/q.png"]["status"] == "embedded"
    assert got["k"]["status"] == "failed" and "need the same path as a file and as a folder" in got["k"]["reason"]
    assert summary.skipped == 0
    # On disk from an earlier run: a folder where an output file should go is never "output exists".
    (tmp_path / "out2" / f"{PHOTOS[0].name}.npy").mkdir(parents=True)
    summary = embed_to(emb, [PHOTOS[0]], tmp_path / "out2/", report=tmp_path / "r2.jsonl", stack=True)
    assert summary.skipped == 0 and summary.failed == 1
    assert "is a folder, which siglip never replaces" in records(tmp_path / "r2.jsonl")[0]["reason"]


@pytest.mark.parametrize("redirect", ["2>&-", "2>&1 | head -1"])
def test_a_closed_or_broken_stderr_loses_nothing(tmp_path, model_dir, redirect):
    src = photos(tmp_path / "src", 3, bad=3)
    out = tmp_path / "all.npy"
    cmd = " ".join([*SIGLIP, "embed", str(src), "--model", str(model_dir), "-o", str(out), "--batch-size", "1",
                    "--report", str(tmp_path / "r.jsonl")])
    proc = subprocess.run(["bash", "-c", f"{cmd} {redirect}; echo \"rc=${{PIPESTATUS[0]}}\" >&2"],
                          capture_output=True, text=True, timeout=300)
    assert "rc=1" in proc.stderr  # some inputs failed: 1, not a crash (120) or SIGPIPE
    assert np.load(out).shape == (3, 16, 32)
    assert [r["status"] for r in records(tmp_path / "r.jsonl")].count("failed") == 3


# --- names and lists -----------------------------------------------------------------------------------

def test_odd_names_are_embedded_or_named_never_a_traceback(tmp_path, emb):
    src = tmp_path / "src"
    src.mkdir()
    latin1 = os.fsdecode(b"caf\xe9.jpg")  # a name from another locale: not UTF-8
    long = "l" * 250 + ".jpg"  # 254 bytes: fine as an input, too long once ".npy" is added
    newline = "two\nlines.jpg"
    for name in (latin1, long, newline):
        shutil.copy(PHOTOS[0], src / name)
    for fmt in (".npy", ".safetensors"):
        out = tmp_path / f"out{fmt}"
        summary = embed_to(emb, [src], f"{out}/", fmt=fmt, report=tmp_path / f"r{fmt}.jsonl")
        assert (summary.embedded, summary.failed) == (3, 0)
        got = records(tmp_path / f"r{fmt}.jsonl")
        assert sorted(r["path"] for r in got) == sorted(f"{src}/{n}" for n in ("caf\\xe9.jpg", long, newline))
        assert len((tmp_path / f"r{fmt}.jsonl").read_text().splitlines()) == 3
        shortened = [p for p in os.listdir(out) if p.startswith("l" * 200)]
        assert len(shortened) == 1 and len(shortened[0].encode()) <= 255 and shortened[0].endswith(fmt)
        assert os.path.exists(out / (latin1 + fmt))
        again = embed_to(emb, [src], f"{out}/", fmt=fmt)  # resume finds every output, the shortened one too
        assert (again.skipped, again.embedded) == (3, 0)
    assert read_embeddings(tmp_path / "out.safetensors" / (latin1 + ".safetensors"))[1]["source"] == \
        f"{src}/caf\\xe9.jpg"


def test_odd_names_on_the_command_line(tmp_path, model_dir):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PHOTOS[0], src / "two\nlines.jpg")
    shutil.copy(PHOTOS[1], src / "ok.jpg")
    too_long = str(src / ("n" * 300 + ".jpg"))  # a component over 255 bytes
    proc = run_cli("embed", str(src / "two\nlines.jpg"), str(src / "ok.jpg"), too_long, "--model", str(model_dir),
                   "-o", str(tmp_path / "all.npy"), "--report", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"{too_long}: cannot read it: File name too long"
    assert lines[-1].startswith(f"wrote {tmp_path / 'all.npy'}") and "2 embedded" in lines[-1]
    assert np.load(tmp_path / "all.npy").shape == (2, 16, 32)
    assert [r["status"] for r in records(tmp_path / "r.jsonl")] == ["embedded", "embedded", "failed"]


@pytest.mark.parametrize("how", ["stdin closed", "/dev/zero", "binary file"])
def test_a_list_that_is_not_a_list_is_one_line_quickly(tmp_path, how):
    if how == "binary file":
        (tmp_path / "blob").write_bytes(os.urandom(1 << 20))
    arg = {"stdin closed": "-", "/dev/zero": "/dev/zero", "binary file": str(tmp_path / "blob")}[how]
    cmd = " ".join([*SIGLIP, "embed", "--files-from", arg, "--random-init", "-o", str(tmp_path / "x.npy")])
    start = time.time()
    proc = subprocess.run(["bash", "-c", cmd + (" <&-" if how == "stdin closed" else "")], capture_output=True,
                          text=True, timeout=120, preexec_fn=lambda: resource.setrlimit(
                              resource.RLIMIT_AS, (4 << 30, 4 << 30)))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("Error: --files-from")
    assert ("stdin is closed" if how == "stdin closed" else "is not a path") in proc.stderr
    assert time.time() - start < 60


def test_a_list_may_hold_names_in_any_encoding(tmp_path, emb):
    name = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    shutil.copy(PHOTOS[0], os.fsdecode(name))
    listing = tmp_path / "list.txt"
    listing.write_bytes(name + b"\n# a comment\n\n")
    from siglip_cli.inputs import collect

    items = collect([], str(listing))
    assert [os.fsencode(i.path) for i in items] == [name] and items[0].error is None


# --- decoding, memory, signals -------------------------------------------------------------------------

def test_any_exception_while_reading_one_image_is_that_images_failure(tmp_path, emb, monkeypatch):
    src = photos(tmp_path / "src", 3)
    victim = sorted(src.iterdir())[1]
    real_open = Image.open

    def plugin_bug(fp, *a, **k):
        if str(fp) == str(victim):
            raise TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'")
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", plugin_bug)
    summary = embed_to(emb, [src], f"{tmp_path / 'out'}/", report=tmp_path / "r.jsonl")
    assert (summary.embedded, summary.failed) == (2, 1)
    failed = [r for r in records(tmp_path / "r.jsonl") if r["status"] == "failed"]
    assert failed == [{"path": str(victim), "status": "failed", "output": None,
                       "reason": "cannot decode image (TypeError: unsupported operand type(s) for +: 'NoneType' "
                                 "and 'int')"}]


def test_a_malformed_exif_block_keeps_the_pixels(tmp_path):
    from test_fuzz import _exif, retype_exif, with_exif

    photo = Image.open(PHOTOS[0]).convert("RGB").resize((64, 48))
    # The Make tag's type changed from text to RATIONAL: ImageOps.exif_transpose raised AttributeError,
    # and the whole run stopped at this (otherwise fine) photo, on every rerun.
    blob = next(b for tag, typ, b in retype_exif(_exif(6).tobytes(), (5,)) if tag == 0x010F)
    (tmp_path / "bad.jpg").write_bytes(with_exif(photo, "JPEG", blob))
    image = load_image(tmp_path / "bad.jpg")
    assert image.size == (48, 64) and image.mode == "RGB"  # embedded, and still turned as orientation 6 says


def test_decoding_in_flight_is_bounded_by_a_byte_budget():
    budget = DecodeBudget(100)
    peak, active, lock = [0], [0], threading.Lock()

    def decode(cost):
        with budget.hold(cost, "x", "test"):
            with lock:
                active[0] += cost
                peak[0] = max(peak[0], active[0])
            time.sleep(0.01)
            with lock:
                active[0] -= cost

    threads = [threading.Thread(target=decode, args=(c,)) for c in [60, 50, 40, 30, 70, 20] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] <= 100 and budget.used == 0
    with pytest.raises(ImageError, match=r"needs ~0\.0 GB to decode \(test\), more than the decode memory budget"):
        with budget.hold(101, "x", "test"):
            pass


def _tiff16(path: Path, size: tuple[int, int]) -> None:
    pixels = np.zeros((size[1], size[0]), dtype=np.uint16)
    pixels[::100] = 60000  # a stripe every 100 rows: 16-bit, and compresses to almost nothing
    Image.fromarray(pixels).save(path, compression="tiff_deflate")


def _peak_rss_kb(args: list[str]) -> tuple[int, str, str]:
    """Run `siglip ARGS` in a fresh process; its peak RSS (KB), exit code and stderr."""
    code = ("import resource, sys; from siglip_cli.cli import main; sys.argv[0] = 'siglip'\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, e.code, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    peak, exit_code = proc.stderr.split()[-2:]
    return int(peak), exit_code, proc.stderr


def test_a_tiny_file_declaring_a_huge_image_is_decoded_within_the_budget(tmp_path, model_dir):
    src, small = tmp_path / "src", photos(tmp_path / "small", 1)
    src.mkdir()
    _tiff16(src / "a.tif", (8000, 6000))  # 48 MP at 16 bits, a few hundred KB on disk
    for copy in ("b.tif", "c.tif"):
        shutil.copy(src / "a.tif", src / copy)
    assert (src / "a.tif").stat().st_size < 2_000_000
    estimate = decode_bytes("I;16", (8000, 6000))
    assert estimate == 48_000_000 * 12  # measured: ~7 bytes a pixel at the peak
    common = ["--model", str(model_dir), "--workers", "3", "--decode-memory", "0.7"]
    base, code, err = _peak_rss_kb(["embed", str(small), "-o", f"{tmp_path / 'o0'}/", *common])
    peak, code, err = _peak_rss_kb(["embed", str(src), "-o", f"{tmp_path / 'o1'}/", *common])
    assert code == "0", err
    # One decode at a time (0.58 GB estimated, 0.7 GB budget): three at once would add ~1 GB.
    assert (peak - base) * 1024 < 0.6e9, (base, peak)
    _, code, err = _peak_rss_kb(["embed", str(src), "-o", f"{tmp_path / 'o2'}/", *common[:-1], "0.2"])
    assert code == "1" and "a.tif: needs ~0.6 GB to decode (8000x6000 I;16), more than the decode memory budget " \
                           "of 0.2 GB: raise --decode-memory to embed it" in err


def test_sigterm_while_the_model_loads_still_writes_the_report(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)  # a hub that accepts and never answers: the download hangs while the model loads
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}",
           "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    src = photos(tmp_path / "src", 1)
    proc = subprocess.Popen([*SIGLIP, "embed", str(src), "--model", "acme/slow", "-o", str(tmp_path / "x.npy"),
                             "--report", str(tmp_path / "r.jsonl")], stderr=subprocess.PIPE, env=env)
    server.settimeout(120)
    conn, _ = server.accept()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    conn.close()
    server.close()
    assert (tmp_path / "r.jsonl").read_text() == ""
    assert not (tmp_path / "x.npy").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)] == []


def test_sigterm_during_start_up_imports_still_writes_the_report(tmp_path):
    src = photos(tmp_path / "src", 1)
    proc = subprocess.Popen([*SIGLIP, "embed", str(src), "--random-init", "-o", str(tmp_path / "x.npy"),
                             "--report", str(tmp_path / "r.jsonl")], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:  # the moment siglip catches SIGTERM: right at start-up, before torch is imported
        caught = next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                      if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, proc.stderr.read()
    assert (tmp_path / "r.jsonl").read_text() == "" and not (tmp_path / "x.npy").exists()


def test_a_shard_with_nothing_to_do_writes_its_empty_report(tmp_path, model_dir):
    src = photos(tmp_path / "src", 1)
    result = invoke("embed", str(src), "--model", str(model_dir), "-o", f"{tmp_path / 'o'}/", "--shard", "1/2",
                    "--report", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 0 and (tmp_path / "r.jsonl").read_text() == ""


def test_an_output_folder_deleted_mid_run_is_named_truly(tmp_path, emb):
    src = photos(tmp_path / "src", 4)
    out = tmp_path / "out"

    def delete_after_first(outcome):
        if outcome.status == "embedded":
            shutil.rmtree(out, ignore_errors=True)

    with pytest.raises(OutputError, match=r"output folder .*out no longer exists \(deleted during the run\?\)"):
        embed_to(emb, [src], f"{out}/", batch_size=1, workers=0, on_outcome=delete_after_first,
                 report=tmp_path / "r.jsonl")
    assert [r["status"] for r in records(tmp_path / "r.jsonl")] == ["embedded", "failed"]


# --- real OS faults ------------------------------------------------------------------------------------

def test_a_file_size_limit_fails_the_stacked_output_cleanly(tmp_path, model_dir):
    src = photos(tmp_path / "src", 3)
    out = tmp_path / "all.npy"
    out.write_bytes(b"old")
    proc = subprocess.run([*SIGLIP, "embed", str(src), "--model", str(model_dir), "-o", str(out)],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"Error: cannot write '{out}': File too large"
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["all.npy", "src"]


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_with_one_line_and_leaves_no_temp(tmpfs, tmp_path):
    src = photos(tmp_path / "src", 40)
    big = Embedder(SiglipVisionModel.random_init(SiglipVisionConfig(**TINY)), imagenet_preprocessing(96),
                   device="cpu")  # 18 KB a file: three fit
    with pytest.raises(OutputError, match="No space left on device"):
        embed_to(big, [src], f"{tmpfs / 'emb'}/", report=tmp_path / "r.jsonl", batch_size=1, workers=0)
    got = records(tmp_path / "r.jsonl")
    assert 2 <= len(got) <= 6 and got[0]["status"] == "embedded"  # stopped at the first write that failed
    assert got[-1]["status"] == "failed" and "No space left on device" in got[-1]["reason"]
    assert [p for p in (tmpfs / "emb").iterdir() if p.name.endswith(TMP_SUFFIX)] == []
    shutil.rmtree(tmpfs / "emb")
    with pytest.raises(OutputError, match="No space left on device"):  # stacked: nothing claims "embedded"
        embed_to(big, [src], tmpfs / "all.npy", report=tmp_path / "s.jsonl")
    assert {r["status"] for r in records(tmp_path / "s.jsonl")} == {"failed"}
    assert not (tmpfs / "all.npy").exists()


def test_a_read_only_output_folder_is_refused_before_any_work(tmpfs, tmp_path, model_dir):
    (tmpfs / "emb").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    src = photos(tmp_path / "src", 2)
    line = one_error_line(invoke("embed", str(src), "--model", str(model_dir), "-o", f"{tmpfs / 'emb'}/"))
    assert line == f"Error: cannot write to output folder '{tmpfs / 'emb'}': Read-only file system"


# --- found by a hostile review -------------------------------------------------------------------------

def test_report_to_stdout_feeds_a_pipe_and_appends_to_a_log(tmp_path, model_dir):
    src = photos(tmp_path / "src", 2)
    base = " ".join([*SIGLIP, "embed", str(src), "--model", str(model_dir), "-q", "--report", "/dev/stdout"])
    piped = subprocess.run(["bash", "-c", f"{base} -o {tmp_path / 'a.npy'} | wc -l"], capture_output=True,
                           text=True, timeout=300)
    assert piped.stdout.strip() == "2", piped.stderr
    log = tmp_path / "log.txt"
    log.write_text("an earlier line\n")
    appended = subprocess.run(["bash", "-c", f"{base} -o {tmp_path / 'b.npy'} >> {log}"], capture_output=True,
                              text=True, timeout=300)
    assert appended.returncode == 0, appended.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "an earlier line" and [json.loads(x)["status"] for x in lines[1:]] == ["embedded"] * 2


def test_report_refusals_for_odd_spellings(tmp_path, model_dir):
    dd = tmp_path / "dd"
    (dd / "sub").mkdir(parents=True)
    shutil.copy(PHOTOS[0], dd / "..x.jpg")  # a name that starts with two dots, not a parent folder
    shutil.copy(PHOTOS[1], dd / "sub" / "b.jpg")
    for report in (tmp_path / "odd" / "..x.jpg.npy", tmp_path / "odd" / "sub"):  # an output; a folder outputs need
        line = one_error_line(invoke("embed", str(dd), "--hidden", "--model", str(model_dir), "-o",
                                     f"{tmp_path / 'odd'}/", "--report", str(report)))
        assert "would overwrite an input or an output" in line
    (tmp_path / "real").mkdir()
    (tmp_path / "link.npy").symlink_to(tmp_path / "real" / "emb.npy")
    line = one_error_line(invoke("embed", str(dd / "sub"), "--model", str(model_dir), "-o", str(tmp_path / "link.npy"),
                                 "--report", str(tmp_path / "real" / "emb.npy.json")))  # the sidecar, via the link
    assert "would overwrite" in line
    listing = tmp_path / "list.txt"
    listing.write_text(f"{dd / 'sub' / 'b.jpg'}\n")
    line = one_error_line(invoke("embed", "--files-from", str(listing), "--model", str(model_dir), "-o",
                                 str(tmp_path / "l.npy"), "--report", str(listing)))
    assert "would overwrite" in line and listing.read_text().endswith("b.jpg\n")


def test_overwrite_fails_only_the_input_whose_output_is_a_folder(tmp_path, emb):
    src = photos(tmp_path / "src", 3)
    out = tmp_path / "out"
    embed_to(emb, [src], f"{out}/")
    victim = sorted(out.glob("*.npy"))[1]
    victim.unlink()
    victim.mkdir()
    summary = embed_to(emb, [src], f"{out}/", overwrite=True, report=tmp_path / "r.jsonl")
    assert (summary.embedded, summary.failed) == (2, 1)
    assert "is a folder, which siglip never replaces" in [r for r in records(tmp_path / "r.jsonl")
                                                          if r["status"] == "failed"][0]["reason"]


def test_a_stacked_npy_name_with_no_room_for_its_sidecar_is_refused_first(tmp_path, model_dir):
    src = photos(tmp_path / "src", 2)
    out = tmp_path / ("b" * 250 + ".npy")
    line = one_error_line(invoke("embed", str(src), "--model", str(model_dir), "-o", str(out)))
    assert "too long for its sidecar" in line and not out.exists()


def test_a_single_npy_never_deletes_a_users_own_json(tmp_path, emb):
    notes = tmp_path / "p.npy.json"
    notes.write_text('{"my": "notes"}')
    (tmp_path / "q.npy.json").mkdir()
    embed_to(emb, [PHOTOS[0]], tmp_path / "p.npy")
    embed_to(emb, [PHOTOS[0]], tmp_path / "q.npy")
    assert notes.read_text() == '{"my": "notes"}' and (tmp_path / "q.npy.json").is_dir()
    _stacked(tmp_path / "s.npy", 1.0, ["a"])
    embed_to(emb, [PHOTOS[0]], tmp_path / "s.npy")  # siglip's own stale sidecar does go
    assert not (tmp_path / "s.npy.json").exists() and read_embeddings(tmp_path / "s.npy")[0].shape == (16, 32)


def test_an_interrupted_stacked_run_reports_no_row_as_embedded(tmp_path, emb):
    src = photos(tmp_path / "src", 6)

    def interrupt(outcome):
        if outcome.path.endswith("img03.png") or outcome.path.endswith("img03.jpg"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_to(emb, [src], tmp_path / "all.npy", on_outcome=interrupt, report=tmp_path / "r.jsonl", batch_size=1,
                 workers=0)
    got = records(tmp_path / "r.jsonl")
    why = "not written: the run stopped before the file was complete"
    assert len(got) == 4 and all(r["status"] == "failed" and r["reason"] == why for r in got)
    assert not (tmp_path / "all.npy").exists()


# --- found by a second hostile review ------------------------------------------------------------------

def test_a_list_line_is_the_name_exactly(tmp_path, emb):
    shutil.copy(PHOTOS[0], tmp_path / "y.png")
    shutil.copy(PHOTOS[1], tmp_path / "y.png ")  # another file: its name ends in a space
    listing = tmp_path / "list.txt"
    listing.write_bytes(f"{tmp_path}/y.png \r\n   \n{tmp_path}/y.png".encode())  # CRLF, blank, no final newline
    from siglip_cli.inputs import collect

    assert [str(i.path) for i in collect([], str(listing))] == [f"{tmp_path}/y.png ", f"{tmp_path}/y.png"]


def test_report_to_stdout_when_stdout_is_a_socket(tmp_path, model_dir):
    src = photos(tmp_path / "src", 2)
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([*SIGLIP, "embed", str(src), "--model", str(model_dir), "-o", str(tmp_path / "a.npy"),
                             "-q", "--report", "/dev/stdout"], stdout=theirs, stderr=subprocess.PIPE, text=True)
    theirs.close()
    got = b""
    while chunk := ours.recv(65536):
        got += chunk
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert [json.loads(x)["status"] for x in got.decode().splitlines()] == ["embedded", "embedded"]


def test_report_never_overwrites_the_checkpoint_nor_leaves_folders_when_refused(tmp_path, model_dir):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(model_dir, ckpt)
    src = photos(tmp_path / "src", 2)
    config = (ckpt / "config.json").read_bytes()
    line = one_error_line(invoke("embed", str(src), "--model", str(ckpt), "-o", str(tmp_path / "z.npy"), "--report",
                                 str(ckpt / "config.json")))
    assert "would overwrite" in line and (ckpt / "config.json").read_bytes() == config
    photos(src / "sub", 1)
    one_error_line(invoke("embed", str(src), "--model", str(ckpt), "-o", f"{tmp_path / 'o'}/", "--report",
                          str(tmp_path / "o" / "sub" / "img00.jpg.npy")))  # an output, in a folder not made yet
    assert not (tmp_path / "o" / "sub").exists()


def test_a_report_path_that_cannot_be_looked_at_is_a_usage_error(tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    line = one_error_line(invoke("embed", str(PHOTOS[0]), "--random-init", "-o", str(tmp_path / "q.npy"),
                                 "--report", str(tmp_path / "loop1")))
    assert "Too many levels of symbolic links" in line


def test_a_temp_of_a_dead_process_on_this_host_goes_at_once_others_wait(tmp_path):
    import fcntl

    from siglip_cli.atomic import _HOST

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid that has exited
    mine = tmp_path / f".a.npy.{_HOST}-{dead}.abcd1234{TMP_SUFFIX}"
    remote = tmp_path / f".b.npy.ffffff-{dead}.abcd1234{TMP_SUFFIX}"  # another host: its lock may not show here
    for p in (mine, remote):
        p.write_bytes(b"half")
    atomic_write_bytes(tmp_path / "c.npy", b"data")
    assert not mine.exists() and remote.exists()
    assert fcntl  # (the lock test itself: test_only_provably_abandoned_temps_are_removed)
