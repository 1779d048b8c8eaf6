"""SigLIP's text tower and the two-tower SiglipModel, from the same blocks as the vision tower.

Attribute names equal the Hugging Face checkpoint keys (`text_model.embeddings.token_embedding.weight`,
..., `logit_scale`, `logit_bias`), so a full checkpoint loads with strict=True.

Shape legend: B texts, L tokens (the config's max_position_embeddings: 64, or 16 for so400m-patch14-224),
D text width, E the head's output size (projection_size: the image embedding's width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from .model import LayerNorm, Pretrained, SiglipEncoder, SiglipVisionTransformer, _Embedding, _record


class SiglipTextEmbeddings(nn.Module):
    """Token ids -> a learned vector per token, plus a learned vector per position."""

    def __init__(self, config: SiglipTextConfig):
        super().__init__()
        self.token_embedding = _Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = _Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        L = input_ids.shape[-1]
        if L > self.position_embedding.num_embeddings:
            raise ValueError(f"{L} tokens, more than the model's {self.position_embedding.num_embeddings} positions")
        return self.token_embedding(input_ids) + self.position_embedding.weight[:L]  # (B, L, D)


class SiglipTextTransformer(nn.Module):
    def __init__(self, config: SiglipTextConfig):
        super().__init__()
        self.embeddings = SiglipTextEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.projection_size)

    def forward(self, input_ids: torch.Tensor, trace: dict | None = None, trace_layer: int = 0) -> torch.Tensor:
        x = self.embeddings(input_ids)  # (B, L, D)
        _record(trace, "token_and_position_embedding", x)
        x = self.encoder(x, trace, trace_layer)  # (B, L, D): no mask, padding is attended to as trained
        x = self.final_layer_norm(x)
        _record(trace, "final_layer_norm", x)
        # SigLIP pools the LAST position: texts are padded to the full length, so it is always the same slot.
        x = x[:, -1]  # (B, D)
        _record(trace, "last_token", x)
        x = self.head(x)  # (B, E)
        _record(trace, "pooled", x)
        return x


class SiglipTextModel(Pretrained, nn.Module):
    """The text tower alone: `model(input_ids)` -> (B, E) text embeddings."""

    config_class = SiglipTextConfig

    def __init__(self, config: SiglipTextConfig | None = None):
        super().__init__()
        self.config = config or SiglipTextConfig()
        self.text_model = SiglipTextTransformer(self.config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids)


def sigmoid_scores(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                   logit_bias: torch.Tensor, trace: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP's image-text scores: (B_img, D) x (B_txt, D) -> logits and probabilities, both (B_img, B_txt).

    Both sides L2-normalised, cosine * exp(logit_scale) + logit_bias, then a sigmoid: one independent
    probability per pair (they do not sum to 1 over labels; a softmax would be wrong for SigLIP).
    """
    i = F.normalize(image_embeds.float(), dim=-1)
    _record(trace, "image_normalized", i)
    t = F.normalize(text_embeds.float(), dim=-1)
    _record(trace, "text_normalized", t)
    cosine = i @ t.T  # (B_img, E) @ (E, B_txt) -> (B_img, B_txt)
    _record(trace, "cosine", cosine)
    scaled = cosine * logit_scale.float().exp()
    _record(trace, "scaled", scaled)
    logits = scaled + logit_bias.float()
    _record(trace, "logits", logits)
    probabilities = logits.sigmoid()
    _record(trace, "probabilities", probabilities)
    return logits, probabilities


class SiglipModel(Pretrained, nn.Module):
    """Both towers and the score's two learned scalars: what a full SigLIP checkpoint holds."""

    config_class = SiglipConfig

    def __init__(self, config: SiglipConfig | None = None):
        super().__init__()
        self.config = config or SiglipConfig(SiglipVisionConfig(), SiglipTextConfig())
        text = self.config.part(SiglipTextConfig)  # a vision-only config: a one-line error naming the text tower
        self.vision_model = SiglipVisionTransformer(self.config.vision_config)
        self.text_model = SiglipTextTransformer(text)
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, D) SigLIP image embeddings (the attention-pooling head)."""
        return self.vision_model.head(self.vision_model(pixel_values))

    def text_embeds(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids, padded to the full length -> (B, E) text embeddings."""
        return self.text_model(input_ids)

    def scores(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sigmoid_scores(image_embeds, text_embeds, self.logit_scale, self.logit_bias)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and sigmoid probabilities, (B_img, B_txt), as transformers' `logits_per_image`."""
        return self.scores(self.image_embeds(pixel_values), self.text_embeds(input_ids))
