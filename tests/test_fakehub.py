"""Self-tests of tests/fakehub.py: real huggingface_hub calls against the fake hub on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from fakehub import FakeHub

REPO = "google/siglip-fake"
CONFIG = json.dumps({"model_type": "siglip"}).encode()
WEIGHTS = os.urandom(200_000)
README = b"# fake SigLIP\n"


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture
def repo(hub):
    return hub.add_repo(REPO, {"config.json": CONFIG, "model.safetensors": WEIGHTS, "README.md": README})


def _download(hub, tmp_path, filename, repo_id=REPO, **kw):
    kw.setdefault("token", False)
    return hf_hub_download(repo_id, filename, endpoint=hub.url, cache_dir=tmp_path, **kw)


def test_snapshot_download_filters_and_matches(hub, repo, tmp_path):
    path = Path(snapshot_download(REPO, allow_patterns=["*.json", "*.safetensors"], endpoint=hub.url,
                                  cache_dir=tmp_path, token=False))
    assert path.name == repo
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert (path / "config.json").read_bytes() == CONFIG
    assert (path / "model.safetensors").read_bytes() == WEIGHTS
    assert not any(m == "GET" and "README" in p for m, p in hub.requests)

    info = HfApi(endpoint=hub.url).model_info(REPO, revision="main", files_metadata=True, token=False)
    assert info.sha == repo
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {"config.json", "model.safetensors", "README.md"}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert siblings["model.safetensors"].size == len(WEIGHTS)
    assert siblings["config.json"].lfs is None and siblings["config.json"].size == len(CONFIG)
    # The commit sha is a revision too, and repo_info (no revision) resolves "main".
    assert HfApi(endpoint=hub.url).repo_info(REPO, token=False).sha == repo
    assert HfApi(endpoint=hub.url).model_info(REPO, revision=repo, token=False).sha == repo


def test_list_repo_tree(hub, tmp_path):
    sha = hub.add_repo(REPO, {"config.json": CONFIG, "model.safetensors": WEIGHTS, "sub/dir/x.txt": b"x"})
    api = HfApi(endpoint=hub.url)
    entries = {e.path: e for e in api.list_repo_tree(REPO, recursive=True, revision=sha, token=False)}
    assert set(entries) == {"config.json", "model.safetensors", "sub", "sub/dir", "sub/dir/x.txt"}
    assert entries["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert entries["model.safetensors"].size == len(WEIGHTS)
    assert entries["config.json"].lfs is None
    assert entries["config.json"].blob_id == hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()
    top = {e.path for e in api.list_repo_tree(REPO, token=False)}
    assert top == {"config.json", "model.safetensors", "sub"}
    tree = api.list_repo_tree(REPO, "sub", recursive=True, token=False)
    assert {e.path for e in tree} == {"sub/dir", "sub/dir/x.txt"}


def test_single_cut_is_retried_inside_one_call(hub, repo, tmp_path, monkeypatch):
    # huggingface_hub 2.4's http_get retries a broken body itself (after a 1 s sleep). It reads the body in
    # 10 MiB chunks, so bytes of an unfinished chunk are lost: a small file is fetched again from scratch...
    monkeypatch.setattr(time, "sleep", lambda s: None)
    hub.cut_file(REPO, "model.safetensors", after_bytes=50_000)
    assert Path(_download(hub, tmp_path, "model.safetensors")).read_bytes() == WEIGHTS
    assert [m for m, p in hub.requests if "model.safetensors" in p] == ["HEAD", "GET", "GET"]
    assert hub.ranges == []
    # ... while a file cut after its first 10 MiB chunk is resumed with a Range request.
    big = os.urandom(10 * 2**20 + 100_000)
    hub.add_repo("google/big", {"model.safetensors": big})
    hub.cut_file("google/big", "model.safetensors", after_bytes=10 * 2**20 + 50_000)
    got = Path(_download(hub, tmp_path, "model.safetensors", repo_id="google/big")).read_bytes()
    assert got == big
    assert [r for _, r in hub.ranges] == [f"bytes={10 * 2**20}-"]


def test_cut_download_fails_then_succeeds(hub, repo, tmp_path, monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    # 1 initial GET + 5 resumes that all die at the same offset: huggingface_hub gives up.
    hub.cut_file(REPO, "model.safetensors", after_bytes=50_000, times=6)
    with pytest.raises(Exception) as excinfo:
        _download(hub, tmp_path, "model.safetensors")
    assert "RemoteProtocolError" in type(excinfo.value).__name__
    blobs = tmp_path / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert not list(blobs.glob("*.incomplete"))
    assert Path(_download(hub, tmp_path, "model.safetensors")).read_bytes() == WEIGHTS
    assert not list(blobs.glob("*.incomplete"))
    assert sorted(p.name for p in blobs.iterdir()) == [hashlib.sha256(WEIGHTS).hexdigest()]


def test_corrupt_file_is_not_detected_by_huggingface_hub(hub, repo, tmp_path):
    hub.corrupt_file(REPO, "model.safetensors")
    data = Path(_download(hub, tmp_path, "model.safetensors")).read_bytes()
    assert len(data) == len(WEIGHTS)
    advertised = {e.path: e for e in HfApi(endpoint=hub.url).list_repo_tree(REPO, token=False)}
    assert advertised["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert hashlib.sha256(data).hexdigest() != advertised["model.safetensors"].lfs.sha256


def test_errors(hub, repo, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        _download(hub, tmp_path, "config.json", repo_id="google/nope")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("google/nope", endpoint=hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url).model_info("google/nope", token=False)
    with pytest.raises(RevisionNotFoundError):
        _download(hub, tmp_path, "config.json", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="v9", endpoint=hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(EntryNotFoundError):
        _download(hub, tmp_path, "missing.bin")


def test_gated_repo(hub, tmp_path):
    hub.add_repo("google/gated", {"config.json": CONFIG, "model.safetensors": WEIGHTS}, gated=True)
    with pytest.raises(GatedRepoError):
        _download(hub, tmp_path, "config.json", repo_id="google/gated")
    with pytest.raises(GatedRepoError):
        _download(hub, tmp_path, "config.json", repo_id="google/gated", token="hf_wrong")
    with pytest.raises(GatedRepoError):
        snapshot_download("google/gated", endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert HfApi(endpoint=hub.url).model_info("google/gated", token=False).gated == "manual"
    path = Path(snapshot_download("google/gated", endpoint=hub.url, cache_dir=tmp_path, token=hub.token))
    assert (path / "model.safetensors").read_bytes() == WEIGHTS


def test_sharded_repo_and_second_branch(hub, tmp_path):
    shards = {f"model-0000{i}-of-00002.safetensors": os.urandom(30_000 + i) for i in (1, 2)}
    index = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                       "b": "model-00002-of-00002.safetensors"}}).encode()
    files = {**shards, "model.safetensors.index.json": index, "config.json": CONFIG}
    sha = hub.add_repo(REPO, files)
    other = hub.add_repo(REPO, {"config.json": b"{}"}, revision="v2")
    assert other != sha
    path = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path, token=False))
    assert path.name == sha
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files
    assert Path(_download(hub, tmp_path, "config.json", revision="v2")).read_bytes() == b"{}"


def test_directory_repo_and_request_sequence(hub, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_bytes(CONFIG)
    (src / "sub" / "w.bin").write_bytes(b"\1\2\3")
    sha = hub.add_repo(REPO, src)
    path = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "cache", token=False, max_workers=1))
    assert (path / "sub" / "w.bin").read_bytes() == b"\1\2\3"
    assert [(m, p.split("?")[0]) for m, p in hub.requests] == [
        ("GET", f"/api/models/{REPO}/revision/main"),
        ("GET", f"/api/models/{REPO}/tree/{sha}"),
        ("HEAD", f"/{REPO}/resolve/{sha}/config.json"),
        ("GET", f"/{REPO}/resolve/{sha}/config.json"),
        ("HEAD", f"/{REPO}/resolve/{sha}/sub/w.bin"),
        ("GET", f"/{REPO}/resolve/{sha}/sub/w.bin"),
    ]


def test_raw_http_headers_and_ranges(hub, repo):
    """The wire format itself: headers huggingface_hub reads, 206 ranges, errors on HEAD, no Xet headers."""
    import urllib.error
    import urllib.request

    def fetch(path, method="GET", **headers):
        req = urllib.request.Request(hub.url + path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    url = f"/{REPO}/resolve/main/model.safetensors"
    status, headers, body = fetch(url, "HEAD")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == repo and headers["Content-Length"] == str(len(WEIGHTS))
    assert headers["X-Linked-Etag"] == headers["ETag"] == f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
    assert headers["X-Linked-Size"] == str(len(WEIGHTS)) and headers["Accept-Ranges"] == "bytes"
    assert not [k for k in headers if k.lower().startswith("x-xet")]
    status, headers, body = fetch(url, Range="bytes=100-")
    assert (status, body, headers["Content-Range"]) == (206, WEIGHTS[100:],
                                                       f"bytes 100-{len(WEIGHTS) - 1}/{len(WEIGHTS)}")
    status, headers, body = fetch(url, Range="bytes=10-19")
    assert (status, body, headers["Content-Range"]) == (206, WEIGHTS[10:20], f"bytes 10-19/{len(WEIGHTS)}")
    assert fetch(url, Range=f"bytes={len(WEIGHTS)}-")[0] == 416
    status, headers, _ = fetch(f"/{REPO}/resolve/main/config.json", "HEAD")
    assert "X-Linked-Etag" not in headers
    assert headers["ETag"] == '"%s"' % hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()
    for path, code, status in [(f"/{REPO}/resolve/main/nope.txt", "EntryNotFound", 404),
                               (f"/{REPO}/resolve/v9/config.json", "RevisionNotFound", 404),
                               ("/google/nope/resolve/main/config.json", "RepoNotFound", 404)]:
        for method in ("HEAD", "GET"):
            got, headers, _ = fetch(path, method)
            assert (got, headers["X-Error-Code"]) == (status, code), (method, path)


def test_strip_hashes_answers_like_a_mirror(hub, repo, tmp_path):
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    api = HfApi(endpoint=hub.url)
    sha256 = hashlib.sha256(WEIGHTS).hexdigest()

    def etag(name):
        return get_hf_file_metadata(hf_hub_url(REPO, name, endpoint=hub.url), token=False).etag

    hub.strip_hashes(REPO)  # the model info only
    siblings = api.model_info(REPO, files_metadata=True, token=False).siblings
    assert sorted(s.rfilename for s in siblings) == ["README.md", "config.json", "model.safetensors"]
    assert all(s.lfs is None and s.blob_id is None and s.size is None for s in siblings)
    tree = {e.path: e for e in api.list_repo_tree(REPO, token=False)}
    assert tree["model.safetensors"].lfs.sha256 == sha256 and etag("model.safetensors") == sha256

    hub.strip_hashes(REPO, info=False, tree=True, etag=True)
    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True, token=False).siblings}
    assert siblings["model.safetensors"].lfs.sha256 == sha256
    tree = {e.path: e for e in api.list_repo_tree(REPO, token=False)}
    assert all(e.lfs is None and e.blob_id == "" for e in tree.values())
    assert tree["model.safetensors"].size == len(WEIGHTS)
    tags = {name: etag(name) for name in ("config.json", "model.safetensors")}
    assert all(t.startswith("mirror-") and len(t) == 23 for t in tags.values()) and len(set(tags.values())) == 2
    path = Path(_download(hub, tmp_path, "model.safetensors"))
    assert path.read_bytes() == WEIGHTS and path.resolve().name == tags["model.safetensors"]
