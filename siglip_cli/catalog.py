"""The released SigLIP and SigLIP 2 fixed-resolution checkpoints, for `siglip models`.

Vision parameter counts come from building each config's model on the meta device (exact, no
memory). Download sizes are estimates: the full checkpoint (vision + text tower, stored in float32)
is what the hub serves, so they are 4 bytes per parameter of both towers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import SiglipVisionConfig
from .errors import UsageError

# Text towers (width, depth, MLP size, vocabulary, positions), as in each checkpoint's text_config.
_TEXT = {
    "base": (768, 12, 3072, 32000, 64),
    "base-multi": (768, 12, 3072, 250000, 64),
    "large": (1024, 24, 4096, 32000, 64),
    "so400m": (1152, 27, 4304, 32000, 64),
    "so400m-i18n": (1152, 27, 4304, 250000, 64),
    "v2-base": (768, 12, 3072, 256000, 64),
    "v2-large": (1024, 24, 4096, 256000, 64),
    "v2-so400m": (1152, 27, 4304, 256000, 64),
}
_VISION = {
    "base": dict(),
    "large": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24),
    "so400m": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27),
    "giant": dict(hidden_size=1536, intermediate_size=6144, num_attention_heads=16, num_hidden_layers=40),
}


@dataclass(frozen=True)
class KnownModel:
    repo_id: str
    family: str  # "SigLIP" or "SigLIP 2"
    vision: str
    text: str
    patch_size: int
    image_size: int

    @property
    def config(self) -> SiglipVisionConfig:
        return SiglipVisionConfig(**_VISION[self.vision], patch_size=self.patch_size, image_size=self.image_size)

    def text_params(self) -> int:
        d, layers, f, vocab, pos = _TEXT[self.text]
        per_layer = 4 * (d * d + d) + 2 * (d * f) + f + d + 4 * d  # attention, MLP, two LayerNorms
        projection = d * self.config.hidden_size + self.config.hidden_size  # the text head
        return vocab * d + pos * d + layers * per_layer + 2 * d + projection + 2  # + logit scale and bias


def _m(repo: str, family: str, vision: str, text: str, patch: int, size: int) -> KnownModel:
    return KnownModel(repo, family, vision, text, patch, size)


KNOWN_MODELS: list[KnownModel] = [
    _m("google/siglip-base-patch16-224", "SigLIP", "base", "base", 16, 224),
    _m("google/siglip-base-patch16-256", "SigLIP", "base", "base", 16, 256),
    _m("google/siglip-base-patch16-384", "SigLIP", "base", "base", 16, 384),
    _m("google/siglip-base-patch16-512", "SigLIP", "base", "base", 16, 512),
    _m("google/siglip-base-patch16-256-multilingual", "SigLIP", "base", "base-multi", 16, 256),
    _m("google/siglip-large-patch16-256", "SigLIP", "large", "large", 16, 256),
    _m("google/siglip-large-patch16-384", "SigLIP", "large", "large", 16, 384),
    _m("google/siglip-so400m-patch14-224", "SigLIP", "so400m", "so400m", 14, 224),
    _m("google/siglip-so400m-patch14-384", "SigLIP", "so400m", "so400m", 14, 384),
    _m("google/siglip-so400m-patch16-256-i18n", "SigLIP", "so400m", "so400m-i18n", 16, 256),
    _m("google/siglip2-base-patch16-224", "SigLIP 2", "base", "v2-base", 16, 224),
    _m("google/siglip2-base-patch16-256", "SigLIP 2", "base", "v2-base", 16, 256),
    _m("google/siglip2-base-patch16-384", "SigLIP 2", "base", "v2-base", 16, 384),
    _m("google/siglip2-base-patch16-512", "SigLIP 2", "base", "v2-base", 16, 512),
    _m("google/siglip2-base-patch32-256", "SigLIP 2", "base", "v2-base", 32, 256),
    _m("google/siglip2-large-patch16-256", "SigLIP 2", "large", "v2-large", 16, 256),
    _m("google/siglip2-large-patch16-384", "SigLIP 2", "large", "v2-large", 16, 384),
    _m("google/siglip2-large-patch16-512", "SigLIP 2", "large", "v2-large", 16, 512),
    _m("google/siglip2-so400m-patch14-224", "SigLIP 2", "so400m", "v2-so400m", 14, 224),
    _m("google/siglip2-so400m-patch14-384", "SigLIP 2", "so400m", "v2-so400m", 14, 384),
    _m("google/siglip2-so400m-patch16-256", "SigLIP 2", "so400m", "v2-so400m", 16, 256),
    _m("google/siglip2-so400m-patch16-384", "SigLIP 2", "so400m", "v2-so400m", 16, 384),
    _m("google/siglip2-so400m-patch16-512", "SigLIP 2", "so400m", "v2-so400m", 16, 512),
    _m("google/siglip2-giant-opt-patch16-256", "SigLIP 2", "giant", "v2-so400m", 16, 256),
    _m("google/siglip2-giant-opt-patch16-384", "SigLIP 2", "giant", "v2-so400m", 16, 384),
]


def vision_params(config: SiglipVisionConfig) -> int:
    import torch

    from .model import SiglipVisionModel

    with torch.device("meta"):
        return sum(p.numel() for p in SiglipVisionModel(config).parameters())


def _complete(names: set[str]) -> bool:
    """A snapshot that can be loaded: a config and weights (what a cut-off download lacks)."""
    return "config.json" in names and bool({"model.safetensors", "model.safetensors.index.json"} & names)


def cached_repos(cache_dir=None) -> dict[str, list[str]]:
    """Repo id -> commits with a complete checkpoint in the Hugging Face cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return {}
    except ValueError as e:  # e.g. a file given as the cache folder
        raise UsageError(f"--cache-dir {str(cache_dir)!r}: not a Hugging Face cache folder ({e})") from None
    out = {}
    for repo in info.repos:
        commits = sorted(rev.commit_hash for rev in repo.revisions
                         if _complete({f.file_name for f in rev.files}))
        if repo.repo_type == "model" and commits:
            out[repo.repo_id] = commits
    return out


def model_rows(cache_dir=None) -> list[dict]:
    cached = cached_repos(cache_dir)
    rows = []
    for m in KNOWN_MODELS:
        c = m.config
        vp = vision_params(c)
        rows.append({"id": m.repo_id, "family": m.family, "width": c.hidden_size, "depth": c.num_hidden_layers,
                     "patch": c.patch_size, "resolution": c.image_size, "tokens": c.num_patches,
                     "vision_params": vp, "download_bytes": 4 * (vp + m.text_params()),
                     "cached": m.repo_id in cached})
    return rows
