"""timm and open_clip SigLIP checkpoints: built offline with the real libraries (random weights), loaded strictly,
and equal to what those libraries compute, and to transformers' from the same weights converted."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.checkpoint import checkpoint_kind, is_full_checkpoint
from siglip_cli.config import SiglipTextConfig
from siglip_cli.errors import CheckpointError, UsageError
from siglip_cli.layouts import Lazy, for_model
from siglip_cli.preprocess import Preprocessing, checkpoint_preprocessing
from siglip_cli.text_model import SiglipModel, SiglipTextModel
from siglip_cli.weights import check_checkpoint, expected_shapes, read_any_config, read_checkpoint

from conftest import TINY, build_checkpoint

timm = pytest.importorskip("timm")

ARCH = "vit_base_patch16_siglip_224"
# timm's names for conftest's TINY and PATCH14 sizes (mlp_ratio 37/32 and 37/48: MLP width 37, not 4 * D).
TIMM_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=37 / 32)
TIMM_PATCH14 = dict(img_size=45, patch_size=14, embed_dim=48, depth=2, num_heads=3, mlp_ratio=37 / 48)
SIGLIP_PP = {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}


def timm_model(arch: str = ARCH, seed: int = 0, **sizes):
    """A timm SigLIP ViT with tanh-GELU (the checkpoints' activation), its weights all randomised: timm's init
    leaves LayerNorms at 1 and biases at 0, which would hide a swapped norm or bias."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0, act_layer="gelu_tanh", **(sizes or TIMM_TINY))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save_timm(model, folder: Path, model_args: bool = True) -> Path:
    """As timm's push_to_hub saves: model.safetensors and a config.json with architecture, pretrained_cfg and
    (unless dropped) model_args."""
    from timm.models import save_for_hf

    save_for_hf(model, folder, safe_serialization=True)
    if not model_args:
        config = json.loads((folder / "config.json").read_text())
        del config["model_args"]
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def timm_outputs(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        features = model.forward_features(x)
        return features, model.forward_head(features, pre_logits=True)


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("sizes", [TIMM_TINY, TIMM_PATCH14], ids=["tiny", "patch14"])
def test_timm_checkpoint_equals_timm_and_transformers(tmp_path, sizes):
    import transformers

    ref = timm_model(**sizes)
    folder = save_timm(ref, tmp_path / "timm")
    assert checkpoint_kind(folder) == "timm" and not is_full_checkpoint(folder)
    model = SiglipVisionModel.from_pretrained(str(folder))
    side = sizes["img_size"]
    assert model.config == SiglipVisionConfig(hidden_size=sizes["embed_dim"], intermediate_size=37,
                                              num_attention_heads=sizes["num_heads"], num_hidden_layers=2,
                                              image_size=side, patch_size=sizes["patch_size"])
    assert model.preprocessor_config == {"do_resize": True, "size": {"height": side, "width": side}, "resample": 3,
                                         "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                                         "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    assert checkpoint_preprocessing(model.preprocessor_config, None) == Preprocessing(
        "checkpoint", side, "bicubic", 1 / 255, (0.5,) * 3, (0.5,) * 3)  # SigLIP's: what transformers' processor does
    x = torch.randn(2, 3, side, side)
    features, pooled = timm_outputs(ref, x)
    with torch.no_grad():
        ours = model(x)
        torch.testing.assert_close(ours, features, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.embed(x, "map"), pooled, atol=1e-5, rtol=0)
    # The same weights in transformers' layout, loaded by transformers itself.
    hf = tmp_path / "hf"
    transformers.SiglipVisionConfig(hidden_size=sizes["embed_dim"], intermediate_size=37,
                                    num_attention_heads=sizes["num_heads"], num_hidden_layers=2, image_size=side,
                                    patch_size=sizes["patch_size"]).save_pretrained(hf)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, hf / "model.safetensors",
              metadata={"format": "pt"})
    transformers.logging.set_verbosity_error()
    hf_model, info = transformers.SiglipVisionModel.from_pretrained(hf, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        out = hf_model.eval()(pixel_values=x)
    torch.testing.assert_close(out.last_hidden_state, features, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pooler_output, pooled, atol=1e-5, rtol=0)


def test_timm_gap_variant_has_no_head_and_pools_by_the_mean(tmp_path):
    ref = timm_model("vit_base_patch16_siglip_gap_224")
    assert ref.attn_pool is None
    model = SiglipVisionModel.from_pretrained(str(save_timm(ref, tmp_path)))
    assert not model.has_head and not model.config.vision_use_head
    x = torch.randn(2, 3, 32, 32)
    features, pooled = timm_outputs(ref, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), features, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.embed(x, "mean"), pooled, atol=1e-5, rtol=0)
    with pytest.raises(UsageError, match="no attention-pooling head"):
        model.embed(x, "map")


def test_heads_come_from_the_architecture_name_when_model_args_leave_them_out(tmp_path):
    """vit_base_patch16_siglip_224 has 12 heads: here at width 48 (head dim 4), the other sizes in model_args.
    (Every real size, name alone, is checked on the meta device below: a 224 px forward at 86M parameters takes
    seconds on a CPU.)"""
    sizes = dict(TIMM_TINY, embed_dim=48, num_heads=12)
    ref = timm_model(**sizes)
    folder = save_timm(ref, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["model_args"]["num_heads"]
    (folder / "config.json").write_text(json.dumps(config))
    model = SiglipVisionModel.from_pretrained(str(folder))
    assert model.config.num_attention_heads == 12
    x = torch.randn(2, 3, 32, 32)
    features, pooled = timm_outputs(ref, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), features, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.embed(x, "map"), pooled, atol=1e-5, rtol=0)
    config["model_args"]["num_heads"] = 6  # a wrong head count gives other numbers: the test can fail
    (folder / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        assert not torch.allclose(SiglipVisionModel.from_pretrained(str(folder)).embed(x, "map"), pooled, atol=1e-3)


# One of each: size, patch, resolution (so400m at 384 with patch 14: a 27 x 27 grid and 6 unused pixels), _gap_.
REAL_ARCHS = ["vit_base_patch16_siglip_224", "vit_base_patch32_siglip_256", "vit_large_patch16_siglip_384",
              "vit_so400m_patch14_siglip_384", "vit_so400m_patch16_siglip_256", "vit_giantopt_patch16_siglip_256",
              "vit_so400m_patch14_siglip_gap_224"]
PRESET = {"base": dict(), "large": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                        num_hidden_layers=24),
          "so400m": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27),
          "giantopt": dict(hidden_size=1536, intermediate_size=6144, num_attention_heads=16, num_hidden_layers=40)}


def meta_tensors(state: dict[str, torch.Tensor]) -> dict[str, Lazy]:
    def unread():
        raise AssertionError("a tensor was read")
    return {k: Lazy(lambda v=v: torch.empty(v.shape, device="meta"), unread) for k, v in state.items()}


@pytest.mark.parametrize("arch", REAL_ARCHS)
def test_every_timm_siglip_size_gives_transformers_config_and_shapes(tmp_path, arch):
    from siglip_cli.timm_layout import TIMM, config_from

    with torch.device("meta"):
        ref = timm.create_model(arch, pretrained=False, num_classes=0)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 0, "pretrained_cfg": {
        "input_size": list(ref.pretrained_cfg["input_size"]), "mean": [0.5] * 3, "std": [0.5] * 3}}))
    tensors = meta_tensors(ref.state_dict())
    config, pp = config_from("timm", tmp_path, tensors)
    size, patch, gap, _ = re.fullmatch(r"vit_(\w+?)_patch(\d+)_siglip(_gap)?_(\d+)", arch).groups()
    side = ref.pretrained_cfg["input_size"][-1]
    assert config.vision_config == SiglipVisionConfig(**PRESET[size], image_size=side, patch_size=int(patch),
                                                      vision_use_head=gap is None)
    assert config.vision_config.num_attention_heads == ref.blocks[0].attn.num_heads
    assert pp["size"] == {"height": side, "width": side}
    expected = expected_shapes(SiglipVisionModel, config.vision_config)
    state = for_model(TIMM.convert(tensors, config), expected)
    assert {k: v.shape for k, v in state.items()} == expected


# ---- open_clip ----------------------------------------------------------------------------------------------------

def open_clip_folder(folder: Path, state: dict[str, torch.Tensor], model_cfg: dict, pp: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": pp or SIGLIP_PP}))
    return folder


def vision_cfg(**kwargs) -> dict:
    """open_clip's SigLIP vision_cfg; timm_model_kwargs (open_clip's newer key) carries timm sizes."""
    return {"image_size": 32, "timm_model_name": ARCH, "timm_model_pretrained": False, "timm_pool": "map",
            "timm_proj": "none", **kwargs}


def test_open_clip_vision_tower_equals_timm(tmp_path):
    ref = timm_model()
    state = {f"visual.trunk.{k}": v for k, v in ref.state_dict().items()}
    folder = open_clip_folder(tmp_path, state, {"embed_dim": 32, "vision_cfg": vision_cfg(timm_model_kwargs=TIMM_TINY)},
                              pp={"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28], "interpolation": "bilinear"})
    assert checkpoint_kind(folder) == "open_clip"
    model = SiglipVisionModel.from_pretrained(str(folder))
    assert model.config == SiglipVisionConfig(**TINY)
    assert (model.preprocessor_config["image_mean"], model.preprocessor_config["image_std"],
            model.preprocessor_config["resample"]) == ([0.48, 0.46, 0.41], [0.27, 0.26, 0.28], 2)
    x = torch.randn(2, 3, 32, 32)
    features, pooled = timm_outputs(ref, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), features, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.embed(x, "map"), pooled, atol=1e-5, rtol=0)
    with pytest.raises(CheckpointError, match=r"open_clip text tower is not described \(no text_cfg\)"):
        SiglipModel.from_pretrained(str(folder))


TEXT_CFG = {"context_length": 16, "vocab_size": 99, "width": 24, "heads": 4, "layers": 2, "mlp_ratio": 1.625,
            "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
            "act_kwargs": {"approximate": "tanh"}}


@pytest.fixture
def open_clip_model(monkeypatch):
    """A real open_clip SigLIP model (CustomTextCLIP, as ViT-B-16-SigLIP.json builds it) at tiny sizes: open_clip
    3.x passes timm no sizes, so its timm.create_model call gets them here. Text width 24 projects to 32."""
    open_clip = pytest.importorskip("open_clip")
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: real(name, **{**kw, **TIMM_TINY,
                                                                                "act_layer": "gelu_tanh"}))
    cfg = {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True, "vision_cfg": vision_cfg(),
           "text_cfg": TEXT_CFG}
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval(), {**cfg, "vision_cfg": vision_cfg(timm_model_kwargs=TIMM_TINY)}


def test_open_clip_siglip_model_loads_both_towers_with_open_clips_numbers(tmp_path, open_clip_model):
    from open_clip.model import set_model_preprocess_cfg
    from open_clip.push_to_hf_hub import save_config_for_hf

    ref, cfg = open_clip_model
    folder = open_clip_folder(tmp_path, ref.state_dict(), cfg)
    set_model_preprocess_cfg(ref, {**SIGLIP_PP, "size": 32})
    save_config_for_hf(ref, folder / "open_clip_config.json", cfg)  # open_clip's own file
    assert is_full_checkpoint(folder)
    model = SiglipModel.from_pretrained(str(folder))
    assert model.config.text_config == SiglipTextConfig(vocab_size=99, hidden_size=24, intermediate_size=39,
                                                        num_attention_heads=4, num_hidden_layers=2,
                                                        max_position_embeddings=16, projection_size=32)
    assert read_any_config(folder) == model.config
    x, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 99, (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(model.text_embeds(ids), ref.encode_text(ids), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.image_embeds(x), ref.encode_image(x), atol=1e-5, rtol=0)
        logits, _ = model(x, ids)
        torch.testing.assert_close(logits, ref.get_logits(x, ids)[0], atol=1e-4, rtol=0)
    assert model.logit_bias.item() != 0  # open_clip's, not our zeros
    text = SiglipTextModel.from_pretrained(str(folder))
    with torch.no_grad():
        torch.testing.assert_close(text(ids), ref.encode_text(ids), atol=1e-5, rtol=0)


def test_open_clip_text_tower_a_siglip_model_cannot_compute_is_refused_but_the_image_tower_loads(
        tmp_path, open_clip_model):
    ref, cfg = open_clip_model
    folder = open_clip_folder(tmp_path, ref.state_dict(), {**cfg, "text_cfg": {**TEXT_CFG, "pool_type": "argmax"}})
    with pytest.raises(CheckpointError, match=r"open_clip_config.json: the open_clip text tower pools at 'argmax', "
                                              r"SigLIP at the last position.*SiglipVisionModel"):
        SiglipModel.from_pretrained(str(folder))
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(SiglipVisionModel.from_pretrained(str(folder)).embed(x, "map"),
                                   ref.encode_image(x), atol=1e-5, rtol=0)


def test_real_open_clip_siglip_configs_give_our_sizes(tmp_path, monkeypatch):
    """open_clip's own ViT-*-SigLIP* model configs, built on the meta device: every tensor finds its place."""
    open_clip = pytest.importorskip("open_clip")
    from siglip_cli.timm_layout import OPEN_CLIP, config_from

    for name in ("ViT-B-16-SigLIP", "ViT-SO400M-14-SigLIP-384", "ViT-gopt-16-SigLIP2-256"):
        cfg = open_clip.get_model_config(name)
        with torch.device("meta"):
            ref = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"})
        (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
        tensors = meta_tensors(ref.state_dict())
        config, _ = config_from("open_clip", tmp_path, tensors)
        assert config.text_config.projection_size == config.vision_config.hidden_size == cfg["embed_dim"]
        assert config.text_config.num_attention_heads == cfg["text_cfg"]["heads"]
        with torch.device("meta"):
            expected = expected_shapes(SiglipModel, config)
        state = for_model(OPEN_CLIP.convert(tensors, config), expected)
        assert {k: v.shape for k, v in state.items()} == expected, name


# ---- hostile and mismatched files ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory) -> Path:
    return save_timm(timm_model(), tmp_path_factory.mktemp("timm"))


def copy_of(folder: Path, tmp_path: Path) -> Path:
    shutil.copytree(folder, tmp_path / "ckpt")
    return tmp_path / "ckpt"


def drop_tensors(folder: Path, prefix: str, weights: str = "model.safetensors") -> None:
    state = load_file(folder / weights)
    save_file({k: v for k, v in state.items() if not k.startswith(prefix)}, folder / weights)


def one_line_error(folder: Path, cls=SiglipVisionModel) -> str:
    with pytest.raises(CheckpointError) as e:
        cls.from_pretrained(str(folder))
    with pytest.raises(CheckpointError) as again:  # download-weights --verify: headers only
        check_checkpoint(folder, cls)
    assert str(again.value) == str(e.value)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_missing_block_is_named(timm_folder, tmp_path):
    ckpt = copy_of(timm_folder, tmp_path)
    drop_tensors(ckpt, "blocks.0.")
    assert one_line_error(ckpt).endswith(
        "config.json: missing keys: vision_model.encoder.layers.0.layer_norm1.bias, vision_model.encoder.layers.0."
        "layer_norm1.weight, vision_model.encoder.layers.0.layer_norm2.bias, vision_model.encoder.layers.0."
        "layer_norm2.weight, vision_model.encoder.layers.0.mlp.fc1.bias, vision_model.encoder.layers.0.mlp.fc1.weight"
        " (+10 more)")


def test_a_missing_last_block_disagrees_with_the_config(timm_folder, tmp_path):
    ckpt = copy_of(timm_folder, tmp_path)
    drop_tensors(ckpt, "blocks.1.")
    assert "config.json: depth is 2 but the weights hold 1: the config does not fit the weights" \
        in one_line_error(ckpt)


@pytest.mark.parametrize("changes, message", [
    ({"architecture": "resnet50"}, r"timm architecture 'resnet50' is not a SigLIP ViT"),
    ({"architecture": ["vit"]}, r"timm architecture \['vit'\] is not a SigLIP ViT"),
    ({"model_args": {**TIMM_TINY, "num_heads": 5}}, r"config.json: hidden_size 32 is not divisible by "
                                                    r"num_attention_heads 5"),
    ({"model_args": {**TIMM_TINY, "embed_dim": 64}}, r"config.json: embed_dim is 64 but the weights hold 32"),
    ({"model_args": {**TIMM_TINY, "img_size": 64}}, r"config.json: image size 64 at patch 8 is a 8 x 8 grid, but "
                                                    r"pos_embed holds 4 x 4"),
    ({"model_args": {k: v for k, v in TIMM_TINY.items() if k != "img_size"},
      "pretrained_cfg": {"input_size": [3, 48, 32]}}, r"config.json: the image size is \[3, 48, 32\]: expected a "
                                                      r"square image size"),
    ({"model_args": "big"}, r"config.json: model_args is a str, not a JSON object"),
    ({"pretrained_cfg": {"mean": [0.5, 0.5]}}, r"config.json: mean is \[0.5, 0.5\]: expected 3 numbers"),
    ({"pretrained_cfg": {"interpolation": "magic"}}, r"config.json: interpolation is 'magic'"),
    ({"pretrained_cfg": {"interpolation": ["bicubic"]}}, r"config.json: interpolation is \['bicubic'\]"),
    ({"pretrained_cfg": [1]}, r"config.json: pretrained_cfg is a list, not a JSON object"),
    ({"model_args": {**TIMM_TINY, "img_size": [[32], [32]]}}, r"config.json: the image size is \[\[32\], \[32\]\]"),
    ({"architecture": "vit_base_patch" + "1" * 5000 + "_siglip_224"}, r"is not a SigLIP ViT"),
])
def test_timm_configs_that_do_not_fit_are_one_line(timm_folder, tmp_path, changes, message):
    ckpt = copy_of(timm_folder, tmp_path)
    edit_json(ckpt / "config.json", **changes)
    assert re.search(message, one_line_error(ckpt))


def _class_token(state):
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, 32), state["pos_embed"]], 1)
    state["cls_token"] = torch.zeros(1, 1, 32)


@pytest.mark.parametrize("edit, message", [
    (_class_token, r"pos_embed holds 17 positions, not a square grid of patches \(a class token\?\): not a SigLIP ViT"),
    (lambda s: s.update({"patch_embed.proj.weight": torch.zeros(32, 192)}),
     r"tensor patch_embed.proj.weight has shape \[32, 192\], not 4 dimensions"),
    (lambda s: s.update({"head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}),
     r"weights do not fit config.json: unexpected keys: head.bias, head.weight$"),  # a classifier: not SigLIP's
    (lambda s: s.update({f"blocks.{'9' * 5000}.norm1.weight": torch.zeros(32)}),
     r"unexpected keys: vision_model.encoder.layers\.9{172}\.\.\.$"),  # a name is cut short, not 5000 digits
    (lambda s: s.pop("attn_pool.kv.weight"), r"missing keys: vision_model.head.attention.in_proj_weight; "
                                             r"unexpected keys: attn_pool.q.weight$"),
])
def test_timm_weights_that_do_not_fit_are_one_line(timm_folder, tmp_path, edit, message):
    ckpt = copy_of(timm_folder, tmp_path)
    state = load_file(ckpt / "model.safetensors")
    edit(state)
    save_file(state, ckpt / "model.safetensors")
    assert re.search(message, one_line_error(ckpt))


@pytest.mark.parametrize("model_cfg, message", [
    ([], r"model_cfg is a list, not a JSON object"),
    ({"vision_cfg": {"image_size": 32}}, r"the vision tower is not a timm model \(no vision_cfg.timm_model_name\)"),
    ({"vision_cfg": vision_cfg(timm_model_name="vit_base_patch16_clip_224")},
     r"timm architecture 'vit_base_patch16_clip_224' is not a SigLIP ViT"),
    ({"vision_cfg": vision_cfg(timm_model_kwargs=TIMM_TINY, image_size=[32, 48])},
     r"open_clip_config.json: the image size is \[32, 48\]: expected a square image size"),
    ({"vision_cfg": vision_cfg(timm_model_kwargs=TIMM_TINY), "text_cfg": {**TEXT_CFG, "heads": 5}},
     r"open_clip_config.json: hidden_size 24 is not divisible by num_attention_heads 5"),
    ({"vision_cfg": vision_cfg(timm_model_kwargs=TIMM_TINY), "text_cfg": {**TEXT_CFG, "layers": 3}},
     r"open_clip_config.json: layers is 3 but the weights hold 2"),
])
def test_open_clip_configs_that_do_not_fit_are_one_line(open_clip_model, tmp_path, model_cfg, message):
    ref, _ = open_clip_model
    folder = open_clip_folder(tmp_path, ref.state_dict(), model_cfg)
    assert re.search(message, one_line_error(folder, SiglipModel))


def test_a_timm_config_beside_transformers_weights_is_refused(tmp_path):
    build_checkpoint(tmp_path, TINY)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": ARCH, "num_classes": 0}))
    assert one_line_error(tmp_path).endswith("model.safetensors: holds no timm ViT tensors (e.g. "
                                             "patch_embed.proj.weight) although the config says so: re-download "
                                             "the checkpoint")


def test_open_clip_pickles_alone_are_refused(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": vision_cfg()}}))
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"not unpickled")
    assert checkpoint_kind(tmp_path) == "open_clip"
    assert one_line_error(tmp_path).endswith("only pickle weights (open_clip_pytorch_model.bin), which siglip never "
                                             "loads because unpickling can run code: use a checkpoint with "
                                             "open_clip_model.safetensors")


def test_a_timm_checkpoint_has_no_text_tower(timm_folder):
    message = one_line_error(timm_folder, SiglipModel)
    assert message.endswith("a timm checkpoint holds the image tower only: use a full SigLIP checkpoint "
                            "(transformers, open_clip or big_vision) for text")


def test_checkpoint_kinds_and_fingerprints(timm_folder, tmp_path):
    assert checkpoint_kind(tmp_path / "model.npz") == "big_vision"
    build_checkpoint(tmp_path / "hf", TINY)
    assert checkpoint_kind(tmp_path / "hf") == "transformers"
    assert read_any_config(tmp_path / "hf").vision_config == SiglipVisionConfig(**TINY)
    assert read_any_config(timm_folder).vision_config == SiglipVisionConfig(**TINY)
    with contextlib.ExitStack() as stack:
        assert [read_checkpoint(f, stack)[3].name for f in (tmp_path / "hf", timm_folder)] == ["transformers", "timm"]
    for key, full in (("params/img/embedding/kernel", False), ("params/txt/Embed_0/embedding", True)):
        np.savez(tmp_path / "bv.npz", **{key: np.zeros(2, np.float32)})
        assert is_full_checkpoint(tmp_path / "bv.npz") is full
    # The fingerprint: the same weights give the same id anywhere and in any layout; other weights another.
    print_ = SiglipVisionModel.from_pretrained(str(timm_folder)).fingerprint
    assert SiglipVisionModel.from_pretrained(str(copy_of(timm_folder, tmp_path))).fingerprint == print_
    other = save_timm(timm_model(seed=1), tmp_path / "other")
    assert SiglipVisionModel.from_pretrained(str(other)).fingerprint != print_ and len(print_) == 16
    from siglip_cli.convert import convert

    convert(timm_folder, tmp_path / "converted")  # the transformers layout of the same weights
    assert SiglipVisionModel.from_pretrained(str(tmp_path / "converted")).fingerprint == print_


def test_a_config_file_alone_is_checked_before_the_weights_come(tmp_path):
    from siglip_cli.timm_layout import TIMM_SIZES, read_settings

    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 0}))
    assert checkpoint_kind(tmp_path) == "timm"
    with pytest.raises(CheckpointError, match=r"config.json: timm architecture 'resnet50' is not a SigLIP ViT"):
        read_settings("timm", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_so400m_patch14_siglip_384"}))
    file, args, size, _, _ = read_settings("timm", tmp_path)
    assert (args["num_heads"], args["embed_dim"], args["depth"], size) == (16, 1152, 27, None)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": vision_cfg()}}))
    assert checkpoint_kind(tmp_path) == "timm"  # open_clip needs its weights beside its config, or no config.json
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"")
    assert checkpoint_kind(tmp_path) == "open_clip"
    assert read_settings("open_clip", tmp_path)[1:3] == ({**TIMM_SIZES["base"], "patch_size": 16, "img_size": 224},
                                                         32)
