"""inspect-shapes --tower text: the text tower and the image-text scores, traced like the vision tower.

SiglipModel runs on the meta device (shapes, no data, no weights): token ids through the text tower, one
encoder layer's steps recorded by the explicit attention path, then the sigmoid scores of a few images'
embeddings (the vision tower with its head, traced too) against the texts'. Nothing is computed by formula.
shapes.py turns what this module traces into a ShapeReport (it imports this module, not the other way).

Shape legend: B texts (B_txt in the scoring), L tokens (max_position_embeddings: every text is padded to
it), D text width, E the embedding size (projection_size), B_img images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import SiglipConfig, SiglipTextConfig
from .errors import CheckpointError
from .model import SiglipAttention
from .text_model import SiglipModel, sigmoid_scores

# The scoring step's images: two, so that (B_img, B_txt) shows which axis is which even for one text.
SCORING_IMAGES = 2
TOKENS = ("input_ids", "token_embedding", "token_and_position_embedding")
POOLING = ("final_layer_norm", "last_token", "pooled")


@dataclass
class TextTrace:
    stages: list[tuple[str, list[int], str]]  # (trace name, shape, group), in the order the forward pass ran
    parameters: dict[str, int]


def _group(name: str, layer: int) -> str:
    return "tokens" if name in TOKENS else "pooling" if name in POOLING else f"encoder layer {layer} (in detail)"


def check_scoring(config: SiglipConfig) -> None:
    """The scores need image embeddings (the vision tower's head) as wide as the text embeddings."""
    vision, text = config.vision_config, config.part(SiglipTextConfig)
    if not vision.vision_use_head:
        raise CheckpointError("the vision tower has no attention-pooling head (vision_use_head: false), so there "
                              "are no image embeddings to score: --tower text needs a full SigLIP checkpoint")
    if vision.hidden_size != text.projection_size:
        raise CheckpointError(f"image embeddings are {vision.hidden_size} wide but text embeddings "
                              f"{text.projection_size} (projection_size): SigLIP's scores need equal widths: "
                              "fix the config")


def trace_text(config: SiglipConfig, batch_size: int, layer: int, images: int = SCORING_IMAGES) -> TextTrace:
    """Run SiglipModel on the meta device: `batch_size` texts through the text tower (layer `layer` in detail),
    then their scores against `images` images. Returns every recorded shape, in order, with its group."""
    check_scoring(config)
    text = config.text_config
    with torch.device("meta"):
        model = SiglipModel(config).eval()
        for module in model.modules():
            if isinstance(module, SiglipAttention):
                module.explicit = True  # the step-by-step path; fused attention is the same maths
        tm = model.text_model
        ids = torch.empty(batch_size, text.max_position_embeddings, dtype=torch.long)
        trace: dict[str, torch.Tensor] = {"input_ids": ids}
        # The token lookup's output is the one step text_model records no name for.
        hook = tm.embeddings.token_embedding.register_forward_hook(
            lambda module, args, out: trace.__setitem__("token_embedding", out))
        text_embeds = tm(ids, trace=trace, trace_layer=layer)  # (B_txt, E)
        hook.remove()
        size = config.vision_config.image_size
        image_embeds = model.image_embeds(torch.empty(images, config.vision_config.num_channels, size, size))
        scoring = {"image_embeds": image_embeds, "text_embeds": text_embeds}
        sigmoid_scores(image_embeds, text_embeds, model.logit_scale, model.logit_bias, trace=scoring)
    stages = [(name, list(x.shape), _group(name, layer)) for name, x in trace.items()]
    stages += [(name, list(x.shape), "scoring") for name, x in scoring.items()]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    parameters = {"token_embedding": count(tm.embeddings.token_embedding),
                  "position_embedding": count(tm.embeddings.position_embedding),
                  "encoder layer (each)": count(tm.encoder.layers[0]),
                  f"encoder ({len(tm.encoder.layers)} layers)": count(tm.encoder),
                  "final_layer_norm": count(tm.final_layer_norm), "head": count(tm.head), "total": count(tm)}
    return TextTrace(stages, parameters)


def text_flops(name: str, shape: list[int], c: SiglipTextConfig) -> int | None:
    """2 x multiply-adds of the text-only stages (the encoder layer's are shapes._flops')."""
    if name == "pooled":  # head: (B, D) @ (D, E)
        return 2 * math.prod(shape) * c.hidden_size
    if name == "cosine":  # (B_img, E) @ (E, B_txt)
        return 2 * math.prod(shape) * c.projection_size
    return None  # lookups, LayerNorms, normalisation, elementwise steps: not counted


def text_explanations(c: SiglipTextConfig, images: int) -> dict[str, tuple[str, str]]:
    """Trace name -> (what the axes are, what the step does), for the stages only the text tower has."""
    D, E, L, V, Dh = c.hidden_size, c.projection_size, c.max_position_embeddings, c.vocab_size, c.head_dim
    pair = "B_img, B_txt"
    return {
        "input_ids": ("B, L", f"token ids (SigLIP's tokenizer, a {V}-word vocabulary), every text padded to the full "
                              f"L = {L}: the model pools the LAST position and has no attention mask, so each "
                              "text must fill all L slots (a longer one is cut)"),
        "token_embedding": ("B, L, D", f"token_embedding, a {V} x {D} table: each id -> a learned {D}-dim vector "
                                       "(a lookup, no FLOPs)"),
        "token_and_position_embedding": ("B, L, D", f"+ position_embedding, a learned vector per position ({L} x {D}, "
                                                    "broadcast over B)"),
        "scores": ("B, heads, L, L", f"q @ k^T x scale 1/sqrt({Dh}): every token against every token, padding "
                                     "included (no mask: SigLIP was trained that way)"),
        "final_layer_norm": ("B, L, D", "final LayerNorm over D, at every position"),
        "last_token": ("B, D", "x[:, -1]: the last position only (SigLIP has no CLS token and does not average); "
                               "padding to L makes it the same slot for every text"),
        "pooled": ("B, E", f"head, Linear {D} -> {E}: SigLIP's text embedding (E = projection_size)"),
        "image_embeds": ("B_img, E", f"{images} images' embeddings, from the vision tower with its attention-pooling "
                                     f"head (traced too; see --tower vision): B_img = {images} example images"),
        "text_embeds": ("B_txt, E", "the pooled text embeddings above: B_txt = B texts"),
        "image_normalized": ("B_img, E", "F.normalize: each image embedding divided by its length (L2 norm 1)"),
        "text_normalized": ("B_txt, E", "F.normalize: each text embedding divided by its length (L2 norm 1)"),
        "cosine": (pair, "image @ text^T: the cosine similarity of every image with every text, -1 to 1"),
        "scaled": (pair, "x exp(logit_scale), a learned scalar: stretches the cosines (a temperature)"),
        "logits": (pair, "+ logit_bias, a learned scalar (SigLIP starts it at -10: most pairs do not match)"),
        "probabilities": (pair, "sigmoid, elementwise: an independent probability per (image, text) pair. No "
                                "softmax over the texts: the probabilities do not sum to 1, as SigLIP is trained "
                                "with a pairwise sigmoid loss (a yes/no per pair), not CLIP's softmax contrastive "
                                "loss"),
    }
