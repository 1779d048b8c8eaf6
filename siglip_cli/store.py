"""Stored embeddings for `siglip search`: read them, pool patches, index a folder, rank by cosine. Numpy only.

A collection is a stacked file (`-o FILE.npy` and its sidecar, `-o FILE.safetensors`), one image's file,
or a folder written by `siglip embed -o DIR/`. Rows (n per chunk, [D] or [N, D] each) are read with file
reads in bounded chunks: memory does not grow with the file. A stacked .npy's `data_sha256` is not checked
(that reads every byte before the first result); its sidecar's `shape` must match the array, which catches
an interrupted rewrite. Pickle is never loaded. A folder keeps an index, DIR/.siglip-index/index.safetensors:
a pooled vector and [relative path, size, mtime_ns, source, inode] per file, so a search reads only the
files added or changed since (the inode: a file replaced within one timestamp tick; siglip writes by rename).
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
from safetensors.numpy import save

from .atomic import atomic_write_bytes
from .errors import OutputError, SiglipError, UsageError

MANIFEST = ".siglip.json"
INDEX_DIR = ".siglip-index"
INDEX_NAME = "index.safetensors"
INDEX_FORMAT = "siglip-index-1"
SUFFIXES = (".npy", ".safetensors")
CHUNK_BYTES = 64 << 20  # a chunk is at most `rows` rows and this many bytes (patch rows are big)
BLOCK = 512  # rows widened and scored at a time: they stay in the CPU cache
MEAN_REFUSED = "mean-pooled embeddings are not in SigLIP's image-text space: embed with --pool map (or none)"
NEEDS_POOLER = ("{}: patch embeddings [N, D] (pool none) must be pooled by the model's attention head before "
                "search: give the model that embedded them")
AGAIN = "run `siglip embed` again"
_ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "U8": np.dtype("u1")}


@dataclass
class Collection:
    path: Path  # the file or folder as given
    metadata: dict  # the run's metadata ({} when nothing records it)
    count: int  # rows
    row_shape: tuple[int, ...]  # (D,) pooled, (N, D) patches
    _sources: list[str] = field(default_factory=list, repr=False)
    _file: Path | None = field(default=None, repr=False)  # reopened for each pass, checked unchanged
    _offset: int = field(default=0, repr=False)  # where row 0 starts
    _dtype: np.dtype = field(default=np.dtype("<f4"), repr=False)
    _array: np.ndarray | None = field(default=None, repr=False)  # rows in memory (a folder's index)
    _stamp: tuple | None = field(default=None, repr=False)  # (size, mtime_ns, inode) when opened

    def sources(self) -> list[str]:
        return self._sources

    def chunks(self, rows: int = 16384) -> Iterator[tuple[int, np.ndarray]]:
        """(start, (n, *row_shape)) in the stored dtype, read chunk by chunk (never the whole array)."""
        row_bytes = math.prod(self.row_shape) * self._dtype.itemsize
        step = max(1, min(rows, CHUNK_BYTES // max(row_bytes, 1)))
        if self._array is not None:
            yield from ((s, self._array[s:s + step]) for s in range(0, self.count, step))
            return
        with open(self._file, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if (st.st_size, st.st_mtime_ns, st.st_ino) != self._stamp:
                raise OutputError(f"{self.path} changed since it was opened (rewritten by another run?): search again")
            for start in range(0, self.count, step):  # no array kept here: one chunk alive at a time
                yield start, _read_into(f, self._offset + start * row_bytes,
                                        np.empty((min(step, self.count - start), *self.row_shape), self._dtype))


def _read_into(f, offset: int, out: np.ndarray) -> np.ndarray:
    view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
    f.seek(offset)
    while done < len(view):
        got = f.readinto(view[done:])
        if not got:
            raise OutputError(f"{f.name}: the file ends early (an interrupted write or copy): {AGAIN}")
        done += got
    return out


def _json_or_text(v: str):
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v


def _st_layout(f) -> tuple[dict, dict]:
    """A safetensors file's metadata (values JSON-decoded) and {tensor: (dtype, shape, offset, bytes)},
    checked against the file's size (ValueError, KeyError or TypeError if malformed)."""
    size, n = os.fstat(f.fileno()).st_size, int.from_bytes(f.read(8), "little")
    if not 2 <= n <= min(size - 8, 100 << 20):
        raise ValueError("no safetensors header")
    header, tensors = json.loads(f.read(n)), {}
    for name, t in header.items():
        if name != "__metadata__":
            shape, (a, b), dtype = tuple(int(s) for s in t["shape"]), t["data_offsets"], _ST_DTYPES.get(t["dtype"])
            if dtype is None or min(shape, default=0) < 0 or b - a != math.prod(shape) * dtype.itemsize \
                    or not 0 <= a <= b <= size - 8 - n:
                raise ValueError(f"tensor {name!r} is not F32, F16 or U8, or does not fit in the file (truncated?)")
            tensors[name] = (dtype, shape, 8 + n + a, b - a)
    return {k: _json_or_text(v) for k, v in header.get("__metadata__", {}).items()}, tensors


def _open_file(p: Path, single: bool = False) -> Collection:
    """A stacked file or one image's file; single=True (a folder's file) refuses a stacked one."""
    suffix, sources = p.suffix.lower(), None
    try:
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            if suffix == ".npy":
                major, _ = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                (shape, fortran, dtype), offset, meta = read(f), f.tell(), {}
                if fortran and len(shape) > 1:
                    raise ValueError("a Fortran-ordered array")
            else:
                meta, tensors = _st_layout(f)
                dtype, shape, offset, _ = tensors["embeddings"]
                if "sources" in tensors and not single:
                    sources = json.loads(os.pread(f.fileno(), tensors["sources"][3], tensors["sources"][2]))
                elif "sources" in tensors:
                    raise ValueError("a stacked output: search it on its own")
    except (ValueError, KeyError, TypeError, OSError) as e:
        why = f"missing {e}" if isinstance(e, KeyError) else e
        raise OutputError(f"{p}: not a readable {suffix} embeddings file ({why}): {AGAIN}") from None
    if dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise UsageError(f"{p}: a {dtype} array, not siglip embeddings (float32 or float16)")
    if offset + math.prod(shape) * dtype.itemsize > st.st_size:
        raise OutputError(f"{p}: the file ends before its {list(shape)} array (an interrupted write or copy): {AGAIN}")
    rows = dict(_file=p, _offset=offset, _dtype=dtype, _stamp=(st.st_size, st.st_mtime_ns, st.st_ino))
    sidecar = Path((str(p) if single else os.path.realpath(p)) + ".json")  # beside the array, also through a link
    if suffix == ".npy" and sidecar.is_file():
        if single:
            raise UsageError(f"{p}: a stacked output (it has a sidecar): search it on its own")
        try:
            meta = json.loads(sidecar.read_bytes())
            recorded, sources, _ = meta.pop("shape", None), meta.pop("sources", None), meta.pop("data_sha256", None)
        except (OSError, ValueError, AttributeError) as e:
            raise OutputError(f"{sidecar}: not a readable siglip sidecar ({e}): {AGAIN}") from None
        if recorded != list(shape) or not isinstance(sources, list) or len(sources) != shape[0]:
            raise OutputError(f"{sidecar} does not describe {p} (shape {recorded}, array {list(shape)}): a write was "
                              f"interrupted; {AGAIN}")
    if len(shape) - (sources is not None) not in (1, 2):  # an image's rows are [D] or [N, D]
        raise UsageError(f"{p}: a {list(shape)} array is not image embeddings" + ("" if sources is not None else
                         f" (or its sidecar {p.name}.json, with the source paths, is missing)") + f": {AGAIN}")
    if sources is not None:
        return Collection(p, meta, shape[0], shape[1:], sources, **rows)
    return Collection(p, meta, 1, shape, [str(meta.pop("source", p.name[:-len(suffix)]))], **rows)


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


def _pooled(pooler, patches: np.ndarray) -> np.ndarray:
    return np.asarray(pooler(patches.astype(np.float32, copy=False)), dtype=np.float32)  # (n, N, D) -> (n, D)


def vectors(collection: Collection, pooler, rows: int = 16384) -> Iterator[tuple[int, np.ndarray]]:
    """(start, (n, D) float32) in the pooled space: rows as stored when [D], pooler(patches) when [N, D]."""
    if len(collection.row_shape) == 2 and pooler is None:
        raise UsageError(NEEDS_POOLER.format(collection.path))
    for start, x in collection.chunks(rows):
        yield start, x.astype(np.float32, copy=False) if x.ndim == 2 else _pooled(pooler, x)


@dataclass
class Hit:
    score: float
    source: str
    collection: Path
    row: int


def _widen(w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(b, D/2) uint32, two float16 each -> (b, D) float32 (evens, then odds) in `out`, a uint32 buffer.
    numpy's own float16 cast is scalar and 3x slower. Exact for finite halves; inf and NaN give >= 65536."""
    np.left_shift(w, 16, out=out[:, :w.shape[1]])
    np.bitwise_and(w, 0xFFFF0000, out=out[:, w.shape[1]:])
    signed = out.view(np.int32)
    np.right_shift(signed, 3, out=signed)  # sign stays in bit 31; exponent and mantissa move to float32's place
    np.bitwise_and(out, 0x8FFFFFFF, out=out)  # without the sign's copies in bits 28-30
    return np.multiply(out.view(np.float32), np.float32(2.0 ** 112), out=out.view(np.float32))  # bias 15 -> 127


def _cosines(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Cosine of each row of x (n, D) with the unit vector q; -inf where a row's norm is 0 or not finite."""
    n, d = x.shape
    half = x.dtype == np.float16 and d % 2 == 0 and x.flags.c_contiguous and sys.byteorder == "little"
    qq = np.concatenate([q[0::2], q[1::2]]) if half else q
    dot, sq = np.empty(n, np.float32), np.empty(n, np.float32)
    buf = np.empty((min(n, BLOCK), d), np.uint32)
    for b in range(0, n, BLOCK):
        xb = x[b:b + BLOCK]
        f = _widen(xb.view(np.uint32), buf[:len(xb)]) if half else xb.astype(np.float32, copy=False)
        np.matmul(f, qq, out=dot[b:b + len(xb)])
        np.einsum("ij,ij->i", f, f, out=sq[b:b + len(xb)])
    with np.errstate(all="ignore"):
        s = dot / np.sqrt(sq)
        ok = (sq > 0) & np.isfinite(sq) & np.isfinite(s)
    if half:  # an inf or NaN half was widened to >= 65536: look again at those rows' own values
        big = np.flatnonzero(ok & (sq >= 2.0 ** 32))
        ok[big] = np.isfinite(x[big]).all(axis=1)
    s[~ok] = -np.inf
    return s


def _merge(parts: list, k: int | None) -> tuple[np.ndarray, ...]:
    s, c, r = (np.concatenate(a) for a in zip(*parts)) if parts else (np.empty(0),) * 3
    order = np.lexsort((r, c, -s))[:k]  # best first; ties by (collection, row)
    return s[order], c[order], r[order]


def top_k(query: np.ndarray, collections: list[Collection], k: int | None, pooler=None,
          threshold: float | None = None, rows: int = 16384) -> list[Hit]:
    """The k rows (None: all) of highest cosine with `query`, each at least `threshold` when given."""
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(q))
    if not 0 < norm < math.inf:
        raise UsageError("the query vector is zero or not finite: nothing can be ranked by it")
    q, parts = (q / norm).astype(np.float32), []
    for ci, c in enumerate(collections if k is None or k > 0 else []):
        for start, x in (c.chunks(rows) if len(c.row_shape) == 1 else vectors(c, pooler, rows)):
            if x.shape[1] != q.size:
                raise UsageError(f"{c.path}: vectors of width {x.shape[1]}, the query's is {q.size}: search with "
                                 "the model that embedded them")
            s = _cosines(x, q)
            keep = np.arange(len(s)) if threshold is None else np.flatnonzero(s >= threshold)
            if k is not None and len(keep) > k:  # the k best, ties to the earliest row
                kth = np.partition(s[keep], len(keep) - k)[len(keep) - k]
                above = keep[s[keep] > kth]
                keep = np.sort(np.concatenate([above, keep[s[keep] == kth][:k - len(above)]]))
            parts.append((s[keep], np.full(len(keep), ci), keep + start))
            del x  # before the next chunk is read
            if k is not None and len(parts) > 1:
                parts = [_merge(parts, k)]
    scores, colls, rws = _merge(parts, k)
    return [Hit(float(s), str(collections[ci].sources()[r]), collections[ci].path, r)
            for s, ci, r in zip(scores.tolist(), colls.tolist(), rws.tolist())]


def _why(e: Exception) -> str:
    return os.strerror(e.errno) if getattr(e, "errno", None) else str(e)


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


def _open_folder(p: Path, pooler, identity, note) -> Collection:
    """Read the files the index lacks (pooling patches), keep the rows of the others, write the index if changed."""
    meta, roots, canon = None, [], lambda x: json.dumps(x, sort_keys=True, default=str)
    try:
        manifest = json.loads((p / MANIFEST).read_bytes())
        meta, roots = dict(manifest["metadata"]), [str(r) for r in manifest.get("roots", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if not isinstance(e, FileNotFoundError):
            note(f"ignored {p / MANIFEST} ({_why(e)}): sources are named relative to {p}")
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
        if changed:
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
