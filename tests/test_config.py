import pytest

import siglip_cli.config as config_module
from siglip_cli.config import (MAX_IMAGE_SIZE, PRESETS, SiglipVisionConfig, check_fits_in_memory,
                               check_image_size)
from siglip_cli.errors import CheckpointError, UsageError

from conftest import PATCH14, TINY


def test_defaults_are_siglip_base_patch16_224():
    c = SiglipVisionConfig()
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_hidden_layers,
            c.image_size, c.patch_size) == (768, 3072, 12, 12, 224, 16)
    assert (c.layer_norm_eps, c.hidden_act, c.vision_use_head, c.num_channels) == (1e-6, "gelu_pytorch_tanh", True, 3)
    assert c.head_dim == 64 and c.num_patches == 196


def test_full_config_reads_nested_vision_config_with_defaults():
    # The hub's google/siglip-so400m-patch14-384 config.json lists only what differs from the defaults.
    full = {"model_type": "siglip", "architectures": ["SiglipModel"], "text_config": {"hidden_size": 1152},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384,
                              "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
                              "patch_size": 14}}
    c = SiglipVisionConfig.from_hf_dict(full)
    assert c == PRESETS["so400m"]
    assert c.head_dim == 72 and c.grid_size == 27 and c.num_patches == 729


def test_vision_only_config_ignores_unrelated_keys():
    c = SiglipVisionConfig.from_hf_dict({"model_type": "siglip_vision_model", "hidden_size": 48,
                                         "num_attention_heads": 3, "torch_dtype": "float32",
                                         "vision_use_head": False, "transformers_version": "5.0"})
    assert (c.hidden_size, c.head_dim, c.vision_use_head, c.num_hidden_layers) == (48, 16, False, 12)


@pytest.mark.parametrize("cfg", [{"model_type": "siglip2", "vision_config": {}},
                                 {"model_type": "siglip2_vision_model"}])
def test_naflex_siglip2_is_refused_clearly(cfg):
    with pytest.raises(CheckpointError, match="NaFlex"):
        SiglipVisionConfig.from_hf_dict(cfg)


def test_other_architectures_are_refused():
    with pytest.raises(CheckpointError, match="unsupported architecture model_type='clip'"):
        SiglipVisionConfig.from_hf_dict({"model_type": "clip"})


def test_bad_config_values_are_named():
    with pytest.raises(CheckpointError, match="not divisible by num_attention_heads 5"):
        SiglipVisionConfig(hidden_size=32, num_attention_heads=5)
    with pytest.raises(CheckpointError, match="unsupported hidden_act 'relu'"):
        SiglipVisionConfig(hidden_act="relu")


def test_image_size_must_be_a_patch_multiple_except_the_native_size():
    base, so400m = SiglipVisionConfig(), PRESETS["so400m"]
    check_image_size(384, base)
    check_image_size(384, so400m)  # native, 27 patches of 14 px (6 px unused), as the checkpoint was trained
    check_image_size(448, so400m)
    with pytest.raises(UsageError, match="image size 230 is not a multiple of the patch size 16: use e.g. 224 or 240"):
        check_image_size(230, base)
    with pytest.raises(UsageError, match="not a multiple"):
        check_image_size(0, base)


# Each bound is allowed, one past it is refused, as are the types JSON can hold that are not the field's.
LIMITS = [("hidden_size", 8192, 8193), ("intermediate_size", 65536, 65537), ("num_attention_heads", 256, 257),
          ("num_hidden_layers", 256, 257), ("image_size", MAX_IMAGE_SIZE, MAX_IMAGE_SIZE + 1)]


@pytest.mark.parametrize("name, highest, over", LIMITS)
def test_sizes_are_bounded_integers(name, highest, over):
    small = dict(hidden_size=256, intermediate_size=37, num_attention_heads=1, num_hidden_layers=1,
                 image_size=MAX_IMAGE_SIZE, patch_size=16)
    assert getattr(SiglipVisionConfig(**{**small, name: highest}), name) == highest
    for bad in (over, 0, -1, 32.0, True, "32", None, [32]):
        with pytest.raises(CheckpointError, match=rf"^{name} is .*: expected an integer from 1 to {highest}: "
                                                  "fix the config$"):
            SiglipVisionConfig(**{**small, name: bad})


def test_patch_size_and_patch_count_are_bounded():
    assert SiglipVisionConfig(**{**TINY, "patch_size": 32}).num_patches == 1
    with pytest.raises(CheckpointError, match=r"patch_size is 33: expected an integer from 1 to 32 \(the image_size\)"):
        SiglipVisionConfig(**{**TINY, "patch_size": 33})
    assert SiglipVisionConfig(**{**TINY, "image_size": 128, "patch_size": 1}).num_patches == 16384
    with pytest.raises(CheckpointError, match="image_size 129 with patch_size 1 makes 16641 patches, more than 16384"):
        SiglipVisionConfig(**{**TINY, "image_size": 129, "patch_size": 1})


@pytest.mark.parametrize("field, value", [("num_channels", 1), ("num_channels", 3.0), ("layer_norm_eps", 0),
                                          ("layer_norm_eps", 1.5), ("layer_norm_eps", float("inf")),
                                          ("layer_norm_eps", 10 ** 400), ("layer_norm_eps", True),
                                          ("attention_dropout", -0.1), ("attention_dropout", None),
                                          ("vision_use_head", 1), ("vision_use_head", None), ("hidden_act", None)])
def test_other_fields_are_checked(field, value):
    with pytest.raises(CheckpointError, match=f"{field} .*fix the config$"):
        SiglipVisionConfig(**{**TINY, field: value})


def test_long_values_are_cut_short_in_messages():
    with pytest.raises(CheckpointError) as e:
        SiglipVisionConfig(hidden_size="x" * 100_000)
    assert len(str(e.value)) < 300


@pytest.mark.parametrize("config", [*PRESETS.values(), SiglipVisionConfig(**TINY), SiglipVisionConfig(**PATCH14),
                                    SiglipVisionConfig(**TINY, vision_use_head=False)])
def test_parameter_count_from_the_config_equals_the_models(config):
    import torch

    from siglip_cli.model import SiglipVisionModel

    with torch.device("meta"):
        assert config.num_parameters() == sum(p.numel() for p in SiglipVisionModel(config).parameters())


def test_a_model_larger_than_memory_is_refused(monkeypatch):
    assert config_module.physical_memory() > 1 << 28  # this machine's RAM: the tests run on POSIX
    monkeypatch.setattr(config_module, "physical_memory", lambda: 1 << 30)
    check_fits_in_memory(PRESETS["base"])  # 93M parameters: 0.35 GiB
    with pytest.raises(CheckpointError, match=r"^ckpt/config.json: describes a model of 0\.4B parameters, 1\.6 GiB "
                                              r"as float32, more than this machine's memory \(1\.0 GiB\): fix the "
                                              "config, or use a machine with more memory$"):
        check_fits_in_memory(PRESETS["so400m"], "ckpt/config.json")
    monkeypatch.setattr(config_module, "physical_memory", lambda: None)  # unknown (not POSIX): not checked
    check_fits_in_memory(PRESETS["giant"])


def test_image_size_is_bounded():
    check_image_size(MAX_IMAGE_SIZE, PRESETS["base"])
    with pytest.raises(UsageError, match=r"image size 1000000 is more than siglip's limit of 2048 px: use a "
                                         r"smaller size \(e.g. 224, the model's own\)"):
        check_image_size(1_000_000, PRESETS["base"])
    with pytest.raises(UsageError, match="not a whole number of pixels"):
        check_image_size(224.0, PRESETS["base"])
    fine_patches = SiglipVisionConfig(**{**TINY, "image_size": 128, "patch_size": 1})
    with pytest.raises(UsageError, match="image size 256 with patch size 1 makes 65536 patches, more than siglip's "
                                         "limit of 16384"):
        check_image_size(256, fine_patches)


def test_full_config_keeps_the_text_tower():
    from siglip_cli.config import TEXT_PRESETS, SiglipConfig, SiglipTextConfig

    full = SiglipConfig.from_hf_dict({"model_type": "siglip", "text_config": {
        "hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27,
        "max_position_embeddings": 16, "projection_size": 1152, "bos_token_id": 49406},
        "vision_config": {"hidden_size": 1152, "image_size": 224, "intermediate_size": 4304,
                          "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14}})
    text = full.text_config
    assert (text.hidden_size, text.max_position_embeddings, text.vocab_size, text.projection_size) == (1152, 16, 32000,
                                                                                                        1152)
    assert text == SiglipTextConfig(**{**TEXT_PRESETS["so400m"].to_dict(), "max_position_embeddings": 16})
    assert full.part(SiglipTextConfig) is text and full.part(SiglipVisionConfig) is full.vision_config
    # The text width by default, or what the config says (SigLIP 2 giant-opt: 1152 -> 1536).
    assert SiglipTextConfig(hidden_size=64, num_attention_heads=4).projection_size == 64
    assert SiglipTextConfig(projection_size=1536).projection_size == 1536
    # A vision-only config has no text tower, and text needs are refused in one line.
    vision_only = SiglipConfig.from_hf_dict({"model_type": "siglip_vision_model", **TINY})
    assert vision_only.text_config is None and vision_only.vision_config == SiglipVisionConfig(**TINY)
    with pytest.raises(CheckpointError, match="no text tower"):
        vision_only.part(SiglipTextConfig)


@pytest.mark.parametrize("field, value, message", [
    ("vocab_size", 0, "vocab_size is 0: expected an integer from 1 to"),
    ("max_position_embeddings", 10 ** 9, "max_position_embeddings is 1000000000"),
    ("hidden_act", "relu", "unsupported hidden_act 'relu'"),
    ("num_attention_heads", 5, "not divisible by num_attention_heads 5"),
])
def test_bad_text_config_values_are_named(field, value, message):
    from siglip_cli.config import SiglipConfig

    with pytest.raises(CheckpointError, match=message):
        SiglipConfig.from_hf_dict({"model_type": "siglip", "vision_config": {}, "text_config": {field: value}})
    with pytest.raises(CheckpointError, match="text_config is a list, not a JSON object"):
        SiglipConfig.from_hf_dict({"model_type": "siglip", "text_config": []})


@pytest.mark.parametrize("data", [{}, {"architecture": "vit_base_patch16_siglip_224", "num_classes": 0},
                                  {"foo": 1, "bar": [2]}])
def test_a_config_with_no_siglip_key_is_refused_at_once(data):
    # Once this silently became the base config, and failed later with a list of missing weights.
    with pytest.raises(CheckpointError, match=r"not a SigLIP config: none of its keys .* is a SigLIP one"):
        SiglipVisionConfig.from_hf_dict(data)


def test_presets_are_written_once():
    from siglip_cli.catalog import KNOWN_MODELS
    from siglip_cli.config import TEXT_PRESETS

    for m in KNOWN_MODELS:
        assert m.config == PRESETS[m.vision].__class__(**{**PRESETS[m.vision].to_dict(), "patch_size": m.patch_size,
                                                          "image_size": m.image_size})
        assert m.full_config.text_config.vocab_size == TEXT_PRESETS[m.text].vocab_size
        assert m.full_config.text_config.projection_size == m.config.hidden_size


def test_a_bad_text_config_says_it_is_the_text_towers():
    from siglip_cli.config import SiglipConfig

    with pytest.raises(CheckpointError, match=r"^text_config: unsupported hidden_act 'relu'"):
        SiglipConfig.from_hf_dict({"model_type": "siglip", "vision_config": {}, "text_config": {"hidden_act": "relu"}})
    with pytest.raises(CheckpointError, match="expected a JSON object, not a list"):
        SiglipConfig.from_hf_dict([])
