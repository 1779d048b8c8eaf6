"""The text tower and SiglipModel against transformers, on random-weight checkpoints saved with save_pretrained."""

import pytest
import torch

from siglip_cli.config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from siglip_cli.errors import CheckpointError
from siglip_cli.text_model import SiglipModel, SiglipTextModel, sigmoid_scores

from conftest import TINY, TINY_TEXT, build_checkpoint


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    import transformers

    path = tmp_path_factory.mktemp("full")
    build_checkpoint(path, TINY, layout="full")
    return path, transformers.SiglipModel.from_pretrained(path).eval()


def test_text_embeddings_and_scores_equal_transformers(full):
    path, ref = full
    ours = SiglipModel.from_pretrained(str(path))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TINY_TEXT["vocab_size"], (3, TINY_TEXT["max_position_embeddings"]), generator=g)
    pixels = torch.randn(2, 3, TINY["image_size"], TINY["image_size"], generator=g)
    with torch.inference_mode():
        theirs = ref(input_ids=ids, pixel_values=pixels)
        torch.testing.assert_close(ours.text_embeds(ids), _features(ref.get_text_features(input_ids=ids)),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.image_embeds(pixels), _features(ref.get_image_features(pixel_values=pixels)),
                                   atol=1e-5, rtol=1e-5)
        logits, probs = ours(pixels, ids)
    torch.testing.assert_close(logits, theirs.logits_per_image, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(probs, theirs.logits_per_image.sigmoid(), atol=1e-5, rtol=1e-5)
    assert logits.shape == (2, 3)


def test_the_text_tower_loads_alone_and_a_vision_only_checkpoint_has_none(full, tmp_path):
    path, ref = full
    text = SiglipTextModel.from_pretrained(str(path))
    ids = torch.arange(TINY_TEXT["max_position_embeddings"]).remainder(TINY_TEXT["vocab_size"])[None]
    with torch.inference_mode():
        torch.testing.assert_close(text(ids), _features(ref.get_text_features(input_ids=ids)), atol=1e-5, rtol=1e-5)
    build_checkpoint(tmp_path, TINY, layout="vision5")
    for cls in (SiglipModel, SiglipTextModel):
        with pytest.raises(CheckpointError, match="this checkpoint has no text tower"):
            cls.from_pretrained(str(tmp_path))


def test_sigmoid_scores_are_independent_probabilities_not_a_softmax():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    logits, probs = sigmoid_scores(image, text, torch.tensor([0.0]), torch.tensor([-1.0]))
    cos = torch.tensor([[1.0, 0.0, 2 ** -0.5], [0.0, 1.0, 2 ** -0.5]])
    torch.testing.assert_close(logits, cos - 1.0)
    torch.testing.assert_close(probs, (cos - 1.0).sigmoid())
    assert not torch.allclose(probs.sum(dim=1), torch.ones(2))


def test_state_dict_keys_are_the_checkpoint_names():
    config = SiglipConfig(SiglipVisionConfig(**TINY), SiglipTextConfig(**TINY_TEXT))
    keys = set(SiglipModel(config).state_dict())
    for k in ["text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
              "text_model.encoder.layers.1.self_attn.q_proj.weight", "text_model.final_layer_norm.weight",
              "text_model.head.weight", "logit_scale", "logit_bias", "vision_model.head.probe"]:
        assert k in keys
    text_params = sum(p.numel() for n, p in SiglipModel(config).named_parameters() if n.startswith("text_model."))
    assert text_params + 2 == config.num_parameters() - config.vision_config.num_parameters()
