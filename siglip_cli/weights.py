"""Loading a checkpoint folder into a model class: local files only, never the network (that is hub.py).

    model = load_model(SiglipVisionModel, Path("ckpt/"))

The safetensors files are opened lazily (a sharded checkpoint's shards that hold only the text tower are
never opened), the names are converted by the checkpoint's layout (layouts.py), the model's own keys say
which tensors are read, and the load is strict: every missing, unexpected or misshapen tensor is named.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import torch

from .checkpoint import (ModelSource, fingerprint, read_config, read_preprocessor_config, weight_files,
                         WEIGHTS_INDEX_NAME)
from .config import check_fits_in_memory, shown
from .errors import CheckpointError, SiglipWarning
from .layouts import Lazy, detect_layout, for_model

# safetensors dtypes the model can compute with (converted to the load dtype); integers and bools are not
# weights, and torch refuses them as parameters only after loading, with a traceback.
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class SafetensorsTensors(Mapping[str, Lazy]):
    """name -> Lazy for every tensor of a checkpoint folder; a file is opened when one of its tensors is
    first looked at, and a tensor's data is read only by Lazy.read()."""

    def __init__(self, ckpt: Path, stack: contextlib.ExitStack):
        self._stack, self._handles = stack, {}
        self._where: dict[str, Path] = {}
        for path, names in weight_files(ckpt).items():
            for name in names if names is not None else self._open(path).keys():
                self._where[name] = path

    def _open(self, path: Path):
        from safetensors import SafetensorError, safe_open

        if path not in self._handles:
            if not path.is_file():
                raise CheckpointError(f"{path}: weight shard listed in {WEIGHTS_INDEX_NAME} is missing: "
                                      "re-download the checkpoint")
            with self._errors(path, SafetensorError):
                self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path]

    @contextlib.contextmanager
    def _errors(self, path: Path, *kinds) -> Iterator[None]:
        try:
            yield
        except (*kinds, OSError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e}): "
                                  "re-download the checkpoint") from None

    def _meta(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError

        path = self._where[name]
        f = self._open(path)
        with self._errors(path, SafetensorError):
            header = f.get_slice(name)  # dtype and shape: no data is read
            dtype, shape = header.get_dtype(), header.get_shape()
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{path}: tensor {shown(name)} is stored as {dtype}: weights must be "
                                  f"floating-point ({', '.join(FLOAT_DTYPES)}): re-download the checkpoint, or "
                                  "convert it")
        return torch.empty(shape, dtype=FLOAT_DTYPES[dtype], device="meta")

    def _read(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError

        path = self._where[name]
        with self._errors(path, SafetensorError):
            return self._open(path).get_tensor(name)

    def __getitem__(self, name: str) -> Lazy:
        if name not in self._where:
            raise KeyError(name)
        return Lazy(lambda: self._meta(name), lambda: self._read(name))

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _name_list(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def expected_shapes(cls: type, config) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of `cls(config)`, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}


def check_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Strict: every key present, none extra, every shape equal to what the config implies."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k} {list(found[k])} (config wants {list(expected[k])})"
             for k in sorted(set(found) & set(expected)) if tuple(found[k]) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys: {_name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_name_list(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch: {_name_list(wrong, 3)}")
    if problems:
        raise CheckpointError(f"{where}: weights do not fit config.json: {'; '.join(problems)}")


def checked_state(ckpt: Path, cls: type, config, stack: contextlib.ExitStack) -> dict[str, Lazy]:
    """The checkpoint's tensors for `cls(config)`, converted from its layout and checked (names, shapes,
    dtypes) from the headers alone: nothing is read yet."""
    tensors = SafetensorsTensors(ckpt, stack)
    expected = expected_shapes(cls, config)
    state = for_model(detect_layout(list(tensors)).convert(tensors, config), expected)
    check_shapes({k: v.shape for k, v in sorted(state.items())}, expected, str(ckpt))
    return state


def check_checkpoint(ckpt: Path, cls: type):
    """Config and safetensors headers agree with `cls` (names and shapes), without reading any tensor data."""
    config = read_config(ckpt).part(cls.config_class)
    with contextlib.ExitStack() as stack:
        checked_state(ckpt, cls, config, stack)
    return config


def warn_non_finite(state: dict[str, torch.Tensor], limit: int = 3) -> None:
    """Warn (not refuse: a user may want to inspect such a model) about weights holding NaN or inf, which make
    every embedding NaN; embed then reports each output as not finite."""
    # A sum is NaN or inf when any element is, and is 20x faster than isfinite; only a sum that overflows
    # (or a non-finite tensor) needs the exact check.
    bad = sorted(k for k, v in state.items() if not v.sum().isfinite() and not v.isfinite().all())
    if bad:
        warnings.warn(f"NaN or inf in {len(bad)} weight tensors: {_name_list(bad, limit)}: the embeddings will "
                      "be NaN or inf: re-download the checkpoint", SiglipWarning, stacklevel=3)


def load_model(cls: type, source: ModelSource | Path | str, dtype: torch.dtype = torch.float32):
    """Build `cls` for a checkpoint folder's config and load its weights strictly (memory-mapped, no copy
    when the stored dtype is the load dtype)."""
    if not isinstance(source, ModelSource):
        source = ModelSource(Path(source), str(source))
    config = read_config(source.path).part(cls.config_class)
    check_fits_in_memory(config, str(source.path / "config.json"))
    with contextlib.ExitStack() as stack:
        state = {k: v.read() for k, v in checked_state(source.path, cls, config, stack).items()}
    # Built on the meta device: no time spent initialising weights that are about to be replaced.
    with torch.device("meta"):
        model = cls(config)
    warn_non_finite(state)
    state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.name_or_path = source.name
    model.revision = source.revision
    model.preprocessor_config = read_preprocessor_config(source.path)
    model.fingerprint = fingerprint(source.path)
    return model.eval()
