"""inspect-shapes: the printed and JSON shapes equal tensors captured from a real (CPU) forward pass."""

import json

import pytest
import torch
from typer.testing import CliRunner

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.cli import app
from siglip_cli.config import PRESETS

from conftest import PHOTOS, TINY, build_checkpoint


def captured(config: SiglipVisionConfig, batch: int, size: int, layer: int) -> dict[str, list[int]]:
    """Shapes of the real modules' outputs, by forward hooks on a CPU model with real (random) weights."""
    model = SiglipVisionModel.random_init(config)
    vm = model.vision_model
    got: dict[str, list[int]] = {}

    def hook(name):
        return lambda module, args, out: got.__setitem__(name, list((out[0] if isinstance(out, tuple) else out).shape))

    L = vm.encoder.layers[layer]
    for name, module in {"patch_embedding": vm.embeddings.patch_embedding, "embeddings": vm.embeddings,
                         "layer_norm1": L.layer_norm1, "q_states": L.self_attn.q_proj, "k_states": L.self_attn.k_proj,
                         "v_states": L.self_attn.v_proj, "out_proj": L.self_attn.out_proj, "self_attn": L.self_attn,
                         "layer_norm2": L.layer_norm2, "fc1": L.mlp.fc1, "gelu": L.mlp.activation_fn, "fc2": L.mlp.fc2,
                         "layer": L, "last_layer": vm.encoder.layers[-1], "post_layernorm": vm.post_layernorm,
                         "head.attention": vm.head.attention, "head": vm.head}.items():
        module.register_forward_hook(hook(name))
    with torch.no_grad():
        patches = model(torch.randn(batch, 3, size, size))
        model.pool(patches, "map")
        probe = vm.head.probe.expand(batch, -1, -1)
        weights = vm.head.attention(probe, patches, patches, need_weights=True, average_attn_weights=False)[1]
    got["head_weights"] = list(weights.shape)
    return got


CASES = [("tiny", SiglipVisionConfig(**TINY), ["--model"], 2, 1),
         ("so400m", PRESETS["so400m"], ["--preset", "so400m"], 1, 0)]


@pytest.mark.parametrize("name, config, how, batch, layer", CASES, ids=[c[0] for c in CASES])
def test_json_and_printed_shapes_equal_a_real_forward_pass(name, config, how, batch, layer, tmp_path):
    if how == ["--model"]:
        build_checkpoint(tmp_path, TINY)
        how = ["--model", str(tmp_path)]
    args = ["inspect-shapes", *how, "--batch-size", str(batch), "--layer", str(layer)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    shapes = {s["name"]: s["shape"] for s in report["stages"]}
    real = captured(config, batch, config.image_size, layer)
    assert shapes["patch_embedding"] == real["patch_embedding"]
    assert shapes["add_position_embedding"] == real["embeddings"]
    for key in ("layer_norm1", "q_states", "k_states", "v_states", "out_proj", "layer_norm2", "fc1", "gelu", "fc2",
                "post_layernorm"):
        assert shapes[key] == real[key], key
    assert shapes["residual_add2"] == real["layer"]
    assert shapes[next(k for k in shapes if k.startswith("encoder.layers x"))] == real["last_layer"]
    assert shapes["head.attention"] == real["head.attention"]
    assert shapes["head.attention_weights"] == real["head_weights"]
    assert shapes["head.pooled"] == real["head"]
    # Every step inside attention, against the same steps recorded by a real CPU forward with weights.
    model = SiglipVisionModel.random_init(config)
    recorded: dict = {}
    with torch.no_grad():
        model.vision_model(torch.randn(batch, 3, config.image_size, config.image_size), trace=recorded,
                           trace_layer=layer)
    for key, tensor in recorded.items():
        assert shapes[key] == list(tensor.shape), key
    D, h = config.hidden_size, config.num_attention_heads
    assert [s["name"] for s in report["stages"]][:4] == ["input image", "preprocessed pixels", "patch_embedding",
                                                         "flatten"]
    assert report["summary"]["scale"] == pytest.approx(1 / (D // h) ** 0.5)
    assert report["parameters"]["total"] == sum(p.numel() for p in SiglipVisionModel(config).parameters()) \
        if name == "tiny" else report["parameters"]["total"] == 428_225_600
    printed = CliRunner().invoke(app, args, env={"COLUMNS": "80"}).output
    for stage in report["stages"]:
        assert f"{stage['name'][:24]:<24}{str(stage['shape']):<20}" in printed, stage["name"]
    assert max(len(line) for line in printed.splitlines()) <= 80


def test_base_model_flops_and_default_options():
    result = CliRunner().invoke(app, ["inspect-shapes", "--json"])
    report = json.loads(result.output)
    shapes = {s["name"]: s["shape"] for s in report["stages"]}
    assert shapes["split_heads"] == [1, 196, 12, 64] and shapes["transpose_heads"] == [1, 12, 196, 64]
    assert shapes["scores"] == [1, 12, 196, 196] and shapes["head.pooled"] == [1, 768]
    assert 34e9 < report["total_flops"] < 36e9  # ~35 GFLOP per image, as the speed issue says
    assert report["parameters"]["total"] == 92_884_224


def test_a_real_image_shows_its_own_size(tmp_path):
    result = CliRunner().invoke(app, ["inspect-shapes", "--image", str(PHOTOS[0]), "--json"])
    stages = json.loads(result.output)["stages"]
    assert stages[0]["shape"] == [255, 384, 3] and stages[1]["shape"] == [1, 3, 224, 224]


def test_bad_layer_and_conflicting_options():
    bad = CliRunner().invoke(app, ["inspect-shapes", "--layer", "12"])
    assert bad.exit_code == 2 and "Error: --layer 12: this model has layers 0..11" in bad.output
    both = CliRunner().invoke(app, ["inspect-shapes", "--preset", "large", "--model", "x/y"])
    assert both.exit_code == 2 and "use either --model or --preset" in both.output
