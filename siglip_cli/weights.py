"""Finding and loading SigLIP checkpoints in the Hugging Face layout.

A checkpoint is a directory with `config.json`, `model.safetensors` (or shards plus
`model.safetensors.index.json`) and usually `preprocessor_config.json`. Only safetensors are read:
pickles (*.bin, *.pt, *.pth) can run code when loaded, so they are never opened.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from .config import DEFAULT_MODEL_ID, SiglipVisionConfig, check_fits_in_memory, json_kind, shown
from .errors import CheckpointError, ModelNotFoundError, SiglipWarning
from .model import SiglipVisionModel

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# What the tool needs from a repository; everything else (tokenizer, TF/Flax/ONNX, pickles) is left alone.
NEEDED_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model-*.safetensors",
                WEIGHTS_INDEX_NAME]

_VISION_ROOTS = ("embeddings.", "encoder.", "post_layernorm.", "head.")
# The JSON files of a checkpoint are kilobytes (so400m's index: ~80 KB); a bigger one is not a checkpoint's.
MAX_JSON_BYTES = 16 << 20
# safetensors dtypes the model can compute with (converted to --dtype on load); integers and bools are not
# weights, and torch refuses them as parameters only after loading, with a traceback.
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


@dataclass(frozen=True)
class ModelSource:
    """A resolved checkpoint: where its files are and how the user named it."""

    path: Path
    name: str  # the hub id or the directory as given
    revision: str | None = None  # the commit, for hub models


def map_checkpoint_key(name: str) -> str | None:
    """A checkpoint tensor name -> this model's state-dict key, or None for tensors it never reads.

    Three layouts exist: full SigLIP (`vision_model.` beside `text_model.` and `logit_scale`),
    vision-only from transformers 4 (`vision_model.` prefix) and from transformers 5 (no prefix).
    Names this function does not recognise come back unchanged, to be reported as unexpected.
    """
    if name.startswith("text_model.") or name in ("logit_scale", "logit_bias"):
        return None  # the text tower: never loaded
    if name.endswith("embeddings.position_ids"):
        return None  # a buffer some exports persist; it is always arange(N)
    if name.startswith("vision_model."):
        return name
    if name.startswith(_VISION_ROOTS):
        return "vision_model." + name
    return name


def _read_json(path: Path) -> object:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB, far beyond any checkpoint's "
                                  "JSON: re-download the checkpoint")
        return json.loads(data.decode("utf-8"))
    # ValueError: bad JSON, bad UTF-8, or an integer of over 4300 digits; RecursionError: nesting thousands deep.
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]}): "
                              "re-download the checkpoint") from None


def read_config(ckpt: Path) -> SiglipVisionConfig:
    path = ckpt / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: no config.json: not a Hugging Face checkpoint directory")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object: re-download the checkpoint")
    try:
        return SiglipVisionConfig.from_hf_dict(data)
    except CheckpointError as e:  # name the file: the messages name only the field
        raise CheckpointError(f"{path}: {e}") from None


def read_preprocessor_config(ckpt: Path) -> dict | None:
    path = ckpt / "preprocessor_config.json"
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):  # never silently fall back to other preprocessing
        raise CheckpointError(f"{path}: is {json_kind(data)}, not a JSON object: fix the file, or re-download "
                              "the checkpoint")
    return data


def _inside(name: str) -> bool:
    """A relative path below the checkpoint folder, judged by the name alone: in the Hugging Face cache every
    file is a symlink into ../../blobs, so the resolved path is outside by design."""
    return not any(p.anchor or ".." in p.parts for p in (PurePosixPath(name), PureWindowsPath(name)))


def weight_files(ckpt: Path) -> dict[Path, list[str] | None]:
    """The safetensors files to open, each with the tensor names to read from it (None: all of them).

    With a sharded checkpoint, shards that hold only text-tower tensors are not even opened.
    """
    index = ckpt / WEIGHTS_INDEX_NAME
    if index.is_file():
        data = _read_json(index)
        if not isinstance(data, dict) or "weight_map" not in data:
            raise CheckpointError(f"{index}: no weight_map: not a safetensors index: re-download the checkpoint")
        weight_map = data["weight_map"]
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map is {json_kind(weight_map)}, not a JSON object of tensor name "
                                  "-> shard file: re-download the checkpoint")
        files: dict[Path, list[str]] = {}
        for name, shard in sorted(weight_map.items()):
            if not isinstance(shard, str) or not shard:
                raise CheckpointError(f"{index}: tensor {shown(name)} is in {shown(shard)}, not a file name: "
                                      "re-download the checkpoint")
            if not _inside(shard):
                raise CheckpointError(f"{index}: tensor {shown(name)} is in {shown(shard)}, outside the checkpoint "
                                      "folder (siglip reads only the checkpoint's own files): re-download the "
                                      "checkpoint")
            if map_checkpoint_key(name) is not None:
                files.setdefault(ckpt / shard, []).append(name)
        return dict(files)
    single = ckpt / WEIGHTS_NAME
    if single.is_file():
        return {single: None}
    pickles = sorted(p.name for p in ckpt.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{ckpt}: only pickle weights ({', '.join(pickles)}), which siglip never loads because unpickling "
            "can run code: use a checkpoint with model.safetensors"
        )
    raise CheckpointError(f"{ckpt}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}: not a complete checkpoint")


def read_vision_tensors(ckpt: Path, shapes_only: bool = False) -> dict[str, torch.Tensor | tuple[int, ...]]:
    """The vision tensors of a checkpoint keyed as this model's state dict; text tensors are never read.

    shapes_only reads just the safetensors headers: the shape of every vision tensor, no data.
    """
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor | tuple[int, ...]] = {}
    for path, names in weight_files(ckpt).items():
        if not path.is_file():
            raise CheckpointError(f"{path}: weight shard listed in {WEIGHTS_INDEX_NAME} is missing: "
                                  "re-download the checkpoint")
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in names if names is not None else f.keys():
                    key = map_checkpoint_key(name)
                    if key is None:
                        continue
                    header = f.get_slice(name)  # dtype and shape: no data is read
                    if header.get_dtype() not in FLOAT_DTYPES:
                        raise CheckpointError(f"{path}: tensor {shown(name)} is stored as {header.get_dtype()}: "
                                              f"weights must be floating-point ({', '.join(FLOAT_DTYPES)}): "
                                              "re-download the checkpoint, or convert it")
                    state[key] = tuple(header.get_shape()) if shapes_only else f.get_tensor(name)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e}): "
                                  "re-download the checkpoint") from None
    return state


def _name_list(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_shapes(found: dict[str, tuple[int, ...]], config: SiglipVisionConfig, where: str) -> None:
    """Strict: every key present, none extra, every shape equal to what the config implies."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in SiglipVisionModel(config).state_dict().items()}
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


def check_checkpoint(ckpt: Path) -> SiglipVisionConfig:
    """Config and safetensors headers agree (names and shapes), without reading any tensor data."""
    config = read_config(ckpt)
    check_shapes(read_vision_tensors(ckpt, shapes_only=True), config, str(ckpt))
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


def load_model(source: ModelSource, dtype: torch.dtype = torch.float32) -> SiglipVisionModel:
    """Build the model for a checkpoint's config and load its vision weights strictly."""
    config = read_config(source.path)
    check_fits_in_memory(config, str(source.path / "config.json"))
    state = read_vision_tensors(source.path)
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, config, str(source.path))
    # Built on the meta device: no time spent initialising weights that are about to be replaced.
    with torch.device("meta"):
        model = SiglipVisionModel(config)
    warn_non_finite(state)
    state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.name_or_path = source.name
    model.revision = source.revision
    model.preprocessor_config = read_preprocessor_config(source.path)
    return model.eval()


def parse_model_spec(spec: str, revision: str | None = None) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'), the id checked as the hub checks it."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id, sep, rev = spec.partition("@")
    if sep and not rev:
        raise ModelNotFoundError(f"model {spec!r}: nothing after '@': give a branch, tag or commit, or drop the '@'")
    if sep and revision and rev != revision:
        raise ModelNotFoundError(f"model {spec!r} and --revision {revision!r} disagree: give the revision once")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelNotFoundError(f"model {spec!r}: no such directory, and not a Hugging Face model id "
                                 "(like google/siglip-base-patch16-224)") from None
    return repo_id, (revision or (rev if sep else None))


def resolve_model(spec: str | None, revision: str | None = None, *, offline: bool = False,
                  progress: bool = True, note=None, cache_dir: Path | None = None) -> ModelSource:
    """A local checkpoint directory, or a hub id (optionally id@revision).

    A hub id is looked up in the Hugging Face cache first; when it is missing it is downloaded,
    unless offline (or HF_HUB_OFFLINE=1), in which case the error names the command to run.
    """
    if spec is not None and not spec.strip():
        raise ModelNotFoundError("--model is empty: give a checkpoint directory or a hub id")
    spec = spec or DEFAULT_MODEL_ID
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource(path=path, name=spec)
    if path.exists():
        raise ModelNotFoundError(f"model {spec!r} is a file: --model takes a checkpoint directory or a hub id")
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        raise ModelNotFoundError(f"model {spec!r}: no such directory, and not a Hugging Face model id "
                                 "(like google/siglip-base-patch16-224)")
    repo_id, revision = parse_model_spec(spec, revision)
    from .hub import ensure_model

    return ensure_model(repo_id, revision, offline=offline, progress=progress, note=note, cache_dir=cache_dir)
