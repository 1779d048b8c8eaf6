"""Stored embeddings for `siglip search`: read them, pool patches, index a folder, rank by cosine. Numpy only.

A collection is a stacked file (`-o FILE.npy` and its sidecar, `-o FILE.safetensors`), one image's file,
or a folder written by `siglip embed -o DIR/` (opened through its index: folder_index.py). Rows (n per chunk,
[D] or [N, D] each) are read with file reads in bounded chunks: memory does not grow with the file. A stacked
.npy's `data_sha256` is not checked (that reads every byte before the first result); its sidecar's `shape`
must match the array, which catches an interrupted rewrite. Pickle is never loaded.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from .errors import OutputError, UsageError

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
AGAIN = "delete it and run `siglip embed` again (it skips outputs that exist)"
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
