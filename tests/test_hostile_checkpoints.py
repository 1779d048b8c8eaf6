"""Hostile checkpoints: each is one `Error: ...` line and exit code 2, within seconds and bounded memory.

Every case starts from a good tiny checkpoint and breaks one thing: a config.json value (zero, negative,
float, bool, string, absurd), preprocessor_config.json, the weights' dtype, the shard index. None may
end in a traceback, a hang or a huge allocation. NaN weights load, with a warning.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from siglip_cli import SiglipVisionModel
from siglip_cli.cli import app
from siglip_cli.errors import CheckpointError, SiglipWarning
from siglip_cli.weights import check_checkpoint

from conftest import SAMPLES, TINY, build_checkpoint, run_cli

CAT = SAMPLES / "cat.jpg"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good")
    build_checkpoint(path, TINY)
    return path


def _edit_json(name: str, **changes):
    def edit(ckpt: Path) -> None:
        data = json.loads((ckpt / name).read_text())
        data.update(changes)
        (ckpt / name).write_text(json.dumps(data))
    return edit


def config(**changes):
    return _edit_json("config.json", **changes)


def preprocessor(**changes):
    return _edit_json("preprocessor_config.json", **changes)


def whole(name: str, text: str):
    def edit(ckpt: Path) -> None:
        (ckpt / name).write_text(text)
    return edit


def stored_as(dtype: torch.dtype):
    def edit(ckpt: Path) -> None:
        state = load_file(ckpt / "model.safetensors")
        state["post_layernorm.weight"] = state["post_layernorm.weight"].to(dtype)
        save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    return edit


def index(weight_map=None, shard=None):
    """An index whose weight_map is the given value, or maps every tensor to shard(ckpt) (the weights moved
    there: outside the checkpoint folder)."""
    def edit(ckpt: Path) -> None:
        weights = ckpt / "model.safetensors"
        mapping = weight_map
        if shard is not None:
            target, name = shard(ckpt)
            weights.rename(target)
            mapping = {k: name for k in load_file(target)}
        (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": mapping}))
    return edit


def _outside(ckpt: Path):
    return ckpt.parent / "outside.safetensors", "../outside.safetensors"


def _absolute(ckpt: Path):
    target = ckpt.parent / "elsewhere.safetensors"
    return target, str(target)


def full_config(vision_config):
    return whole("config.json", json.dumps({"model_type": "siglip", "vision_config": vision_config}))


# case -> (edit, extra CLI arguments, fragments the one error line must hold)
CASES = {
    "heads 0": (config(num_attention_heads=0), [], ["config.json", "num_attention_heads is 0", "1 to 256"]),
    "hidden 1e9 float": (config(hidden_size=1e9), [], ["hidden_size is 1000000000.0", "1 to 8192"]),
    "hidden 1e9 int": (config(hidden_size=10 ** 9), [], ["hidden_size is 1000000000", "1 to 8192"]),
    "hidden true": (config(hidden_size=True), [], ["hidden_size is True", "an integer"]),
    "layers 1e7": (config(num_hidden_layers=10 ** 7), [], ["num_hidden_layers is 10000000", "1 to 256"]),
    "patch 0": (config(patch_size=0), [], ["patch_size is 0", "1 to"]),
    "image -5": (config(image_size=-5), [], ["image_size is -5", "1 to 2048"]),
    "patch 1 at 2048 px": (config(image_size=2048, patch_size=1), [], ["4194304 patches", "16384"]),
    "intermediate string": (config(intermediate_size="big"), [], ["intermediate_size is 'big'", "1 to 65536"]),
    "vision_config list": (full_config([1, 2]), [], ["vision_config is a list", "JSON object"]),
    "vision_config string": (full_config("big"), [], ["vision_config is a str", "JSON object"]),
    "vision_config null": (full_config(None), [], ["vision_config is null", "JSON object"]),
    "eps string": (config(layer_norm_eps="abc"), [], ["layer_norm_eps is 'abc'", "a number"]),
    "eps negative": (config(layer_norm_eps=-1e-6), [], ["layer_norm_eps is -1e-06", "a number"]),
    "eps nan": (whole("config.json", json.dumps({**TINY, "layer_norm_eps": float("nan")})), [],
                ["layer_norm_eps is nan"]),
    "channels 1": (config(num_channels=1), [], ["num_channels is 1", "3 (RGB)"]),
    "channels 4": (config(num_channels=4), [], ["num_channels is 4", "3 (RGB)"]),
    "head string": (config(vision_use_head="false"), [], ["vision_use_head is 'false'", "true or false"]),
    "act list": (config(hidden_act=["gelu"]), [], ["hidden_act ['gelu']", "fix the config"]),
    "dropout string": (config(attention_dropout="x"), [], ["attention_dropout is 'x'"]),
    "too big for memory": (config(hidden_size=8192, intermediate_size=65536, num_attention_heads=64,
                                  num_hidden_layers=256), [], ["config.json", "float32", "memory", "fix the config"]),
    "deeply nested json": (whole("config.json", "[" * 100_000 + "]" * 100_000), [], ["config.json", "JSON"]),
    "huge json": (whole("config.json", '{"pad": "' + "x" * (17 << 20) + '"}'), [], ["config.json", "MiB"]),
    "image size 1e6": (None, ["--image-size", "1000000"], ["image size 1000000", "2048"]),
    "pp not an object": (whole("preprocessor_config.json", "[1, 2]"), [],
                         ["preprocessor_config.json", "JSON object"]),
    "pp mean 2 values": (preprocessor(image_mean=[0.5, 0.5]), [],
                         ["preprocessor_config.json", "image_mean is [0.5, 0.5]", "3 numbers"]),
    "pp std 4 values": (preprocessor(image_std=[0.5] * 4), [], ["preprocessor_config.json", "image_std is"]),
    "pp mean string": (preprocessor(image_mean="0.5"), [], ["preprocessor_config.json", "image_mean is '0.5'"]),
    "pp mean nested": (preprocessor(image_mean=[[0.5]] * 3), [], ["preprocessor_config.json", "image_mean is"]),
    "pp mean bool": (preprocessor(image_mean=True), [], ["preprocessor_config.json", "image_mean is True"]),
    "pp std null": (preprocessor(image_std=None), [], ["preprocessor_config.json", "image_std is null"]),
    "pp std 0": (preprocessor(image_std=[0.5, 0, 0.5]), [],
                 ["preprocessor_config.json", "image_std is [0.5, 0, 0.5]", "each above 0"]),
    "pp std negative": (preprocessor(image_std=-0.5), [], ["preprocessor_config.json", "image_std is -0.5"]),
    "pp rescale string": (preprocessor(rescale_factor="x"), [],
                          ["preprocessor_config.json", "rescale_factor is 'x'"]),
    "pp size list": (preprocessor(size=[32, 32]), [], ["preprocessor_config.json", "size is [32, 32]"]),
    "pp size string": (preprocessor(size="big"), [], ["preprocessor_config.json", "size is 'big'"]),
    "pp size 1e6": (preprocessor(size={"height": 10 ** 6, "width": 10 ** 6}), [],
                    ["preprocessor_config.json", "size is 1000000", "2048"]),
    "pp resample list": (preprocessor(resample=[3]), [], ["preprocessor_config.json", "resample is [3]"]),
    "pp resample true": (preprocessor(resample=True), [], ["preprocessor_config.json", "resample is True"]),
    "pp do_normalize string": (preprocessor(do_normalize="no"), [],
                               ["preprocessor_config.json", "do_normalize is 'no'", "true or false"]),
    "int8 weights": (stored_as(torch.int8), [], ["post_layernorm.weight", "I8", "floating-point"]),
    "int64 weights": (stored_as(torch.int64), [], ["post_layernorm.weight", "I64"]),
    "bool weights": (stored_as(torch.bool), [], ["post_layernorm.weight", "BOOL"]),
    "weight_map list": (index(weight_map=["model.safetensors"]), [],
                        ["model.safetensors.index.json", "weight_map is a list"]),
    "weight_map null": (index(weight_map=None), [], ["model.safetensors.index.json", "weight_map is null"]),
    "weight_map string": (index(weight_map="model.safetensors"), [],
                          ["model.safetensors.index.json", "weight_map is a str"]),
    "weight_map number values": (index(weight_map={"post_layernorm.weight": 5}), [],
                                 ["model.safetensors.index.json", "'post_layernorm.weight' is in 5, not a file name"]),
    "shard outside the folder": (index(shard=_outside), [],
                                 ["model.safetensors.index.json", "'../outside.safetensors'", "outside"]),
    "shard absolute": (index(shard=_absolute), [], ["model.safetensors.index.json", "elsewhere.safetensors",
                                                    "outside"]),
}
# Read by `download-weights --verify` too (config and headers, no tensor data).
VERIFIED = [c for c in CASES if not c.startswith(("pp ", "image size", "too big"))]


def make(good: Path, tmp_path: Path, case: str) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(good, ckpt)
    edit = CASES[case][0]
    if edit is not None:
        edit(ckpt)
    return ckpt


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("case", CASES)
def test_hostile_checkpoint_is_one_error_line_in_seconds(case, good, tmp_path):
    ckpt = make(good, tmp_path, case)
    out = tmp_path / "out.npy"
    rss, start = _peak_rss(), time.monotonic()
    result = CliRunner().invoke(app, ["embed", str(CAT), "--model", str(ckpt), "-o", str(out), *CASES[case][1]])
    assert time.monotonic() - start < 10
    assert _peak_rss() - rss < 512 << 20  # the peak grows by less than 512 MiB: nothing huge was allocated
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in CASES[case][2]:
        assert fragment in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("case", VERIFIED)
def test_verify_refuses_the_same_checkpoints(case, good, tmp_path):
    # download-weights --verify reads config.json and the safetensors headers only.
    with pytest.raises(CheckpointError):
        check_checkpoint(make(good, tmp_path, case), SiglipVisionModel)


# One case of each kind through the real command (each costs a Python start-up, ~3 s here); the in-process
# test above takes every case through the same error boundary.
@pytest.mark.parametrize("case", ["layers 1e7", "pp std 0", "int8 weights", "shard outside the folder"])
def test_real_cli_gives_one_line_and_exit_2(case, good, tmp_path):
    ckpt = make(good, tmp_path, case)
    out = tmp_path / "out.npy"
    proc = run_cli("embed", str(CAT), "--model", str(ckpt), "-o", str(out), *CASES[case][1])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert CASES[case][2][-1] in proc.stderr
    assert not out.exists()


def _with_nan(ckpt: Path) -> None:
    state = load_file(ckpt / "model.safetensors")
    for name in ("post_layernorm.weight", "encoder.layers.0.mlp.fc1.bias"):
        state[name][0] = float("nan")
    state["head.probe"][0, 0, 0] = float("inf")
    save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})


def test_non_finite_weights_warn_naming_the_tensors(good, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(good, ckpt)
    _with_nan(ckpt)
    with pytest.warns(SiglipWarning, match=r"NaN or inf in 3 weight tensors: vision_model\.encoder\.layers\.0\.mlp"
                                           r"\.fc1\.bias, vision_model\.head\.probe, vision_model\.post_layernorm"):
        SiglipVisionModel.from_pretrained(str(ckpt))
    proc = run_cli("embed", str(CAT), "--model", str(ckpt), "-o", str(tmp_path / "out.npy"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Warning: NaN or inf in 3 weight tensors"), proc.stderr
