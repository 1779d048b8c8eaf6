import pytest
import torch

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.config import SiglipTextConfig
from siglip_cli.errors import UsageError
from siglip_cli.model import SiglipEncoder

from conftest import PATCH14, TINY

CONFIGS = {
    "tiny": SiglipVisionConfig(**TINY),
    "patch14": SiglipVisionConfig(**PATCH14),
    "nohead": SiglipVisionConfig(**TINY, vision_use_head=False),
    "wide-heads": SiglipVisionConfig(hidden_size=40, intermediate_size=37, num_attention_heads=2,
                                     num_hidden_layers=1, image_size=48, patch_size=16),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_output_shapes(name):
    cfg = CONFIGS[name]
    model = SiglipVisionModel.random_init(cfg)
    x = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        patches = model(x)
        assert patches.shape == (3, cfg.num_patches, cfg.hidden_size)
        assert model.embed(x, pool="mean").shape == (3, cfg.hidden_size)
        torch.testing.assert_close(model.embed(x, pool="mean"), patches.mean(1))
        if cfg.vision_use_head:
            assert model.embed(x, pool="map").shape == (3, cfg.hidden_size)
        else:
            with pytest.raises(UsageError, match="no attention-pooling head"):
                model.embed(x, pool="map")


def test_base_model_gives_196_by_768():
    model = SiglipVisionModel.random_init()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 196, 768)


@pytest.mark.parametrize("name", ["tiny", "patch14", "wide-heads"])
def test_fused_attention_equals_explicit_path(name):
    cfg = CONFIGS[name]
    model = SiglipVisionModel.random_init(cfg, seed=3)
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        fused = model.embed(x, pool="map")
        explicit = model.use_explicit_attention(True).embed(x, pool="map")
        patches_explicit = model(x)
        patches_fused = model.use_explicit_attention(False)(x)
    assert not torch.equal(fused, torch.zeros_like(fused))
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patches_explicit, patches_fused, atol=1e-5, rtol=1e-5)


def test_explicit_path_records_the_seed_steps_with_their_shapes():
    cfg = CONFIGS["tiny"]  # 16 patches, 4 heads of 8
    model = SiglipVisionModel.random_init(cfg)
    trace: dict = {}
    with torch.no_grad():
        model.vision_model(torch.randn(1, 3, 32, 32), trace=trace, trace_layer=1)
    shapes = {k: list(v.shape) for k, v in trace.items()}
    assert shapes["patch_embedding"] == [1, 32, 4, 4]
    assert shapes["transpose"] == [1, 16, 32]
    assert shapes["q_states"] == [1, 16, 32]
    assert shapes["split_heads"] == [1, 16, 4, 8]
    assert shapes["transpose_heads"] == [1, 4, 16, 8]
    assert shapes["scores"] == [1, 4, 16, 16]
    assert shapes["weighted_sum"] == [1, 4, 16, 8]
    assert shapes["merge_heads"] == [1, 16, 32]
    assert shapes["fc1"] == [1, 16, 37]
    torch.testing.assert_close(trace["softmax"].sum(-1), torch.ones(1, 4, 16))


def test_other_resolutions_interpolate_position_embeddings():
    cfg = CONFIGS["tiny"]
    model = SiglipVisionModel.random_init(cfg)
    emb = model.vision_model.embeddings
    assert emb.position_embeddings(4, 4).data_ptr() == emb.position_embedding.weight.data_ptr()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 36, 32)
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 4, 32)
        with pytest.raises(UsageError, match="image size 36 is not a multiple of the patch size 8"):
            model(torch.randn(1, 3, 36, 36))


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = SiglipVisionModel.random_init(CONFIGS["tiny"])
    after = torch.rand(1)
    b = SiglipVisionModel.random_init(CONFIGS["tiny"])
    c = SiglipVisionModel.random_init(CONFIGS["tiny"], seed=1)
    assert torch.equal(after, expected_next)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.vision_model.head.probe, c.vision_model.head.probe)


def test_state_dict_keys_are_the_hugging_face_names():
    keys = set(SiglipVisionModel(SiglipVisionConfig(**TINY)).state_dict())
    for k in ["vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
              "vision_model.encoder.layers.1.self_attn.q_proj.weight", "vision_model.encoder.layers.0.mlp.fc1.bias",
              "vision_model.post_layernorm.weight", "vision_model.head.probe",
              "vision_model.head.attention.in_proj_weight", "vision_model.head.attention.out_proj.bias",
              "vision_model.head.layernorm.weight", "vision_model.head.mlp.fc2.weight"]:
        assert k in keys
    assert len(keys) == 3 + 2 * 16 + 2 + 11  # embeddings, 2 layers, post_layernorm, head


def test_pool_errors_name_no_command_line_option():
    model = SiglipVisionModel.random_init(CONFIGS["nohead"])
    patches = torch.randn(1, 16, 32)
    for pool, message in (("map", "no attention-pooling head"), ("max", "unknown pool 'max': use one of none, map")):
        with pytest.raises(UsageError, match=message) as error:
            model.pool(patches, pool)
        assert "--" not in str(error.value)


def test_encoder_blocks_are_built_from_a_text_config_too():
    text = SiglipTextConfig(vocab_size=50, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=3, max_position_embeddings=16)
    encoder = SiglipEncoder(text)
    trace: dict = {}
    with torch.no_grad():
        y = encoder(torch.randn(2, 16, 32), trace=trace, trace_layer=2)
    assert len(encoder.layers) == 3 and y.shape == (2, 16, 32)
    assert list(trace["scores"].shape) == [2, 4, 16, 16] and list(trace["fc1"].shape) == [2, 16, 37]
