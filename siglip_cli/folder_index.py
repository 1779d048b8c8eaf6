"""Folder outputs for `siglip search`: DIR/.siglip-index/index.safetensors, and open_collection for any path.

A folder keeps an index: a pooled vector and [relative path, size, mtime_ns, source, inode] per file, so a
search reads only the files added or changed since (the inode: a file replaced within one timestamp tick;
siglip writes by rename). The index is written only into siglip's own output folders (those with a
manifest, .siglip.json); any other folder is read without one.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from safetensors.numpy import save

from .atomic import atomic_write_bytes
from .errors import OutputError, SiglipError, UsageError
from .store import (CHUNK_BYTES, INDEX_DIR, INDEX_FORMAT, INDEX_NAME, MANIFEST, MEAN_REFUSED, NEEDS_POOLER,
                    SUFFIXES, Collection, _open_file, _pooled, _read_into, _st_layout, _why)


def open_collection(path: str | Path, *, pooler=None, identity: dict | None = None, note=None) -> Collection:
    """A stacked file, one image's file, or a folder of per-image files (indexed, see the module doc). pooler
    (patches (n, N, D) float32 -> (n, D)) pools a folder's patch files once: the index keeps them with `identity`
    (the pooling model's). note(message) hears what does not stop the search: a file skipped, no index written."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file or folder: give a file or folder written by `siglip embed`")
    if p.is_dir():
        c = _open_folder(p, pooler, identity, note or (lambda message: None))
    elif p.suffix.lower() in SUFFIXES and p.is_file():
        c = _open_file(p)
    else:
        raise UsageError(f"{p}: not an embeddings file: give a .npy or .safetensors file, or a folder written by "
                         "`siglip embed -o DIR/`")
    if "mean" in (c.metadata.get("pool"), c.metadata.get("stored_pool")):
        raise UsageError(f"{p}: {MEAN_REFUSED}")
    return c


def _walk(p: Path, note) -> list[tuple]:
    """(rel, size, mtime_ns, inode) of each .npy/.safetensors below p, sorted. Hidden names (the index, the
    manifest, temp files), symlinked folders and other files are not looked at."""
    found = []
    for folder, dirs, names in os.walk(p, onerror=lambda e: note(f"skipped folder {e.filename}: {_why(e)}")):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        prefix = "" if folder == str(p) else os.path.relpath(folder, p).replace(os.sep, "/") + "/"
        for name in names:
            try:
                if not name.startswith(".") and name.lower().endswith(SUFFIXES):
                    st = os.stat(os.path.join(folder, name))
                    if stat.S_ISREG(st.st_mode):
                        found.append((prefix + name, st.st_size, st.st_mtime_ns, st.st_ino))
            except OSError:
                continue
    return sorted(found)


def _read_index(path: Path, note) -> SimpleNamespace | None:
    """The index as found, its vectors read; None when there is none yet or it is unreadable."""
    try:
        with open(path, "rb") as f:
            meta, t = _st_layout(f)
            entries = json.loads(os.pread(f.fileno(), t["entries"][3], t["entries"][2]))  # [rel, size, mtime, src, ino]
            extra = {k: meta.pop(k) for k in ("index_format", "identity", "roots", "stored", "skipped")}
            dtype, (n, width), offset, _ = t["vectors"]
            if extra["index_format"] != INDEX_FORMAT or len(entries) != n or not all(len(e) == 5 for e in entries):
                raise ValueError("written by another version, or damaged")
            vecs = _read_into(f, offset, np.empty((n, width), dtype))
        return SimpleNamespace(vecs=vecs, entries=entries, meta=meta, **extra)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError, OutputError) as e:
        note(f"rebuilding the search index {path}: it is unreadable ({_why(e)})")


def _source(rel: str, roots: list[str], embedded: str | None = None) -> str:
    """An image's path: as its file records it, else below the first manifest root holding it, else relative."""
    name = rel.rsplit(".", 1)[0]  # a/b.jpg.npy -> a/b.jpg
    return embedded or next((os.path.join(r, name) for r in roots if os.path.lexists(os.path.join(r, name))), name)


def _write_index(path: Path, vecs: np.ndarray, entries: list, meta: dict) -> None:
    """The whole index as one safetensors file, atomically (a temp file beside it, then a rename)."""
    data = np.frombuffer(json.dumps(entries, separators=(",", ":")).encode(), np.uint8)
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, save({"vectors": vecs, "entries": data}, metadata={  # strings as JSON too: exact
        k: json.dumps(v) for k, v in meta.items()}))


def _nested_output(p: Path) -> Path | None:
    """The first siglip output folder (one with a manifest) below p, if any."""
    for folder, dirs, names in os.walk(p):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if folder != str(p) and MANIFEST in names:
            return Path(folder)
    return None


def _open_folder(p: Path, pooler, identity, note) -> Collection:
    """Read the files the index lacks (pooling patches), keep the rows of the others, write the index if changed."""
    meta, roots, canon = None, [], lambda x: json.dumps(x, sort_keys=True, default=str)
    try:
        manifest = json.loads((p / MANIFEST).read_bytes())
        meta, roots = dict(manifest["metadata"]), [str(r) for r in manifest.get("roots", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if not isinstance(e, FileNotFoundError):
            note(f"ignored {p / MANIFEST} ({_why(e)}): sources are named relative to {p}")
        elif inner := _nested_output(p):  # a folder holding siglip outputs, maybe of several models
            raise UsageError(f"{p} is not a siglip output folder but holds one, {inner}: search the output folders "
                             f"themselves (e.g. siglip search QUERY {inner})")
    owned = meta is not None  # written by `siglip embed -o DIR/`: search may keep its index there
    files, old = _walk(p, note), _read_index(path := p / INDEX_DIR / INDEX_NAME, note)
    if old and len(old.stored[0]) == 2 and canon(old.identity) != canon(identity):
        old = None  # pooled by another model
    at = {e[0]: i for i, e in enumerate(old.entries)} if old else {}
    same = [at[f[0]] if f[0] in at and old.entries[at[f[0]]][1:3] + old.entries[at[f[0]]][4:] == list(f[1:])
            else None for f in files]  # the index row of each unchanged file
    bad = {tuple(s[:4]): s[4] for s in old.skipped} if old else {}
    changed = not old or roots != old.roots or canon(meta or old.meta) != canon(old.meta) or [
        i for i in same if i is not None] != list(range(len(old.entries)))  # else: the index as it is
    meta = meta if meta is not None or not old else old.meta
    rows, entries, skipped, pending, kinds = [], [], [], [], {}

    def flush() -> None:  # pool the patch files read so far, in one batch
        for i, v in zip(pending, _pooled(pooler, np.stack([rows[i] for i in pending])) if pending else []):
            rows[i] = v
        pending.clear()

    for f, i in zip(files, same):
        rel, this = f[0], old.stored if i is not None else None  # this: [row shape, dtype] of the file
        if i is None:
            changed = changed or f not in bad
            try:
                if f in bad:  # still the file that could not be read
                    raise OutputError(bad[f])
                c = _open_file(p / rel, single=True)
                array = next(c.chunks())[1][0]
            except (SiglipError, OSError) as e:  # one bad file is that file's failure, not the search's
                skipped.append([*f, _why(e) if isinstance(e, SiglipError) else f"{p / rel}: {_why(e)}"])
                note(f"skipped {skipped[-1][4]}")
                continue
            this = [list(array.shape), array.dtype.str]
        kind = kinds.setdefault(json.dumps(this), (this, rel))[0]
        if len(kinds) > 1:
            (k1, r1), (k2, r2) = kinds.values()
            raise UsageError(f"{p}: files from different runs: {r1} is {k1[0]} {np.dtype(k1[1]).name} but {r2} is "
                             f"{k2[0]} {np.dtype(k2[1]).name}: embed the folder again with --overwrite (or into a new "
                             "folder)")
        if i is not None:
            moved = roots != old.roots and rel.lower().endswith(".npy")  # its source is found below the roots
            entries.append([*f[:3], _source(rel, roots) if moved else old.entries[i][3], f[3]])
            rows.append(i)
            continue
        if c.metadata.get("pool") == "mean":
            raise UsageError(f"{p / rel}: {MEAN_REFUSED}")
        meta = meta if meta is not None or not c.metadata else c.metadata
        own = c.sources()[0]  # recorded in a .safetensors, else the file's name
        entries.append([*f[:3], _source(rel, roots, own if own != Path(rel).name.rsplit(".", 1)[0] else None), f[3]])
        rows.append(array)
        if array.ndim == 2:
            if pooler is None:
                raise UsageError(NEEDS_POOLER.format(p))
            pending.append(len(rows) - 1)
            if len(pending) * array.nbytes >= CHUNK_BYTES // 2:
                flush()
    flush()
    if not rows:
        raise UsageError(f"{p}: no embeddings found (.npy or .safetensors files): embed images into it with "
                         f"`siglip embed IMAGES -o {p}/`")
    vecs = old.vecs if not changed else np.stack([old.vecs[r] if isinstance(r, int) else r for r in rows])
    try:
        if changed and owned:
            _write_index(path, vecs, entries, {**(meta or {}), "index_format": INDEX_FORMAT, "roots": roots,
                                               "identity": identity if len(kind[0]) == 2 else None,
                                               "stored": kind, "skipped": skipped})
    except (OSError, SiglipError) as e:
        note(f"could not write the search index {path} ({_why(e)}): searching without it (each search reads again "
             "the files it does not cover)")
    meta = dict(meta or {})
    if len(kind[0]) == 2:  # pooled here from patches
        if pooler is None:
            raise UsageError(NEEDS_POOLER.format(p))
        meta["stored_pool"], meta["pool"] = meta.get("pool", "none"), "map"
    return Collection(p, meta, len(vecs), vecs.shape[1:], [e[3] for e in entries], _array=vecs, _dtype=vecs.dtype)
