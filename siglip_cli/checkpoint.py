"""A checkpoint folder's files, read without torch: which files hold the weights, and the JSON configs.

A Hugging Face checkpoint is a directory with `config.json`, `model.safetensors` (or shards plus
`model.safetensors.index.json`) and usually `preprocessor_config.json`. Only safetensors are ever read:
pickles (*.bin, *.pt, *.pth) can run code when loaded, so they are never opened. Every file here is data
from the internet, so each value is checked before anything is built from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from .config import SiglipConfig, json_kind, shown
from .errors import CheckpointError
from .tokenizer import TOKENIZER_FILES

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# What the tool needs from a repository: configs, safetensors weights and the SentencePiece tokenizer (SigLIP's
# spiece.model, SigLIP 2's Gemma tokenizer.model, with the token names of their configs); everything else
# (tokenizer.json, TF/Flax/ONNX, pickles) is left alone.
# A cached copy is complete with MODEL_FILES; the tokenizer is fetched when a text command first needs it.
MODEL_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "model-*.safetensors",
               WEIGHTS_INDEX_NAME]
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
    """Whether config.json describes both towers (the weights then hold the text tower too)."""
    try:
        return read_config(ckpt).text_config is not None
    except CheckpointError:
        return False


def _inside(name: str) -> bool:
    """A relative path below the checkpoint folder, judged by the name alone: in the Hugging Face cache every
    file is a symlink into ../../blobs, so the resolved path is outside by design."""
    return not any(p.anchor or ".." in p.parts for p in (PurePosixPath(name), PureWindowsPath(name)))


def weight_files(ckpt: Path) -> dict[Path, list[str] | None]:
    """The safetensors files of a checkpoint, each with the tensor names its index puts there (None: one
    unsharded file, whose names are in its own header)."""
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


def fingerprint(ckpt: Path) -> str:
    """A short id of the weights, recorded with every embedding so search can tell models apart: the same
    checkpoint gives the same id wherever it lies (the cache, a copy); a fine-tune gives another.

    sha256 over config.json and, per weight file, its size and first and last 64 KiB (the header, and
    tensor data at both ends): cheap at any size, and a different training run differs there.
    """
    h = hashlib.sha256((ckpt / "config.json").read_bytes())
    for path in sorted(weight_files(ckpt)):
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(1 << 16)
            f.seek(max(0, size - (1 << 16)))
            h.update(f"{path.name}:{size}".encode() + head + f.read())
    return h.hexdigest()[:16]
