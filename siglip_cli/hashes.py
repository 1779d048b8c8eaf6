"""Whether downloaded files are the bytes the hub recorded: sha256 for LFS files, git object ids otherwise.

The hub's hashes come from its model info, or, without the network, from what huggingface_hub recorded
while downloading (the tree listing it caches per commit, the ETag it names each blob after).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from .errors import ChecksumError


def _hash_file(path: Path, *hashes):
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            for h in hashes:
                h.update(chunk)
    return hashes[0].hexdigest()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_file(path: Path) -> str:
    return _hash_file(path, hashlib.sha256())


def _is_hash(value) -> bool:
    """A sha256 (64 hex) or a git object id (40 hex); a mirror's ETag or an empty oid is neither."""
    return isinstance(value, str) and len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value)


def _file_matches(path: Path, want: str) -> tuple[bool, str]:
    """(whether the file's bytes match the hub's hash, their sha256).

    A 40-hex record is a git object id: of the file itself outside LFS, or of the LFS pointer that
    names the file's sha256 and size (what a listing without `lfs` fields still carries for a weight file).
    """
    if len(want) == 64:
        got = sha256_file(path)
        return got == want, got
    size = path.stat().st_size
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    got = _hash_file(path, hashlib.sha256(), sha1)
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{got}\nsize {size}\n".encode()
    return want in (sha1.hexdigest(), _git_blob_sha1(pointer)), got


def _discard(path: Path) -> None:
    """Remove a bad download: the cache's symlink and the blob behind it (or a local-dir file)."""
    blob = path.resolve()
    for p in {path, blob}:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def verify_files(repo_id: str, folder: Path, expected: dict[str, str]) -> None:
    """Each file hashes to the hub's record: sha256 for LFS files (64 hex), a git object id otherwise."""
    for name, want in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{repo_id}: {name} is missing from {folder}: run "
                                f"`siglip download-weights {repo_id}` again")
        ok, got = _file_matches(path, want)
        if not ok:
            _discard(path)
            raise ChecksumError(f"{repo_id}: {name} is corrupt (sha256 {got[:12]}..., the hub says {want[:12]}...); "
                                f"the bad file was removed: run `siglip download-weights {repo_id}` again")


def _download_metadata(local_dir: Path, name: str) -> tuple[str, str]:
    """(commit, etag) that huggingface_hub recorded for a file downloaded into a --local-dir."""
    meta = Path(local_dir) / ".cache" / "huggingface" / "download" / f"{name}.metadata"
    lines = [line.strip() for line in meta.read_text().splitlines()] if meta.is_file() else []
    return (lines[0] if lines else "unknown"), (lines[1] if len(lines) > 1 else "")


def _tree_hashes(path: Path) -> dict[str, str]:
    """name -> hash from the tree listing huggingface_hub caches per commit ({} when absent or unknown)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"] if data.get("format_version") == 1 else {}
        hashes = {name: info.get("lfs_sha256") or info.get("blob_id") for name, info in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {name: h for name, h in hashes.items() if _is_hash(h)}


def _recorded_hashes(folder: Path, names: list[str], local_dir: Path | None) -> dict[str, str]:
    """The hub's hashes as huggingface_hub recorded them at download time, read without the network.

    First the tree listing it keeps per commit (trees/<commit>.json in the repo's cache folder, or in a
    --local-dir's .cache/huggingface/): the hub's lfs sha256 or git object id. Else the ETag the hub sent:
    in the cache a file's blob is named by it (an LFS file's sha256); in a --local-dir it is kept in
    .cache/huggingface/download/<name>.metadata. A mirror's ETag that is not a hash does not count.
    """
    out, trees = {}, {}
    for name in names:
        if local_dir is not None:
            commit, etag = _download_metadata(local_dir, name)
            base = Path(local_dir) / ".cache" / "huggingface"
        else:
            commit, etag = folder.name, (folder / name).resolve().name
            base = folder.parent.parent  # models--org--name/, above snapshots/<commit>
        if commit not in trees:
            trees[commit] = _tree_hashes(base / "trees" / f"{commit}.json")
        found = [h for h in (trees[commit].get(name), etag) if _is_hash(h)]
        if found:
            out[name] = found[0]
    return out
