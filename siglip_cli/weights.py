"""Loading a checkpoint into a model class: local files only, never the network (that is hub.py).

    model = load_model(SiglipVisionModel, Path("ckpt/"))

A checkpoint is a folder (transformers, timm, open_clip) or a big_vision `.npz` file; read_checkpoint gives
its config, preprocessing, tensors (lazily: a sharded checkpoint's shards that hold only the text tower are
never opened) and layout, whatever the kind. The names are converted by the layout (layouts.py,
timm_layout.py, bigvision.py), the model's own keys say which tensors are read, and the load is strict:
every missing, unexpected or misshapen tensor is named.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import torch

from .checkpoint import (ModelSource, checkpoint_kind, config_file, read_config,
                         read_preprocessor_config, weight_files, WEIGHTS_INDEX_NAME)
from .config import SiglipConfig, SiglipTextConfig, check_fits_in_memory, shown
from .errors import CheckpointError, SiglipWarning
from .layouts import Layout, Lazy, detect_layout, for_model
from . import timm_layout

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
    shown = ", ".join(k if len(k) <= 200 else k[:200] + "..." for k in keys[:limit])  # a name can be kilobytes
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def expected_shapes(cls: type, config) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of `cls(config)`, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}


def check_shapes(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], where: str,
                 against: str = "config.json") -> None:
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
        raise CheckpointError(f"{where}: weights do not fit {against}: {'; '.join(problems)}")


def read_checkpoint(path: Path, stack: contextlib.ExitStack) -> tuple[SiglipConfig, dict | None, Mapping[str, Lazy],
                                                                      Layout]:
    """Any kind of checkpoint -> (its config, its preprocessor_config.json dict or None, its tensors by their own
    names, its layout). Only configs and headers are read; the files stay open until `stack` closes."""
    path = Path(path)
    kind = checkpoint_kind(path)
    if kind == "big_vision":
        from .bigvision import LAYOUT, NpzTensors, config_from, preprocessor_from

        tensors = NpzTensors(path)
        if hasattr(tensors, "close"):
            stack.callback(tensors.close)
        return config_from(tensors), preprocessor_from(tensors), tensors, LAYOUT
    if path.is_file():
        raise CheckpointError(f"{path}: a file, not a checkpoint folder nor a big_vision .npz file: use the folder "
                              "that holds the checkpoint's config and weights")
    if kind == "transformers":
        config, preprocessor = read_config(path), read_preprocessor_config(path)
        tensors = SafetensorsTensors(path, stack)
        return config, preprocessor, tensors, detect_layout(list(tensors))
    tensors = SafetensorsTensors(path, stack)
    config, preprocessor = timm_layout.config_from(kind, path, tensors)
    return config, preprocessor, tensors, timm_layout.LAYOUTS[kind]


def read_any_config(path: Path) -> SiglipConfig:
    """The config of a checkpoint of any kind: config.json's, or derived from the tensors' headers."""
    if checkpoint_kind(Path(path)) == "transformers" and Path(path).is_dir():
        return read_config(Path(path))
    with contextlib.ExitStack() as stack:
        return read_checkpoint(Path(path), stack)[0]


def model_config(config: SiglipConfig, cls: type, path: Path):
    """The part of a checkpoint's config that `cls` is built from; a text tower the checkpoint lacks is named
    with the reason its kind gives."""
    kind = checkpoint_kind(path)
    try:
        if cls.config_class is SiglipConfig:
            config.part(SiglipTextConfig)
        return config.part(cls.config_class)
    except CheckpointError:
        if kind == "transformers" or config.text_config is not None:
            raise
        raise CheckpointError(timm_layout.no_text_tower(kind, path)) from None


def checked_state(path: Path, tensors: Mapping[str, Lazy], layout: Layout, cls: type, config) -> dict[str, Lazy]:
    """The checkpoint's tensors for `cls(config)`, converted from its layout and checked (names, shapes,
    dtypes) from the headers alone: nothing is read yet."""
    expected = expected_shapes(cls, config)
    state = for_model(layout.convert(tensors, config), expected)
    kind = checkpoint_kind(path)
    against = "the sizes its arrays imply" if kind == "big_vision" else config_file(path).name
    check_shapes({k: v.shape for k, v in sorted(state.items())}, expected, str(path), against)
    return state


def check_checkpoint(ckpt: Path, cls: type):
    """Config and headers agree with `cls` (names and shapes), without reading any tensor data."""
    with contextlib.ExitStack() as stack:
        config, _, tensors, layout = read_checkpoint(ckpt, stack)
        config = model_config(config, cls, ckpt)
        checked_state(ckpt, tensors, layout, cls, config)
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


def weights_fingerprint(state: Mapping[str, torch.Tensor], samples: int = 64) -> str:
    """A short id of the vision tower's weights, recorded with every embedding so search can tell models apart.

    sha256 over each vision tensor's name (this model's, whatever the file's layout), shape and `samples`
    values spread evenly over it, as float32: the same weights give the same id wherever they lie and in
    whatever layout (a cache copy, timm's, an .npz, a `siglip convert` output); a fine-tune or a merged LoRA,
    which changes whole tensors, gives another. Only the vision tower counts: it alone makes image vectors,
    so an image-only load and a two-tower load of one checkpoint agree.
    """
    h = hashlib.sha256()
    for name in sorted(k for k in state if k.startswith("vision_model.")):
        flat = state[name].detach().reshape(-1)
        picks = flat[torch.linspace(0, max(flat.numel() - 1, 0), min(samples, flat.numel())).long()]
        h.update(f"{name}:{list(state[name].shape)}".encode() + picks.float().numpy().tobytes())
    return h.hexdigest()[:16]


def load_model(cls: type, source: ModelSource | Path | str, dtype: torch.dtype = torch.float32):
    """Build `cls` for a checkpoint's config and load its weights strictly (memory-mapped, no copy when the
    stored dtype is the load dtype and the layout keeps the tensor as stored)."""
    if not isinstance(source, ModelSource):
        source = ModelSource(Path(source), str(source))
    with contextlib.ExitStack() as stack:
        config, preprocessor, tensors, layout = read_checkpoint(source.path, stack)
        config = model_config(config, cls, source.path)
        check_fits_in_memory(config, str(config_file(source.path)))
        state = {k: v.read() for k, v in checked_state(source.path, tensors, layout, cls, config).items()}
    # Built on the meta device: no time spent initialising weights that are about to be replaced.
    with torch.device("meta"):
        model = cls(config)
    warn_non_finite(state)
    model.fingerprint = weights_fingerprint(state)  # of the stored values, whatever dtype they are loaded in
    state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.name_or_path = source.name
    model.revision = source.revision
    model.preprocessor_config = preprocessor
    return model.eval()
