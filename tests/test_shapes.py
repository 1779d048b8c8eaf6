"""inspect-shapes: the printed and JSON shapes equal tensors captured from a real (CPU) forward pass."""

import io
import json
import re

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.cli import app
from siglip_cli.config import PRESETS, TEXT_PRESETS, SiglipConfig, SiglipTextConfig
from siglip_cli.errors import CheckpointError, UsageError
from siglip_cli.shapes import describe, render, trace_text_shapes
from siglip_cli.text_model import SiglipModel

from conftest import PATCH14, PHOTOS, TINY, TINY_TEXT, build_checkpoint


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


# --- the text tower and the scoring step (--tower text) ---

TINY_FULL = SiglipConfig(SiglipVisionConfig(**PATCH14), SiglipTextConfig(**{**TINY_TEXT, "projection_size": 48}))


def test_tiny_text_shapes_equal_a_real_forward_pass_and_the_head_maps_to_projection_size():
    """Text width 32, head to 48 (= the vision width): the embeddings are E wide, not D."""
    report = trace_text_shapes(TINY_FULL, batch_size=3, layer=1, images=5)
    shapes = {s.name: s.shape for s in report.stages}
    L = TINY_TEXT["max_position_embeddings"]
    model = SiglipModel.random_init(TINY_FULL)
    recorded: dict = {}
    ids = torch.randint(0, TINY_TEXT["vocab_size"], (3, L))
    with torch.no_grad():
        model.text_model(ids, trace=recorded, trace_layer=1)
        logits, probs = model(torch.randn(5, 3, PATCH14["image_size"], PATCH14["image_size"]), ids)
    for key, tensor in recorded.items():  # every step of layer 1, and the tower's own records
        assert shapes[key] == list(tensor.shape), key
    assert shapes["input_ids"] == [3, L] and shapes["token_embedding"] == [3, L, 32]
    assert shapes["split_heads"] == [3, L, 4, 8] and shapes["scores"] == [3, 4, L, L]
    assert shapes["last_token"] == [3, 32] and shapes["pooled"] == [3, 48]
    assert shapes["image_embeds"] == [5, 48] and shapes["text_embeds"] == [3, 48]
    for key in ("cosine", "scaled", "logits", "probabilities"):
        assert shapes[key] == [5, 3] == list(probs.shape), key
    assert [s.group for s in report.stages if s.name in ("cosine", "probabilities")] == ["scoring"] * 2
    assert shapes["encoder.layers x1"] == [3, L, 32]
    assert report.parameters["total"] == TINY_FULL.text_config.num_parameters() \
        == sum(p.numel() for p in model.text_model.parameters())
    assert report.parameters["head"] == 32 * 48 + 48


def test_a_text_layers_flops_equal_a_hand_count():
    report = trace_text_shapes(TINY_FULL, batch_size=2)
    B, L, D, F, h, Dh, E = 2, TINY_TEXT["max_position_embeddings"], 32, 37, 4, 8, 48
    layer = 2 * B * L * (4 * D * D + 2 * D * F) + 2 * (2 * B * h * L * L * Dh)  # projections, MLP; q@k, w@v
    assert sum(s.flops or 0 for s in report.stages if s.group == "encoder layer 0 (in detail)") == layer
    flops = {s.name: s.flops for s in report.stages}
    assert flops["encoder.layers x1"] == layer and flops["pooled"] == 2 * B * D * E
    assert flops["cosine"] == 2 * 2 * B * E  # two images against B texts
    assert report.total_flops == 2 * layer + 2 * B * D * E + 2 * 2 * B * E


def test_base_text_report_json_and_rendering():
    report = describe(None, None, None, tower="text", texts=["a cat", "a dog", "a rocket"])
    shapes = {s.name: s.shape for s in report.stages}
    assert shapes["input_ids"] == [3, 64] and shapes["scores"] == [3, 12, 64, 64]
    assert shapes["fc1"] == [3, 64, 3072] and shapes["encoder.layers x11"] == [3, 64, 768]
    assert shapes["last_token"] == [3, 768] and shapes["pooled"] == [3, 768]
    assert shapes["image_embeds"] == [2, 768] and shapes["probabilities"] == [2, 3]
    assert report.parameters["total"] == TEXT_PRESETS["base"].num_parameters()
    assert report.parameters["token_embedding"] == 32000 * 768
    data = json.loads(json.dumps(report.to_dict()))
    scoring = [s for s in data["stages"] if s["group"] == "scoring"]
    assert [s["name"] for s in scoring][-1] == "probabilities" and scoring[-1]["shape"] == [2, 3]
    assert data["summary"]["tower"] == "text" and data["summary"]["L"] == 64
    console = Console(file=io.StringIO(), width=80, highlight=False)
    render(report, console)
    printed = console.file.getvalue()
    words = " ".join(printed.split())  # explanations wrap at 80 columns
    assert "sigmoid" in words and "the probabilities do not sum to 1" in words and "pools the LAST position" in words
    assert "  token_and_position_embedding\n" in printed  # a long name on its own line keeps the columns
    for stage in report.stages:
        if len(stage.name) <= 24:
            assert f"  {stage.name:<24}{str(stage.shape):<20}" in printed, stage.name
    assert max(len(line) for line in printed.splitlines()) <= 80


def test_text_checkpoint_folders(tiny_ckpt, patch14_full_ckpt, tmp_path):
    with pytest.raises(CheckpointError) as e:
        describe(tiny_ckpt, None, None, tower="text")
    assert str(e.value) == (f"{tiny_ckpt}: this checkpoint has no text tower (a vision-only config.json): "
                            "--tower text needs a full SigLIP checkpoint")
    build_checkpoint(tmp_path, TINY, layout="full")
    report = describe(tmp_path, None, None, batch_size=2, tower="text")
    shapes = {s.name: s.shape for s in report.stages}
    assert shapes["input_ids"] == [2, 16] and shapes["pooled"] == [2, 32] and shapes["probabilities"] == [2, 2]
    # This fixture's towers are 48 (vision) and 32 (text) wide: its embeddings cannot be compared.
    with pytest.raises(CheckpointError, match=re.escape(f"{patch14_full_ckpt[0]}: image embeddings are 48 wide")):
        describe(patch14_full_ckpt[0], None, None, tower="text")


@pytest.mark.parametrize("kwargs, message", [
    (dict(preset="giant"), "--preset giant has no text tower preset (those with one: base, large, so400m)"),
    (dict(layer=12), "--layer 12: the text tower has layers 0..11"),
    (dict(image="cat.jpg"), "--image is for the vision tower"),
    (dict(image_size=256), "--image-size is for the vision tower"),
    (dict(batch_size=2, texts=["a", "b", "c"]), "--batch-size 2 with 3 texts"),
    (dict(batch_size=0), "--batch-size must be at least 1"),
    (dict(tower="audio"), "--tower 'audio': use one of vision, text"),
    (dict(tower="vision", texts=["a"]), "--text is for --tower text"),
])
def test_text_usage_errors(kwargs, message):
    args = {"folder": None, "preset": None, "image": None, "tower": "text", **kwargs}
    with pytest.raises(UsageError, match=re.escape(message)):
        describe(**args)


def test_scores_need_image_and_text_embeddings_of_one_width():
    bad = SiglipConfig(SiglipVisionConfig(**TINY), SiglipTextConfig(**{**TINY_TEXT, "projection_size": 48}))
    with pytest.raises(CheckpointError, match="image embeddings are 32 wide but text embeddings 48"):
        trace_text_shapes(bad)
