"""A checkpoint's files, read without torch: which kind it is, which files hold the weights, the JSON configs.

A checkpoint is a PATH: a folder, or a big_vision `.npz` file. Its kind (checkpoint_kind) comes from the files:
- transformers: `config.json`, `model.safetensors` (or shards plus `model.safetensors.index.json`) and usually
  `preprocessor_config.json`;
- timm: `config.json` naming the timm `architecture` (e.g. vit_base_patch16_siglip_224), `model.safetensors`;
- open_clip: `open_clip_config.json`, `open_clip_model.safetensors`;
- big_vision: one `.npz` file.
Only safetensors (and npz arrays, read without pickle) are ever read: pickles (*.bin, *.pt, *.pth) can run code
when loaded, so they are never opened. Every file here is data from the internet, so each value is checked
before anything is built from it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from .config import SiglipConfig, json_kind, shown
from .errors import CheckpointError
from .tokenizer import TOKENIZER_FILES

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"
OPEN_CLIP_FILES = [OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME]
KINDS = ("transformers", "timm", "open_clip", "big_vision")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# What the tool needs from a repository: configs, safetensors weights and the SentencePiece tokenizer (SigLIP's
# spiece.model, SigLIP 2's Gemma tokenizer.model, with the token names of their configs); everything else
# (tokenizer.json, TF/Flax/ONNX, pickles) is left alone.
# A cached copy is complete with MODEL_FILES; the tokenizer is fetched when a text command first needs it.
MODEL_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model-*.safetensors",
               WEIGHTS_INDEX_NAME, *OPEN_CLIP_FILES]
NEEDED_FILES = MODEL_FILES + TOKENIZER_FILES
# The JSON files of a checkpoint are kilobytes (so400m's index: ~80 KB); a bigger one is not a checkpoint's.
MAX_JSON_BYTES = 16 << 20


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint on this machine: where its files are, and how the user named it."""

    path: Path
    name: str  # the hub id or the directory as given
    revision: str | None = None  # the commit, for hub models


def read_json(path: Path) -> object:
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


def checkpoint_kind(path: Path) -> str:
    """"transformers", "timm", "open_clip" or "big_vision", from the files alone (no tensor is read).

    A config.json that cannot be read counts as transformers': read_config then names what is wrong with it.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz" and not path.is_dir():
        return "big_vision"
    if (path / OPEN_CLIP_CONFIG_NAME).is_file() and ((path / OPEN_CLIP_WEIGHTS_NAME).is_file()
                                                     or not (path / "config.json").is_file()):
        return "open_clip"
    config = path / "config.json"
    if config.is_file():
        try:
            data = read_json(config)
        except CheckpointError:
            return "transformers"
        if isinstance(data, dict) and "architecture" in data:  # timm's key; transformers' is "architectures"
            return "timm"
    return "transformers"


def config_file(path: Path) -> Path:
    """The file a checkpoint's sizes are checked against, for messages: config.json, open_clip_config.json, or
    the .npz file itself (its sizes come from its arrays)."""
    kind = checkpoint_kind(path)
    return path if kind == "big_vision" else path / (OPEN_CLIP_CONFIG_NAME if kind == "open_clip" else "config.json")


def read_config(ckpt: Path) -> SiglipConfig:
    """config.json -> SiglipConfig (the vision tower, and the text tower when the file has one)."""
    path = ckpt / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt}: no config.json: not a Hugging Face checkpoint directory")
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object: re-download the checkpoint")
    try:
        return SiglipConfig.from_hf_dict(data)
    except CheckpointError as e:  # name the file: the messages name only the field
        raise CheckpointError(f"{path}: {e}") from None


def read_preprocessor_config(ckpt: Path) -> dict | None:
    path = ckpt / "preprocessor_config.json"
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):  # never silently fall back to other preprocessing
        raise CheckpointError(f"{path}: is {json_kind(data)}, not a JSON object: fix the file, or re-download "
                              "the checkpoint")
    return data


def is_full_checkpoint(ckpt: Path) -> bool:
    """Whether the checkpoint holds both towers: a config.json with a text_config, an open_clip_config.json with a
    text_cfg, or an .npz with `txt/` arrays (its member names, read without numpy). timm's hold one tower."""
    kind = checkpoint_kind(ckpt)
    try:
        if kind == "open_clip":
            data = read_json(ckpt / OPEN_CLIP_CONFIG_NAME)
            return isinstance(data, dict) and isinstance(data.get("model_cfg"), dict) \
                and isinstance(data["model_cfg"].get("text_cfg"), dict)
        if kind == "big_vision":
            with zipfile.ZipFile(ckpt) as z:
                return any(n.startswith(("txt/", "params/txt/")) for n in z.namelist())
        return kind == "transformers" and read_config(ckpt).text_config is not None
    except (CheckpointError, OSError, zipfile.BadZipFile):
        return False


def _inside(name: str) -> bool:
    """A relative path below the checkpoint folder, judged by the name alone: in the Hugging Face cache every
    file is a symlink into ../../blobs, so the resolved path is outside by design."""
    return not any(p.anchor or ".." in p.parts for p in (PurePosixPath(name), PureWindowsPath(name)))


def weight_files(ckpt: Path) -> dict[Path, list[str] | None]:
    """The safetensors files of a checkpoint folder, each with the tensor names its index puts there (None: one
    unsharded file, whose names are in its own header)."""
    if checkpoint_kind(ckpt) == "open_clip":
        return _single(ckpt, OPEN_CLIP_WEIGHTS_NAME, f"{OPEN_CLIP_WEIGHTS_NAME}: not a complete open_clip checkpoint")
    index = ckpt / WEIGHTS_INDEX_NAME
    if index.is_file():
        data = read_json(index)
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
            files.setdefault(ckpt / shard, []).append(name)
        return files
    return _single(ckpt, WEIGHTS_NAME, f"{WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}: not a complete checkpoint")


def _single(ckpt: Path, name: str, missing: str) -> dict[Path, None]:
    """One unsharded safetensors file; without it, the pickles beside it are named and refused."""
    if (ckpt / name).is_file():
        return {ckpt / name: None}
    pickles = sorted(p.name for p in ckpt.iterdir() if p.suffix in PICKLE_SUFFIXES) if ckpt.is_dir() else []
    if pickles:
        raise CheckpointError(
            f"{ckpt}: only pickle weights ({', '.join(pickles)}), which siglip never loads because unpickling "
            f"can run code: use a checkpoint with {name}"
        )
    raise CheckpointError(f"{ckpt}: no {missing}")
