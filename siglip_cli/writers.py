"""Embedding files: .npy or .safetensors, always written atomically.

Every file goes to a temporary name in the destination folder and is renamed into place only when
complete, so a run killed at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

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
        raise UsageError(f"output {str(path)!r} is a directory: give a file name ending in .npy or .safetensors")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {str(parent)!r}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write to output folder {str(parent)!r}: permission denied")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
        raise


def write_embeddings(path: Path, array: np.ndarray, metadata: dict[str, object],
                     sources: list[str] | None = None) -> list[Path]:
    """Write one array; with `sources` (stacked output) record the source path of each row.

    .safetensors keeps everything in its header metadata; .npy gets a JSON sidecar `<path>.json`
    with the same metadata and the ordered sources. Returns the files written.
    """
    meta = dict(metadata)
    if sources is not None:
        meta["sources"] = sources
    array = np.ascontiguousarray(array)
    if output_format(path) == ".safetensors":
        from safetensors.numpy import save

        header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        atomic_write_bytes(path, save({TENSOR_NAME: array}, metadata=header))
        return [path]
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    written = []
    if sources is not None:
        sidecar = path.with_name(path.name + ".json")
        meta["shape"] = list(array.shape)
        atomic_write_bytes(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
        written.append(sidecar)
    atomic_write_bytes(path, buf.getvalue())
    return [path, *written]


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
