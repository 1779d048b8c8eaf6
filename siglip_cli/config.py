"""SiglipVisionConfig: the shape of a SigLIP vision tower, named as in `config.json`.

Field names equal the Hugging Face `vision_config` keys, so reading a checkpoint's config needs no
rename table; the defaults are google/siglip-base-patch16-224.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError, UsageError

DEFAULT_MODEL_ID = "google/siglip-base-patch16-224"

# hidden_act values found in SigLIP configs -> whether GELU uses the tanh approximation.
GELU_APPROXIMATE = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "none"}


@dataclass
class SiglipVisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_hidden_layers: int = 12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    hidden_act: str = "gelu_pytorch_tanh"
    vision_use_head: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: fix the config"
            )
        if self.image_size < self.patch_size:
            raise CheckpointError(
                f"image_size {self.image_size} is smaller than patch_size {self.patch_size}: fix the config"
            )
        if self.hidden_act not in GELU_APPROXIMATE:
            raise CheckpointError(
                f"unsupported hidden_act {self.hidden_act!r}: expected one of {', '.join(GELU_APPROXIMATE)}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> int:
        # The patch conv has no padding: so400m's 384 px with patch 14 is a 27 x 27 grid (6 px unused).
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "SiglipVisionConfig":
        """Read a `config.json`: a full SigLIP config (nested `vision_config`) or a vision-only one.

        Keys the vision tower does not use (torch_dtype, architectures, ...) are ignored; missing
        keys take transformers' defaults, as the hub's configs rely on.
        """
        model_type = d.get("model_type")
        if model_type == "siglip2" or (d.get("vision_config") or {}).get("model_type") == "siglip2_vision_model" \
                or model_type == "siglip2_vision_model":
            raise CheckpointError(
                "SigLIP 2 NaFlex checkpoints (model_type 'siglip2') are not supported: "
                "use a fixed-resolution SigLIP 2 checkpoint (e.g. google/siglip2-base-patch16-224)"
            )
        if "vision_config" in d:
            d = d["vision_config"] or {}
        elif model_type not in (None, "siglip_vision_model"):
            raise CheckpointError(
                f"unsupported architecture model_type={model_type!r}: expected a SigLIP checkpoint "
                "('siglip' or 'siglip_vision_model')"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        try:
            return cls(**kwargs)
        except TypeError as e:  # pragma: no cover - dataclass kwargs are filtered above
            raise CheckpointError(f"bad vision config: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Named sizes of the released SigLIP vision towers (see `siglip models` for the full list).
PRESETS: dict[str, SiglipVisionConfig] = {
    "base": SiglipVisionConfig(),
    "large": SiglipVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                num_hidden_layers=24, image_size=256),
    "so400m": SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                                 num_hidden_layers=27, image_size=384, patch_size=14),
    "giant": SiglipVisionConfig(hidden_size=1536, intermediate_size=6144, num_attention_heads=16,
                                num_hidden_layers=40, image_size=256, patch_size=16),
}


def check_image_size(image_size: int, config: SiglipVisionConfig) -> None:
    """A resolution the model can run at: its native size, or a positive multiple of the patch size."""
    patch_size = config.patch_size
    if image_size != config.image_size and (image_size <= 0 or image_size % patch_size):
        lo = max(patch_size, image_size // patch_size * patch_size)
        raise UsageError(
            f"image size {image_size} is not a multiple of the patch size {patch_size}: "
            f"use e.g. {lo} or {lo + patch_size}"
        )
