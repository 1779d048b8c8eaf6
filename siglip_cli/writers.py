"""Embedding files: .npy or .safetensors, always written atomically.

Every file goes to a temporary name in the destination folder and is renamed into place only when
complete, so a run killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .atomic import atomic_write_bytes, check_writable, commit, destination, discard, temp_file  # noqa: F401
from .choices import FORMATS as FORMAT_NAMES
from .errors import OutputError, OutputGoneError, UsageError

FORMATS = tuple("." + name for name in FORMAT_NAMES)  # (".npy", ".safetensors")
NAME_MAX = 255  # bytes in one file name, on every common file system
TENSOR_NAME = "embeddings"


def check_output_file(path: Path) -> None:
    """Before any work: a `-o FILE` that can be written, with room in its name for the .npy sidecar."""
    suffix = output_format(path)
    check_writable(path)
    if suffix == ".npy" and len(os.fsencode(_sidecar(destination(path)[0]).name)) > NAME_MAX:
        raise UsageError(f"output {str(path)!r}: the name is too long for its sidecar {path.name}.json (over "
                         f"{NAME_MAX} bytes): choose a shorter name")


def check_sidecar_free(path: Path) -> None:
    """A stacked .npy output writes FILE.npy.json beside it: never over a file siglip did not write."""
    side = _sidecar(destination(path)[0])
    if output_format(path) == ".npy" and os.path.lexists(side) and not _is_sidecar(side):
        raise UsageError(f"output {str(path)!r}: its sidecar would replace {side}, which is not a siglip sidecar "
                         "(one of your files?): choose another output name")


def output_format(path: Path) -> str:
    """The format an output path asks for, from its suffix."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"output {str(path)!r} must end in .npy or .safetensors (the suffix picks the format)")
    return suffix


SOURCES_TENSOR = "sources"  # a stacked .safetensors keeps its source paths here, as UTF-8 JSON bytes


def write_embeddings(path: Path, array: np.ndarray, metadata: dict[str, object]) -> list[Path]:
    """Write one image's array with its metadata (.safetensors header; .npy has none).

    Stacked outputs of many images go through StackedWriter. Returns the files written.
    """
    array = np.ascontiguousarray(array)
    real, _ = destination(path)
    if output_format(path) == ".safetensors":
        from safetensors.numpy import save

        atomic_write_bytes(real, save({TENSOR_NAME: array}, metadata=_header_text(metadata)))
        return [path]
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(real, buf.getvalue())
    _drop_stale_sidecar(_sidecar(real))
    return [path]


def _drop_stale_sidecar(sidecar: Path) -> None:
    """A sidecar left by an earlier stacked run describes another array: it goes (if this process
    dies first, its recorded hash no longer matches and read_embeddings refuses the pair). Only a
    siglip sidecar is removed: a user's own file of that name is left alone."""
    with contextlib.suppress(OSError):
        if _is_sidecar(sidecar):
            sidecar.unlink()


def _is_sidecar(path: Path) -> bool:
    """Whether `path` is a sidecar siglip wrote (a JSON object with sources and shape)."""
    with contextlib.suppress(OSError, ValueError):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < (1 << 30):
            meta = json.loads(path.read_bytes())
            return isinstance(meta, dict) and {"sources", "shape"} <= meta.keys()
    return False


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_embeddings(path: Path) -> tuple[np.ndarray, dict[str, object]]:
    """Read back what siglip wrote: the array and its metadata (JSON values decoded, `sources` too).

    A .npy whose sidecar describes another array (an interrupted rewrite left the old sidecar beside
    the new array, or the reverse) is refused rather than paired with the wrong paths.
    """
    path = Path(path)
    if output_format(path) == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                header = f.metadata() or {}
                array = f.get_tensor(TENSOR_NAME)
                sources = f.get_tensor(SOURCES_TENSOR) if SOURCES_TENSOR in f.keys() else None
        except SafetensorError as e:
            raise OutputError(f"{path}: not a readable safetensors file ({e})") from None
        meta: dict[str, object] = {}
        for k, v in header.items():
            try:
                meta[k] = json.loads(v)
            except json.JSONDecodeError:
                meta[k] = v
        if sources is not None:
            meta["sources"] = json.loads(sources.tobytes())
        return array, meta
    array = np.load(path, allow_pickle=False)
    sidecar = _sidecar(Path(os.path.realpath(path)))  # beside the array, also when `path` is a symlink
    if not sidecar.is_file():
        return array, {}
    try:
        meta = json.loads(sidecar.read_bytes())
        recorded = meta.pop("data_sha256", None)
    except (OSError, ValueError, AttributeError) as e:
        raise OutputError(f"{sidecar}: not a readable siglip sidecar ({e}): delete it to read {path} alone") \
            from None
    if meta.get("shape") != list(array.shape) or (
            recorded is not None and recorded != hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()):
        raise OutputError(f"{sidecar} does not describe {path} (a write was interrupted between the two): "
                          "run the command that wrote them again, or delete the sidecar to read the array alone")
    return array, meta


def _header_text(meta: dict[str, object]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


class StackedWriter:
    """Many embeddings into one [B, ...] file, streamed: rows go to disk as they come.

    The header is written last, into a small space reserved at the start for the largest count
    possible, padded with spaces as both formats allow; the file is then cut to what was written
    and renamed into place. Memory does not grow with B beyond the list of source paths.

    Source paths: a .safetensors keeps them as a U8 tensor `sources` (UTF-8 JSON) after the rows,
    so its header stays a few hundred bytes at any scale (safetensors refuses headers over 100 MB);
    a .npy gets a sidecar FILE.npy.json holding them and the sha256 of the array, so a sidecar from
    another write is detected. Only embedded inputs are recorded.
    """

    def __init__(self, path: Path, capacity: int, metadata: dict[str, object]):
        self.shown = Path(path)
        self.path, _ = destination(self.shown)  # a symlink is written through; a FIFO or device refused
        self.format = output_format(self.shown)
        self.capacity = capacity
        self.metadata = dict(metadata)
        self.sources: list[str] = []
        self.row_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None
        self._reserved = 0
        self._hash = hashlib.sha256()
        self._f, self._tmp = temp_file(self.path)

    @property
    def count(self) -> int:
        return len(self.sources)

    def _data_bytes(self, count: int) -> int:
        return count * int(np.prod(self.row_shape)) * self.dtype.itemsize

    def _header(self, count: int, sources_bytes: int) -> bytes:
        shape = (count, *self.row_shape)
        if self.format == ".npy":
            d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
            return repr(d).encode("latin1")
        nbytes = self._data_bytes(count)
        st_dtype = {"float32": "F32", "float16": "F16"}[self.dtype.name]
        header = {"__metadata__": _header_text(self.metadata),
                  TENSOR_NAME: {"dtype": st_dtype, "shape": list(shape), "data_offsets": [0, nbytes]},
                  SOURCES_TENSOR: {"dtype": "U8", "shape": [sources_bytes],
                                   "data_offsets": [nbytes, nbytes + sources_bytes]}}
        return json.dumps(header, separators=(",", ":")).encode()

    def _framed(self, body: bytes, size: int) -> bytes:
        """The header bytes, padded with spaces to exactly `size` bytes of header region."""
        if self.format == ".npy":
            # magic, version 1.0, little-endian u16 length, then the dict padded with spaces and a newline
            return b"\x93NUMPY\x01\x00" + (size - 10).to_bytes(2, "little") + body.ljust(size - 11) + b"\n"
        return (size - 8).to_bytes(8, "little") + body.ljust(size - 8)

    def add(self, row: np.ndarray, source: str) -> None:
        try:
            if self.row_shape is None:
                self.row_shape, self.dtype = tuple(row.shape), row.dtype
                # Room for the longest header: every input embedded, and sources of up to 10^15 bytes.
                longest = self._header(self.capacity, 10 ** 15)
                align = 64 if self.format == ".npy" else 8
                self._reserved = -(-(len(longest) + 12) // align) * align
                self._f.write(b"\0" * self._reserved)
            elif tuple(row.shape) != self.row_shape or row.dtype != self.dtype:
                raise OutputError(f"{self.shown}: row {self.count} has shape {list(row.shape)}, expected "
                                  f"{list(self.row_shape)}")  # pragma: no cover - one model, one shape
            data = np.ascontiguousarray(row).tobytes()
            self._f.write(data)
            self._hash.update(data)
            self.sources.append(source)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write {str(self.shown)!r}: {e.strerror or e}", e.errno) from None

    def finish(self) -> list[Path]:
        """Write the header for the rows added and put the file in place (plus the .npy sidecar)."""
        if self.count == 0:
            self.abort()
            return []
        side = None
        try:
            sources = json.dumps(self.sources, ensure_ascii=False).encode("utf-8", "surrogateescape")
            if self.format == ".safetensors":
                self._f.write(sources)
            self._f.seek(0)
            self._f.write(self._framed(self._header(self.count, len(sources)), self._reserved))
            if self.format == ".npy":
                meta = {**self.metadata, "sources": self.sources, "shape": [self.count, *self.row_shape],
                        "data_sha256": self._hash.hexdigest()}
                side = temp_file(_sidecar(self.path))  # complete on disk before either file is replaced
                side[0].write((json.dumps(meta, indent=2) + "\n").encode())
                side[0].flush()
                os.fsync(side[0].fileno())
            commit(self._f, self._tmp, self.path)
            if side is not None:
                commit(*side, _sidecar(self.path))
                return [self.shown, _sidecar(self.path)]
            return [self.shown]
        except OSError as e:
            self.abort()
            if side is not None:
                discard(*side)
            raise OutputError(f"cannot write {str(self.shown)!r}: {e.strerror or e}", e.errno) from None

    def abort(self) -> None:
        discard(self._f, self._tmp)


MANIFEST = ".siglip.json"  # in a folder output: what wrote its files, and the input folders they mirror
# What must agree between the files of one folder: the vectors' space (the weights: their fingerprint, or the
# model's name for files written before fingerprints; pooling, preprocessing, input size), and their form.
SPACE_KEYS = ("model_fingerprint", "pool", "norm", "image_size", "dtype", "format")


def read_manifest(out_dir: Path) -> dict | None:
    """A folder output's manifest: {"metadata": the run's metadata, "roots": input folders}, or None."""
    path = Path(out_dir) / MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise OutputError(f"{path}: not a readable siglip manifest ({e}): delete it (the next `siglip embed` "
                          "into this folder writes it again)") from None
    if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict) or \
            not isinstance(data.get("roots"), list):
        raise OutputError(f"{path}: not a siglip manifest: delete it (the next `siglip embed` into this folder "
                          "writes it again)")
    return data


def write_manifest(out_dir: Path, metadata: dict[str, object], roots: Iterable[str]) -> list[str] | None:
    """Record what writes into a folder output, before its first file: search reads the model from it and
    finds each .npy file's image below `roots`. A folder already holding embeddings of another model, pooling,
    preprocessing, dtype or format is refused (--overwrite too: it would rewrite only this run's inputs and
    leave the others' files, now described wrongly). Returns the roots recorded before (None: a new folder)."""
    old = read_manifest(out_dir)
    if old is not None:
        keys = [k for k in SPACE_KEYS if k in old["metadata"] or k in metadata]
        if not (old["metadata"].get("model_fingerprint") and metadata.get("model_fingerprint")):
            keys = ["model", *(k for k in keys if k != "model_fingerprint")]  # older files: the names must agree
        theirs = {k: old["metadata"].get(k) for k in keys}
        ours = {k: metadata.get(k) for k in keys}
        if theirs != ours:
            diff = ", ".join(f"{k} {theirs[k]!r} (this run: {ours[k]!r})" for k in keys if theirs[k] != ours[k])
            if "model_fingerprint" in diff:
                diff = f"model {old['metadata'].get('model')!r} (this run: {metadata.get('model')!r}), " + diff
            raise UsageError(f"output folder {out_dir} holds embeddings made with another setup: {diff}: use "
                             "another output folder, or delete this one first")
    known = [r for r in old.get("roots", []) if isinstance(r, str)] if old is not None else []
    roots = known + sorted(set(roots) - set(known))
    data = {"metadata": metadata, "roots": roots}
    if old is None or old != data:
        atomic_write_bytes(Path(out_dir) / MANIFEST, (json.dumps(data, indent=2, ensure_ascii=False) + "\n")
                           .encode("utf-8", "surrogateescape"))
    return None if old is None else known


def output_path_for(out_dir: Path, rel, suffix: str) -> Path:
    """Where one input's embedding goes in folder mode: DIR/<rel>.npy, never outside DIR.

    A name too long for the file system once the suffix is added keeps its first 200 bytes and gets a
    hash of the whole name (`<start>~<sha1 12>.npy`): still one fixed name per input, so resume works.
    """
    name = f"{rel.name}{suffix}"
    if len(os.fsencode(name)) > NAME_MAX:
        raw = os.fsencode(rel.name)
        name = f"{raw[:200].decode('utf-8', 'ignore')}~{hashlib.sha1(raw).hexdigest()[:12]}{suffix}"
    return Path(out_dir) / rel.parent.as_posix() / name


def check_inside(out_dir: Path, target: Path) -> None:
    """Refuse a target whose folder, through a symlink, lies outside the output folder."""
    if not os.path.isdir(out_dir):
        raise OutputGoneError(f"output folder {out_dir} no longer exists (deleted during the run?): the files "
                              "written before went with it; run the command again")
    root = Path(os.path.realpath(out_dir))
    probe = target.parent
    while not probe.exists():
        probe = probe.parent
    real = Path(os.path.realpath(probe))
    if real != root and root not in real.parents:
        raise OutputError(f"output {target} would leave {out_dir} through a symlink ({probe} -> {real})")


def refuse_overwriting_inputs(out: Path, items) -> None:
    """An output file that is one of the inputs would destroy that input: refuse before any work."""
    if not out.exists():
        return
    for item in items:
        with contextlib.suppress(OSError):
            if os.path.samefile(out, item.path):
                raise UsageError(f"output {str(out)!r} is also an input: choose another output file")
