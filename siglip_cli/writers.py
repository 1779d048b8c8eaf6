"""Embedding files: .npy or .safetensors, always written atomically.

Every file goes to a temporary name in the destination folder and is renamed into place only when
complete, so a run killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import OutputError, UsageError

FORMATS = (".npy", ".safetensors")
TENSOR_NAME = "embeddings"


def output_format(path: Path) -> str:
    """The format an output path asks for, from its suffix."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"output {str(path)!r} must end in .npy or .safetensors (the suffix picks the format)")
    return suffix


def check_writable(path: Path) -> None:
    """Fail before any work when an output file cannot be created where it is asked for."""
    if path.is_dir():
        raise UsageError(f"output {str(path)!r} is a directory: give a file name")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {str(parent)!r}: {e.strerror or e}") from None
    try:  # a real probe: permission bits say nothing to root, or on read-only and virtual filesystems
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to output folder {str(parent)!r}: {e.strerror or e}") from None


TMP_SUFFIX = ".siglip-tmp"
# mkstemp creates files readable by their owner only; outputs get the usual permissions (0666 - umask).
_UMASK = os.umask(0)
os.umask(_UMASK)


def _temp_prefix(path: Path) -> str:
    # Short enough that a long file name plus the random part stays under the 255-byte name limit.
    return f".{path.name.encode()[:120].decode(errors='ignore')}."


def _temp_file(path: Path):
    """A new temporary file beside `path` (same folder, so the final rename is atomic)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    os.fchmod(fd, 0o666 & ~_UMASK)
    return os.fdopen(fd, "wb+"), Path(tmp)


def clean_stale_temps(path: Path) -> None:
    """Remove what a killed earlier run left while writing `path` (never a finished file)."""
    # mkstemp's random part is 8 characters: the pattern matches this output's temps and no other's.
    for stale in path.parent.glob(f"{glob.escape(_temp_prefix(path))}{'?' * 8}{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _commit(f, tmp: Path, path: Path) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)
    clean_stale_temps(path)


def _discard(f, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        f.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    f, tmp = _temp_file(path)
    try:
        f.write(data)
        _commit(f, tmp, path)
    except BaseException as e:
        _discard(f, tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
        raise


def write_embeddings(path: Path, array: np.ndarray, metadata: dict[str, object]) -> list[Path]:
    """Write one image's array with its metadata (.safetensors header; .npy has none).

    Stacked outputs of many images go through StackedWriter. Returns the files written.
    """
    array = np.ascontiguousarray(array)
    if output_format(path) == ".safetensors":
        from safetensors.numpy import save

        atomic_write_bytes(path, save({TENSOR_NAME: array}, metadata=_header_text(metadata)))
        return [path]
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    # A sidecar left by an earlier stacked run would describe another array: it goes.
    with contextlib.suppress(FileNotFoundError):
        path.with_name(path.name + ".json").unlink()
    return [path]


def read_embeddings(path: Path) -> tuple[np.ndarray, dict[str, object]]:
    """Read back what write_embeddings wrote: the array and its metadata (JSON values decoded)."""
    path = Path(path)
    if output_format(path) == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            array = f.get_tensor(TENSOR_NAME)
        meta: dict[str, object] = {}
        for k, v in header.items():
            try:
                meta[k] = json.loads(v)
            except json.JSONDecodeError:
                meta[k] = v
        return array, meta
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return np.load(path, allow_pickle=False), meta


def _header_text(meta: dict[str, object]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


class StackedWriter:
    """Many embeddings into one [B, ...] file, streamed: rows go to disk as they come.

    The header is written last, into space reserved for the largest possible one (every input
    embedded, every source path recorded), padded with spaces as both formats allow; the file is
    then cut to the rows written and renamed into place. Memory does not grow with B.
    """

    def __init__(self, path: Path, capacity: int, metadata: dict[str, object], candidate_sources: list[str]):
        self.path = Path(path)
        self.format = output_format(self.path)
        self.capacity = capacity
        self.metadata = dict(metadata)
        self.candidates = candidate_sources
        self.count = 0
        self.row_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None
        self._reserved = 0
        self._f, self._tmp = _temp_file(self.path)

    def _header(self, count: int, sources: list[str]) -> bytes:
        shape = (count, *self.row_shape)
        if self.format == ".npy":
            d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
            return repr(d).encode("latin1")
        nbytes = count * int(np.prod(self.row_shape)) * self.dtype.itemsize
        st_dtype = {"float32": "F32", "float16": "F16"}[self.dtype.name]
        header = {"__metadata__": _header_text({**self.metadata, "sources": sources}),
                  TENSOR_NAME: {"dtype": st_dtype, "shape": list(shape), "data_offsets": [0, nbytes]}}
        return json.dumps(header, separators=(",", ":")).encode()

    def _framed(self, body: bytes, size: int) -> bytes:
        """The header bytes, padded with spaces to exactly `size` bytes of header region."""
        if self.format == ".npy":
            # magic, version 1.0, little-endian u16 length, then the dict padded with spaces and a newline
            if size - 10 > 0xFFFF:
                raise OutputError(f"{self.path}: header too large for .npy")  # pragma: no cover
            return b"\x93NUMPY\x01\x00" + (size - 10).to_bytes(2, "little") + body.ljust(size - 11) + b"\n"
        return (size - 8).to_bytes(8, "little") + body.ljust(size - 8)

    def add(self, row: np.ndarray) -> None:
        try:
            if self.row_shape is None:
                self.row_shape, self.dtype = tuple(row.shape), row.dtype
                longest = self._header(self.capacity, self.candidates)
                align = 64 if self.format == ".npy" else 8
                self._reserved = -(-(len(longest) + 12) // align) * align
                self._f.write(b"\0" * self._reserved)
            elif tuple(row.shape) != self.row_shape or row.dtype != self.dtype:
                raise OutputError(f"{self.path}: row {self.count} has shape {list(row.shape)}, expected "
                                  f"{list(self.row_shape)}")  # pragma: no cover - one model, one shape
            self._f.write(np.ascontiguousarray(row).tobytes())
            self.count += 1
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write {str(self.path)!r}: {e.strerror or e}") from None

    def finish(self, sources: list[str]) -> list[Path]:
        """Write the header for the rows added and put the file in place (plus the .npy sidecar)."""
        if self.count == 0:
            self.abort()
            return []
        try:
            self._f.seek(0)
            self._f.write(self._framed(self._header(self.count, sources), self._reserved))
            self._f.truncate(self._reserved + self.count * int(np.prod(self.row_shape)) * self.dtype.itemsize)
            _commit(self._f, self._tmp, self.path)
            written = [self.path]
            if self.format == ".npy":
                sidecar = self.path.with_name(self.path.name + ".json")
                meta = {**self.metadata, "sources": sources, "shape": [self.count, *self.row_shape]}
                atomic_write_bytes(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
                written.append(sidecar)
            return written
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write {str(self.path)!r}: {e.strerror or e}") from None

    def abort(self) -> None:
        _discard(self._f, self._tmp)


def output_path_for(out_dir: Path, rel, suffix: str) -> Path:
    """Where one input's embedding goes in folder mode: DIR/<rel>.npy, never outside DIR."""
    return Path(out_dir) / f"{rel.as_posix()}{suffix}"


def check_inside(out_dir: Path, target: Path) -> None:
    """Refuse a target whose folder, through a symlink, lies outside the output folder."""
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
