"""The SigLIP vision transformer, from scratch.

Class names follow the seed documents; attribute names equal the Hugging Face checkpoint keys
(`vision_model.encoder.layers.0.self_attn.q_proj.weight` ...), so a checkpoint loads with strict=True.
The encoder pieces (attention, MLP, layer, encoder, LayerNorm) read only the sizes both towers' configs
share (hidden_size, intermediate_size, num_attention_heads, num_hidden_layers, layer_norm_eps,
attention_dropout, hidden_act), so the text tower is built from the same blocks.

Shape legend for the comments below:
    B batch, C channels (3), H/W image height/width in pixels, P patch size,
    Gh/Gw patch grid height/width (H/P, W/P), N tokens = Gh*Gw (one per patch: SigLIP has no CLS token),
    D hidden size, h attention heads, Dh = D/h head dim, F intermediate (MLP) size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .choices import POOLS
from .config import GELU_APPROXIMATE, SiglipTextConfig, SiglipVisionConfig, check_image_size
from .errors import UsageError

POOL_MODES = POOLS


class _Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        # Meta tensors (inspect-shapes, loading) hold no values, and normal_ on meta costs ~1.5 s to set up.
        if not self.weight.is_meta:
            super().reset_parameters()


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in float32 whatever the model's dtype (bf16/fp16 keep their range here)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return super().forward(x)
        if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and self.weight.dtype == torch.float32:
            # torch's CPU kernel takes bf16/fp16 input with float32 weights and computes in float32
            # itself, rounding once: no float32 copy of x in and out.
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def _record(trace: dict | None, name: str, tensor: torch.Tensor) -> None:
    """Keep a named intermediate for learners (inspect-shapes), like big_vision's `out` dict."""
    if trace is not None:
        trace[name] = tensor


class SiglipVisionEmbeddings(nn.Module):
    """Patchify with a strided convolution, then add a learned position embedding per patch."""

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        # kernel = stride = patch: each output pixel is one non-overlapping patch, linearly projected.
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size,
                                         kernel_size=config.patch_size, stride=config.patch_size)
        self.position_embedding = _Embedding(config.num_patches, config.hidden_size)

    def position_embeddings(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings for a Gh x Gw grid of patches.

        At the native grid they are the learned table as it is. At any other grid the table is
        resampled bicubically over its 2-D layout, as transformers' `interpolate_pos_encoding=True`.
        """
        table = self.position_embedding.weight  # (N0, D)
        side = math.isqrt(table.shape[0])
        if grid_h == grid_w == side:
            return table.unsqueeze(0)  # (1, N, D)
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, side, side)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)  # (1, D, Gh, Gw)
        return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)  # (1, N, D)

    def forward(self, pixel_values: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        _, _, height, width = pixel_values.shape
        check_image_size(height, self.config)
        check_image_size(width, self.config)
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, Gh, Gw)
        _record(trace, "patch_embedding", x)
        x = x.flatten(2)  # (B, D, N)
        _record(trace, "flatten", x)
        x = x.transpose(1, 2)  # (B, N, D)
        _record(trace, "transpose", x)
        pos = self.position_embeddings(height // self.patch_size, width // self.patch_size)  # (1, N, D)
        x = x + pos.to(x.dtype)
        _record(trace, "add_position_embedding", x)
        return x


class SiglipAttention(nn.Module):
    """Multi-head self-attention (no mask: every token sees every token).

    The attention core is the fused `scaled_dot_product_attention` (fast, the default) or the seed
    documents' explicit steps (`explicit = True`, or whenever a trace is recorded); the weights are shared.
    """

    def __init__(self, config: SiglipVisionConfig | SiglipTextConfig):
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.dropout = config.attention_dropout
        self.explicit = False
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        _record(trace, "q_states", q)
        _record(trace, "k_states", k)
        _record(trace, "v_states", v)
        q = q.view(B, N, self.num_heads, self.head_dim)  # (B, N, h, Dh)
        k = k.view(B, N, self.num_heads, self.head_dim)  # (B, N, h, Dh)
        v = v.view(B, N, self.num_heads, self.head_dim)  # (B, N, h, Dh)
        _record(trace, "split_heads", q)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, N, Dh)
        _record(trace, "transpose_heads", q)
        if trace is None and not self.explicit:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               scale=self.scale)  # (B, h, N, Dh)
        else:  # the same attention, one recorded step at a time
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, N, Dh) @ (B, h, Dh, N) -> (B, h, N, N)
            _record(trace, "scores", scores)
            # Softmax in fp32 even under bf16/fp16: the row sums of N exponentials need the range.
            weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
            _record(trace, "softmax", weights)
            weights = F.dropout(weights, p=self.dropout, training=self.training)
            _record(trace, "dropout", weights)
            y = weights @ v  # (B, h, N, N) @ (B, h, N, Dh) -> (B, h, N, Dh)
            _record(trace, "weighted_sum", y)
        y = y.transpose(1, 2)  # (B, N, h, Dh)
        _record(trace, "transpose_back", y)
        y = y.reshape(B, N, D)  # (B, N, D)
        _record(trace, "merge_heads", y)
        y = self.out_proj(y)
        _record(trace, "out_proj", y)
        return y


class SiglipMLP(nn.Module):
    def __init__(self, config: SiglipVisionConfig | SiglipTextConfig):
        super().__init__()
        # SigLIP checkpoints use the tanh approximation of GELU (hidden_act "gelu_pytorch_tanh").
        self.activation_fn = nn.GELU(approximate=GELU_APPROXIMATE[config.hidden_act])
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        x = self.fc1(x)  # (B, N, F)
        _record(trace, "fc1", x)
        x = self.activation_fn(x)
        _record(trace, "gelu", x)
        x = self.fc2(x)  # (B, N, D)
        _record(trace, "fc2", x)
        return x


class SiglipEncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, config: SiglipVisionConfig | SiglipTextConfig):
        super().__init__()
        self.layer_norm1 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        h = self.layer_norm1(x)
        _record(trace, "layer_norm1", h)
        x = x + self.self_attn(h, trace)
        _record(trace, "residual_add1", x)
        h = self.layer_norm2(x)
        _record(trace, "layer_norm2", h)
        x = x + self.mlp(h, trace)
        _record(trace, "residual_add2", x)
        return x


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipVisionConfig | SiglipTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, trace: dict | None = None, trace_layer: int = 0) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, trace if i == trace_layer else None)
        return x


class SiglipMultiheadAttentionPoolingHead(nn.Module):
    """SigLIP's image embedding: one learned query (the probe) attends over all patch tokens.

    SigLIP has no CLS token; this "MAP" head is what the contrastive loss was trained on.
    """

    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        if not self.probe.is_meta:
            nn.init.normal_(self.probe)  # as torch.randn
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)  # (B, 1, D)
        _record(trace, "probe", probe)
        y, weights = self.attention(probe, x, x, need_weights=trace is not None,
                                    average_attn_weights=False)  # (B, 1, D), (B, h, 1, N)
        if weights is not None:
            _record(trace, "attention_weights", weights)
        _record(trace, "attention", y)
        y = y + self.mlp(self.layernorm(y))
        y = y[:, 0]  # (B, D)
        _record(trace, "pooled", y)
        return y


class SiglipVisionTransformer(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if config.vision_use_head:
            self.head = SiglipMultiheadAttentionPoolingHead(config)

    def forward(self, pixel_values: torch.Tensor, trace: dict | None = None, trace_layer: int = 0) -> torch.Tensor:
        x = self.embeddings(pixel_values, trace)  # (B, N, D)
        x = self.encoder(x, trace, trace_layer)  # (B, N, D)
        x = self.post_layernorm(x)
        _record(trace, "post_layernorm", x)
        return x


class Pretrained:
    """random_init and from_pretrained, for every model class here (its config_class says what it is built from)."""

    # Where the weights came from; from_pretrained fills these in.
    name_or_path: str | None = None
    revision: str | None = None
    preprocessor_config: dict | None = None
    fingerprint: str | None = None  # weights.weights_fingerprint: which vision weights, in whatever layout

    @classmethod
    def random_init(cls, config=None, seed: int = 0):
        """The untrained model with PyTorch's default initialisation, reproducibly seeded."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
        model.name_or_path = f"random-init (seed {seed})"
        return model.eval()

    @classmethod
    def from_pretrained(cls, path_or_id: str, revision: str | None = None, dtype: torch.dtype = torch.float32,
                        offline: bool = False, note=None, cache_dir=None):
        """Load a Hugging Face SigLIP checkpoint: a local directory, or a hub id (id@revision works too).

        A hub id comes from the local cache, and is downloaded (and verified) first when it is not
        there, unless offline=True or HF_HUB_OFFLINE=1.
        """
        from .hub import resolve_model
        from .weights import load_model

        source = resolve_model(path_or_id, revision, offline=offline, note=note, cache_dir=cache_dir)
        return load_model(cls, source, dtype=dtype)


class SiglipVisionModel(Pretrained, nn.Module):
    """SigLIP's vision tower.

    `model(pixel_values)` returns the patch embeddings (B, N, D); `model.embed(pixel_values, pool="map")`
    returns SigLIP's pooled image embedding (B, D). Inputs at a resolution other than the config's
    (any multiple of the patch size) use interpolated position embeddings.
    """

    config_class = SiglipVisionConfig  # the part of a checkpoint's config this model is built from

    def __init__(self, config: SiglipVisionConfig | None = None):
        super().__init__()
        self.config = config or SiglipVisionConfig()
        self.vision_model = SiglipVisionTransformer(self.config)

    @property
    def has_head(self) -> bool:
        return hasattr(self.vision_model, "head")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values)  # (B, N, D)

    def pool(self, patch_embeddings: torch.Tensor, pool: str = "map") -> torch.Tensor:
        """(B, N, D) patch embeddings -> (B, D) by the attention-pooling head ("map") or the mean."""
        if pool == "none":
            return patch_embeddings
        if pool == "mean":
            return patch_embeddings.mean(dim=1)  # (B, D)
        if pool == "map":
            if not self.has_head:
                raise UsageError("this model has no attention-pooling head (vision_use_head: false): "
                                 "pool with 'mean' or 'none'")
            return self.vision_model.head(patch_embeddings)  # (B, D)
        raise UsageError(f"unknown pool {pool!r}: use one of {', '.join(POOL_MODES)}")

    def embed(self, pixel_values: torch.Tensor, pool: str = "none") -> torch.Tensor:
        """Patch embeddings (pool="none", (B, N, D)) or one vector per image ("map"/"mean", (B, D))."""
        return self.pool(self(pixel_values), pool)

    def use_explicit_attention(self, explicit: bool = True) -> SiglipVisionModel:
        """Switch every layer to the step-by-step attention path (for learning) or back to fused."""
        for module in self.modules():
            if isinstance(module, SiglipAttention):
                module.explicit = explicit
        return self
