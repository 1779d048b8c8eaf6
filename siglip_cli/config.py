"""The shapes of SigLIP's towers, named as in `config.json`: SiglipVisionConfig, SiglipTextConfig, and
SiglipConfig holding both. Also the named sizes (PRESETS) and the bounds a checkpoint's config must keep.

Field names equal the Hugging Face `vision_config`/`text_config` keys, so reading a checkpoint's config
needs no rename table; the defaults are google/siglip-base-patch16-224. No torch here.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from .errors import CheckpointError, UsageError

DEFAULT_MODEL_ID = "google/siglip-base-patch16-224"

# hidden_act values found in SigLIP configs -> whether GELU uses the tanh approximation.
GELU_APPROXIMATE = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "none"}


# Upper bounds on a checkpoint's config: generous for every released SigLIP (giant is 1536 wide and 40
# deep, so400m's MLP 4304 wide, images up to 512 px), yet a hostile config.json cannot make building the
# model hang or allocate without limit. Attention cost grows with the square of the patch count.
MAX_HIDDEN_SIZE = 8192
MAX_INTERMEDIATE_SIZE = 65536
MAX_HEADS = 256
MAX_LAYERS = 256
MAX_IMAGE_SIZE = 2048  # pixels per side, for the config and for --image-size
MAX_PATCHES = 16384  # a 128 x 128 grid: 2048 px at patch 16
MAX_VOCAB = 1 << 20  # SigLIP 2's Gemma vocabulary is 256k
MAX_POSITIONS = 8192  # text positions: SigLIP's are 64 (16 for so400m-patch14-224)
_INT_LIMITS = {"hidden_size": MAX_HIDDEN_SIZE, "intermediate_size": MAX_INTERMEDIATE_SIZE,
               "num_attention_heads": MAX_HEADS, "num_hidden_layers": MAX_LAYERS}


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is a Python int


def is_number(value: object) -> bool:
    """A finite int or float: not JSON's true/false, NaN or Infinity, nor an int too big for a float."""
    if is_int(value):
        return abs(value) < 2 ** 1023
    return isinstance(value, float) and math.isfinite(value)


def shown(value: object, limit: int = 200) -> str:
    """A value from a JSON file, for a message: null as null, anything long cut short."""
    text = "null" if value is None else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def json_kind(value: object) -> str:
    """'null', 'a list', 'a str' ...: what a JSON value is, when it is not what was expected."""
    return "null" if value is None else f"a {type(value).__name__}"


def _check_encoder(config, limits: dict[str, int]) -> None:
    """The sizes every SigLIP tower shares (and `limits`), typed and in range: a config.json can hold any JSON
    value, and torch's own errors on them are tracebacks (or a model with ten million layers being built)."""
    for name, limit in limits.items():
        value = getattr(config, name)
        if not is_int(value) or not 1 <= value <= limit:
            raise CheckpointError(f"{name} is {shown(value)}: expected an integer from 1 to {limit}"
                                  f"{' (the image_size)' if name == 'patch_size' else ''}: fix the config")
    if not is_number(config.layer_norm_eps) or not 0 < config.layer_norm_eps < 1:
        raise CheckpointError(f"layer_norm_eps is {shown(config.layer_norm_eps)}: expected a number above 0 and "
                              "below 1 (SigLIP uses 1e-6): fix the config")
    if not is_number(config.attention_dropout) or not 0 <= config.attention_dropout < 1:
        raise CheckpointError(f"attention_dropout is {shown(config.attention_dropout)}: expected a number from 0 "
                              "to below 1: fix the config")
    if not isinstance(config.hidden_act, str) or config.hidden_act not in GELU_APPROXIMATE:
        raise CheckpointError(f"unsupported hidden_act {shown(config.hidden_act)}: expected one of "
                              f"{', '.join(GELU_APPROXIMATE)}: fix the config")
    if config.hidden_size % config.num_attention_heads:
        raise CheckpointError(
            f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}: fix the config"
        )


def _known_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
    """The keys of a config.json that are this config's fields (torch_dtype, architectures ... are not)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _mlp_and_norms(d: int, f: int) -> int:
    """Parameters of one encoder layer: q, k, v, out projections; fc1, fc2; two LayerNorms."""
    return 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d


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
        patch_limit = self.image_size if is_int(self.image_size) else MAX_IMAGE_SIZE
        _check_encoder(self, {**_INT_LIMITS, "image_size": MAX_IMAGE_SIZE, "patch_size": patch_limit})
        if not is_int(self.num_channels) or self.num_channels != 3:
            raise CheckpointError(f"num_channels is {shown(self.num_channels)}: expected 3 (RGB), the images siglip "
                                  "embeds: fix the config")
        if not isinstance(self.vision_use_head, bool):
            raise CheckpointError(f"vision_use_head is {shown(self.vision_use_head)}: expected true or false: "
                                  "fix the config")
        if self.num_patches > MAX_PATCHES:
            raise CheckpointError(f"image_size {self.image_size} with patch_size {self.patch_size} makes "
                                  f"{self.num_patches} patches, more than {MAX_PATCHES}: fix the config")

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
        """The vision tower's part of a `config.json` (full or vision-only; see SiglipConfig.from_hf_dict)."""
        return SiglipConfig.from_hf_dict(d).vision_config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_parameters(self) -> int:
        """The vision tower's parameter count, from the sizes alone (equal to the built model's; tested)."""
        d, i, p = self.hidden_size, self.intermediate_size, self.patch_size
        mlp = (d * i + i) + (i * d + d)
        n = (self.num_channels * p * p * d + d) + self.num_patches * d \
            + self.num_hidden_layers * _mlp_and_norms(d, i) + 2 * d
        if self.vision_use_head:  # probe, attention in/out projections, LayerNorm, MLP
            n += d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + mlp
        return n


@dataclass
class SiglipTextConfig:
    """The text tower's sizes, named as in `config.json`'s `text_config` (defaults: SigLIP base).

    bos/eos_token_id are kept as the file says but never used: SigLIP configs carry CLIP's 49406/49407,
    outside their own vocabulary; the special ids come from the tokenizer files.
    """

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_hidden_layers: int = 12
    max_position_embeddings: int = 64
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    hidden_act: str = "gelu_pytorch_tanh"
    projection_size: int | None = None  # the head's output size: the text width unless the config says
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407

    def __post_init__(self) -> None:
        if self.projection_size is None:
            self.projection_size = self.hidden_size
        _check_encoder(self, {**_INT_LIMITS, "vocab_size": MAX_VOCAB, "max_position_embeddings": MAX_POSITIONS,
                              "projection_size": MAX_HIDDEN_SIZE})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "SiglipTextConfig":
        return cls(**_known_fields(cls, d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_parameters(self) -> int:
        """Token and position tables, the layers, final LayerNorm, and the head (Linear to projection_size)."""
        d, e = self.hidden_size, self.projection_size
        return (self.vocab_size + self.max_position_embeddings) * d \
            + self.num_hidden_layers * _mlp_and_norms(d, self.intermediate_size) + 2 * d + (d * e + e)


@dataclass
class SiglipConfig:
    """A whole checkpoint's config: the vision tower, and the text tower when the checkpoint has one."""

    vision_config: SiglipVisionConfig = dataclasses.field(default_factory=SiglipVisionConfig)
    text_config: SiglipTextConfig | None = None

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "SiglipConfig":
        """Read a `config.json`: a full SigLIP config (nested `vision_config` and `text_config`) or a
        vision-only one.

        Keys the towers do not use (torch_dtype, architectures, ...) are ignored; missing keys take
        transformers' defaults, as the hub's configs rely on. A file with none of SigLIP's keys is refused.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"expected a JSON object, not {json_kind(d)}: re-download the checkpoint")
        model_type = d.get("model_type")
        vision = d.get("vision_config", {})
        text = d.get("text_config")
        for name, part in (("vision_config", vision), ("text_config", text)):
            if not isinstance(part, dict) and (part is not None or name == "vision_config"):
                raise CheckpointError(f"{name} is {json_kind(part)}, not a JSON object of the "
                                      f"{name.split('_')[0]} tower's sizes: fix the config")
        if model_type == "siglip2" or vision.get("model_type") == "siglip2_vision_model" \
                or model_type == "siglip2_vision_model":
            raise CheckpointError(
                "SigLIP 2 NaFlex checkpoints (model_type 'siglip2') are not supported: "
                "use a fixed-resolution SigLIP 2 checkpoint (e.g. google/siglip2-base-patch16-224)"
            )
        if "vision_config" in d or "text_config" in d:
            try:
                text = None if text is None else SiglipTextConfig.from_hf_dict(text)
            except CheckpointError as e:  # say which tower: both have a hidden_act, a hidden_size ...
                raise CheckpointError(f"text_config: {e}") from None
            return cls(SiglipVisionConfig(**_known_fields(SiglipVisionConfig, vision)), text)
        if model_type not in (None, "siglip_vision_model"):
            raise CheckpointError(
                f"unsupported architecture model_type={model_type!r}: expected a SigLIP checkpoint "
                "('siglip' or 'siglip_vision_model')"
            )
        known = _known_fields(SiglipVisionConfig, d)
        if model_type is None and not known:
            keys = ", ".join(sorted(map(str, d))[:5]) or "none"
            raise CheckpointError(f"not a SigLIP config: none of its keys ({keys}) is a SigLIP one (model_type, "
                                  "vision_config, hidden_size ...): use a SigLIP checkpoint folder")
        return cls(SiglipVisionConfig(**known))

    def part(self, config_class: type) -> "SiglipConfig | SiglipVisionConfig | SiglipTextConfig":
        """The config a model class is built from: the whole, or one tower's."""
        if config_class is SiglipConfig:
            return self
        if config_class is SiglipVisionConfig:
            return self.vision_config
        if config_class is SiglipTextConfig:
            if self.text_config is None:
                raise CheckpointError("this checkpoint has no text tower (its config.json has no text_config): "
                                      "use a full SigLIP checkpoint")
            return self.text_config
        raise TypeError(f"no part of a SigLIP config is a {config_class.__name__}")

    def num_parameters(self) -> int:
        text = self.text_config.num_parameters() + 2 if self.text_config else 0  # + logit scale and bias
        return self.vision_config.num_parameters() + text


# Named sizes of the released SigLIP towers, at their first resolution; `siglip models` (catalog.py)
# builds every released checkpoint from these.
PRESETS: dict[str, SiglipVisionConfig] = {
    "base": SiglipVisionConfig(),
    "large": SiglipVisionConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                num_hidden_layers=24, image_size=256),
    "so400m": SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                                 num_hidden_layers=27, image_size=384, patch_size=14),
    "giant": SiglipVisionConfig(hidden_size=1536, intermediate_size=6144, num_attention_heads=16,
                                num_hidden_layers=40, image_size=256, patch_size=16),
}
# Text towers: SigLIP's 32k SentencePiece vocabulary, the multilingual 250k, SigLIP 2's 256k Gemma one.
TEXT_PRESETS: dict[str, SiglipTextConfig] = {
    "base": SiglipTextConfig(),
    "base-multi": SiglipTextConfig(vocab_size=250000),
    "large": SiglipTextConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                              num_hidden_layers=24),
    "so400m": SiglipTextConfig(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                               num_hidden_layers=27),
    "so400m-i18n": SiglipTextConfig(vocab_size=250000, hidden_size=1152, intermediate_size=4304,
                                    num_attention_heads=16, num_hidden_layers=27),
    "v2-base": SiglipTextConfig(vocab_size=256000),
    "v2-large": SiglipTextConfig(vocab_size=256000, hidden_size=1024, intermediate_size=4096,
                                 num_attention_heads=16, num_hidden_layers=24),
    "v2-so400m": SiglipTextConfig(vocab_size=256000, hidden_size=1152, intermediate_size=4304,
                                  num_attention_heads=16, num_hidden_layers=27),
}


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or None where the OS does not say (os.sysconf is POSIX only)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(config: SiglipVisionConfig, where: str = "config.json") -> None:
    """Refuse, before any module is built, a model whose float32 weights alone exceed this machine's memory.

    Each field can be within its bound while their product is absurd (8192 wide x 256 layers is 1.4 TB);
    loading converts the weights to float32, so 4 bytes a parameter is what loading needs.
    """
    need, have = 4 * config.num_parameters(), physical_memory()
    if have is not None and need > have:
        raise CheckpointError(f"{where}: describes a model of {config.num_parameters() / 1e9:.1f}B parameters, "
                              f"{need / 2 ** 30:.1f} GiB as float32, more than this machine's memory "
                              f"({have / 2 ** 30:.1f} GiB): fix the config, or use a machine with more memory")


def check_image_size(image_size: int, config: SiglipVisionConfig) -> None:
    """A resolution the model can run at: its native size, or a positive multiple of the patch size, at most
    MAX_IMAGE_SIZE and MAX_PATCHES patches (a huge size would be a huge allocation, or a run that never ends)."""
    patch_size = config.patch_size
    if isinstance(image_size, bool) or not hasattr(type(image_size), "__index__"):  # numpy and torch ints pass
        raise UsageError(f"image size {image_size!r} is not a whole number of pixels: use e.g. {config.image_size}")
    if image_size > MAX_IMAGE_SIZE:
        raise UsageError(f"image size {image_size} is more than siglip's limit of {MAX_IMAGE_SIZE} px: "
                         f"use a smaller size (e.g. {config.image_size}, the model's own)")
    if image_size != config.image_size and (image_size <= 0 or image_size % patch_size):
        lo = max(patch_size, image_size // patch_size * patch_size)
        raise UsageError(
            f"image size {image_size} is not a multiple of the patch size {patch_size}: "
            f"use e.g. {lo} or {lo + patch_size}"
        )
    patches = (image_size // patch_size) ** 2
    if patches > MAX_PATCHES:
        raise UsageError(f"image size {image_size} with patch size {patch_size} makes {patches} patches, more "
                         f"than siglip's limit of {MAX_PATCHES}: use a smaller size (e.g. {config.image_size})")
