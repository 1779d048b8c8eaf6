"""A tiny in-memory Hugging Face Hub on 127.0.0.1, for offline tests of code that uses huggingface_hub.

It speaks just the endpoints huggingface_hub (2.x, httpx based) needs to download model repos:

    GET  /api/models/{org}/{name}[/revision/{rev}]      model info (repo_info / model_info; ?blobs=true)
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]   file listing (list_repo_tree, snapshot_download)
    HEAD /{org}/{name}/resolve/{rev}/{path}             file metadata (hf_hub_download)
    GET  /{org}/{name}/resolve/{rev}/{path}             file bytes, with `Range: bytes=a-[b]` support

Files are served directly (no redirect to a CDN) and never with X-Xet-* headers, so huggingface_hub
always uses plain HTTP. Errors carry the `X-Error-Code` header huggingface_hub maps to its exceptions
(RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), on HEAD as well as GET. As on the real hub, a
gated repo's info and file listing are public; only its files (/resolve) need `Authorization: Bearer <token>`.
`strip_hashes` makes a repo answer like a mirror that does not pass the hub's hashes on (no files metadata
in the model info, no hashes in the tree listing, ETags that are not hashes).

    with FakeHub() as hub:
        sha = hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": weights})
        hf_hub_download("org/model", "config.json", endpoint=hub.url, cache_dir=tmp, token=False)
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".msgpack", ".h5")
LFS_MIN_SIZE = 10 * 1024  # larger files are LFS whatever their name
LAST_MODIFIED = "2024-01-01T00:00:00.000Z"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with these bytes (what `git hash-object` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _File:
    path: str
    data: bytes
    lfs: bool = field(init=False)
    sha256: str = field(init=False)
    blob_id: str = field(init=False)  # git oid: of the bytes, or of the LFS pointer file for LFS files
    pointer_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.lfs = self.path.endswith(LFS_SUFFIXES) or len(self.data) > LFS_MIN_SIZE
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n"
        self.pointer_size = len(pointer)
        self.blob_id = git_blob_sha1(pointer.encode() if self.lfs else self.data)

    @property
    def etag(self) -> str:  # what the real hub puts in ETag: sha256 for LFS files, git oid otherwise
        return self.sha256 if self.lfs else self.blob_id


class _HubError(Exception):
    def __init__(self, status: int, code: str, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class FakeHub:
    """In-memory model repos served over HTTP on 127.0.0.1 (random port). See the module docstring."""

    def __init__(self, token: str | None = "hf_test_token"):
        self.token = token  # the bearer token that opens gated repos
        self.url = ""
        self.requests: list[tuple[str, str]] = []  # (method, path with query) of every request
        self.ranges: list[tuple[str, str]] = []  # (path, Range header) of every request that sent one
        self._repos: dict[str, dict] = {}  # repo_id -> {"gated": bool, "refs": {name: sha}, "commits": {sha: files}}
        self._cuts: dict[tuple[str, str], list[int]] = {}  # (repo, file) -> [after_bytes, times left]
        self._corrupt: set[tuple[str, str]] = set()
        self._stripped: dict[str, set[str]] = {}  # repo_id -> the places that no longer carry hashes
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ content
    def add_repo(self, repo_id: str, files: "dict[str, bytes] | Path", *, revision: str = "main",
                 gated: bool = False) -> str:
        """Add a model repo (or a new commit for branch/tag `revision` of an existing one); return its commit sha.

        `files` is {path: bytes} or a directory whose files (recursively) become the repo content. The sha is
        deterministic (sha1 of revision, sorted names and contents) and is itself a valid revision. `gated`
        applies to the whole repo (the last call wins).
        """
        if isinstance(files, (str, Path)):
            root = Path(files)
            files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        h = hashlib.sha1(revision.encode())
        for name in sorted(files):
            h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        sha = h.hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, {"gated": gated, "refs": {}, "commits": {}})
            repo["gated"] = gated
            repo["commits"][sha] = {name: _File(name, bytes(data)) for name, data in files.items()}
            repo["refs"][revision] = sha
        return sha

    def cut_file(self, repo_id: str, filename: str, after_bytes: int, times: int = 1) -> None:
        """Make the next `times` GETs of that file die at file offset `after_bytes`.

        Each affected GET sends the normal headers (full Content-Length, or Content-Range for a ranged GET) but
        only the file's bytes before offset `after_bytes`, then closes the connection: a full GET gets
        `after_bytes` bytes, a resume (`Range: bytes=a-` with a >= after_bytes) gets none. Later GETs are whole.
        """
        with self._lock:
            self._cuts[(repo_id, filename)] = [after_bytes, times]

    def corrupt_file(self, repo_id: str, filename: str) -> None:
        """From now on GETs of that file return bytes of the same size but different content (the middle byte
        is flipped), while the tree API, ETag and X-Linked-Etag keep advertising the original sha256."""
        with self._lock:
            self._corrupt.add((repo_id, filename))

    def strip_hashes(self, repo_id: str, *, info: bool = True, tree: bool = False, etag: bool = False) -> None:
        """From now on answer for that repo like a mirror or proxy that does not pass the hub's hashes on.

        info: model info without files metadata (siblings carry only rfilename, even for ?blobs=true).
        tree: tree listings without `lfs`, and with an empty `oid` (huggingface_hub requires the key).
        etag: /resolve sends an ETag that is not a hash (`"mirror-<16 hex>"`, unique per content) and no
        X-Linked-Etag, so huggingface_hub names the cached blob after something that cannot be checked.
        """
        with self._lock:
            self._stripped[repo_id] = {name for name, on in (("info", info), ("tree", tree), ("etag", etag)) if on}

    def _stripped_of(self, repo_id: str, what: str) -> bool:
        with self._lock:
            return what in self._stripped.get(repo_id, ())

    # ------------------------------------------------------------------ lookups (raise _HubError)
    def _resolve(self, repo_id: str, revision: str, headers=None, gated_check: bool = False) -> tuple[str, dict]:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise _HubError(404, "RepoNotFound", "Repository not found")
        if gated_check and repo["gated"]:
            auth = (headers or {}).get("Authorization") or ""
            if not auth.startswith("Bearer "):
                raise _HubError(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access"
                                " to it and be authenticated to access it. Please log in.")
            if self.token is None or auth != f"Bearer {self.token}":
                raise _HubError(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in"
                                " the authorized list.")
        sha = repo["refs"].get(revision) or (revision if revision in repo["commits"] else None)
        if sha is None:
            raise _HubError(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return sha, repo["commits"][sha]

    def _info(self, repo_id: str, revision: str, blobs: bool) -> dict:
        sha, files = self._resolve(repo_id, revision)
        siblings = []
        for f in sorted(files.values(), key=lambda f: f.path):
            s: dict = {"rfilename": f.path}
            if blobs and not self._stripped_of(repo_id, "info"):
                s.update(size=len(f.data), blobId=f.blob_id)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": f.pointer_size}
            siblings.append(s)
        return {"_id": sha[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": sha,
                "private": False, "gated": "manual" if self._repos[repo_id]["gated"] else False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "library_name": "transformers",
                "lastModified": LAST_MODIFIED, "createdAt": LAST_MODIFIED, "siblings": siblings}

    def _tree(self, repo_id: str, revision: str, path: str, recursive: bool) -> list[dict]:
        _, files = self._resolve(repo_id, revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(name.startswith(prefix) for name in files):
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {revision!r}")
        entries: dict[str, dict] = {}
        for f in files.values():
            if not f.path.startswith(prefix):
                continue
            parts = f.path[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # folders on the way to the file
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                            "size": 0, "path": folder})
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entry = {"type": "file", "oid": f.blob_id, "size": len(f.data), "path": f.path}
                if self._stripped_of(repo_id, "tree"):
                    entry["oid"] = ""
                elif f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": f.pointer_size}
                entries[f.path] = entry
        return [entries[k] for k in sorted(entries)]


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real hub; every response has a Content-Length

        def log_message(self, *args) -> None:  # silence the request log
            pass

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def _send(self, status: int, headers: dict, body: bytes = b"", head: bool = False) -> None:
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _dispatch(self, head: bool) -> None:
            with hub._lock:
                hub.requests.append((self.command, self.path))
                if self.headers.get("Range"):
                    hub.ranges.append((self.path, self.headers["Range"]))
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            parts = split.path.strip("/").split("/")  # still URL-quoted: "refs%2Fpr%2F1" stays one segment
            try:
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo_id = "/".join(unquote(p) for p in parts[2:4])
                    rest = parts[4:]
                    if not rest or (rest[0] == "revision" and len(rest) == 2):
                        rev = unquote(rest[1]) if rest else "main"
                        data = hub._info(repo_id, rev, blobs=query.get("blobs", "").lower() == "true")
                    elif rest[0] == "tree" and len(rest) >= 2:
                        path = unquote("/".join(rest[2:]))
                        data = hub._tree(repo_id, unquote(rest[1]), path, query.get("recursive", "").lower() == "true")
                    else:
                        raise _HubError(404, "", "Not found")
                    self._send(200, {"Content-Type": "application/json"}, json.dumps(data).encode(), head)
                elif len(parts) >= 5 and parts[2] == "resolve":
                    self._resolve_file("/".join(unquote(p) for p in parts[:2]), unquote(parts[3]),
                                       unquote("/".join(parts[4:])), head)
                else:
                    raise _HubError(404, "", "Not found")
            except _HubError as e:
                headers = {"Content-Type": "application/json", "X-Error-Message": e.message}
                if e.code:
                    headers["X-Error-Code"] = e.code
                if e.commit:
                    headers["X-Repo-Commit"] = e.commit
                self._send(e.status, headers, json.dumps({"error": e.message}).encode(), head)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _resolve_file(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
            sha, files = hub._resolve(repo_id, revision, self.headers, gated_check=True)
            f = files.get(filename)
            if f is None:
                raise _HubError(404, "EntryNotFound", f"{filename} does not exist on {revision!r}", commit=sha)
            data, size = f.data, len(f.data)
            opaque = hub._stripped_of(repo_id, "etag")
            etag = f"mirror-{f.sha256[:16]}" if opaque else f.etag
            headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                       "Content-Type": "application/octet-stream"}
            if f.lfs and not opaque:
                headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(size)})
            start, end, status = 0, size - 1, 200
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if m:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
                if start >= size or start > end:
                    self._send(416, {**headers, "Content-Range": f"bytes */{size}"}, head=head)
                    return
                status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{size}"
            headers["Content-Length"] = str(end - start + 1)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return
            with hub._lock:
                if (repo_id, filename) in hub._corrupt and size:
                    data = bytearray(data)
                    data[size // 2] ^= 0xFF
                cut = hub._cuts.get((repo_id, filename))
                stop = end + 1
                if cut and cut[1] > 0:
                    cut[1] -= 1
                    stop = min(stop, max(start, cut[0]))
            self.wfile.write(bytes(data[start:stop]))
            if stop <= end:  # cut: drop the connection mid-body
                self.wfile.flush()
                self.close_connection = True

    return Handler
