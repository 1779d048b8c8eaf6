import pytest

from siglip_cli.config import PRESETS, SiglipVisionConfig, check_image_size
from siglip_cli.errors import CheckpointError, UsageError


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
