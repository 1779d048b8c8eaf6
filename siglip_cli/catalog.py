"""The released SigLIP and SigLIP 2 fixed-resolution checkpoints, for `siglip models`.

Sizes come from config.PRESETS and TEXT_PRESETS (the one place they are written down); parameter
counts from the configs (equal to the built models', tested), so listing needs no torch. Download
sizes are estimates: the full checkpoint (vision + text tower, stored in float32)
is what the hub serves, so they are 4 bytes per parameter of both towers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import PRESETS, TEXT_PRESETS, SiglipConfig, SiglipVisionConfig
from .errors import UsageError


@dataclass(frozen=True)
class KnownModel:
    repo_id: str
    family: str  # "SigLIP" or "SigLIP 2"
    vision: str  # a key of config.PRESETS
    text: str  # a key of config.TEXT_PRESETS
    patch_size: int
    image_size: int

    @property
    def config(self) -> SiglipVisionConfig:
        return replace(PRESETS[self.vision], patch_size=self.patch_size, image_size=self.image_size)

    @property
    def full_config(self) -> SiglipConfig:
        """Both towers; the text head projects into the vision width (giant-opt: 1152 -> 1536)."""
        vision = self.config
        return SiglipConfig(vision, replace(TEXT_PRESETS[self.text], projection_size=vision.hidden_size))

    def text_params(self) -> int:
        return self.full_config.num_parameters() - self.config.num_parameters()  # + logit scale and bias


KNOWN_MODELS: list[KnownModel] = [
    KnownModel("google/siglip-base-patch16-224", "SigLIP", "base", "base", 16, 224),
    KnownModel("google/siglip-base-patch16-256", "SigLIP", "base", "base", 16, 256),
    KnownModel("google/siglip-base-patch16-384", "SigLIP", "base", "base", 16, 384),
    KnownModel("google/siglip-base-patch16-512", "SigLIP", "base", "base", 16, 512),
    KnownModel("google/siglip-base-patch16-256-multilingual", "SigLIP", "base", "base-multi", 16, 256),
    KnownModel("google/siglip-large-patch16-256", "SigLIP", "large", "large", 16, 256),
    KnownModel("google/siglip-large-patch16-384", "SigLIP", "large", "large", 16, 384),
    KnownModel("google/siglip-so400m-patch14-224", "SigLIP", "so400m", "so400m", 14, 224),
    KnownModel("google/siglip-so400m-patch14-384", "SigLIP", "so400m", "so400m", 14, 384),
    KnownModel("google/siglip-so400m-patch16-256-i18n", "SigLIP", "so400m", "so400m-i18n", 16, 256),
    KnownModel("google/siglip2-base-patch16-224", "SigLIP 2", "base", "v2-base", 16, 224),
    KnownModel("google/siglip2-base-patch16-256", "SigLIP 2", "base", "v2-base", 16, 256),
    KnownModel("google/siglip2-base-patch16-384", "SigLIP 2", "base", "v2-base", 16, 384),
    KnownModel("google/siglip2-base-patch16-512", "SigLIP 2", "base", "v2-base", 16, 512),
    KnownModel("google/siglip2-base-patch32-256", "SigLIP 2", "base", "v2-base", 32, 256),
    KnownModel("google/siglip2-large-patch16-256", "SigLIP 2", "large", "v2-large", 16, 256),
    KnownModel("google/siglip2-large-patch16-384", "SigLIP 2", "large", "v2-large", 16, 384),
    KnownModel("google/siglip2-large-patch16-512", "SigLIP 2", "large", "v2-large", 16, 512),
    KnownModel("google/siglip2-so400m-patch14-224", "SigLIP 2", "so400m", "v2-so400m", 14, 224),
    KnownModel("google/siglip2-so400m-patch14-384", "SigLIP 2", "so400m", "v2-so400m", 14, 384),
    KnownModel("google/siglip2-so400m-patch16-256", "SigLIP 2", "so400m", "v2-so400m", 16, 256),
    KnownModel("google/siglip2-so400m-patch16-384", "SigLIP 2", "so400m", "v2-so400m", 16, 384),
    KnownModel("google/siglip2-so400m-patch16-512", "SigLIP 2", "so400m", "v2-so400m", 16, 512),
    KnownModel("google/siglip2-giant-opt-patch16-256", "SigLIP 2", "giant", "v2-so400m", 16, 256),
    KnownModel("google/siglip2-giant-opt-patch16-384", "SigLIP 2", "giant", "v2-so400m", 16, 384),
]


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
        vp = c.num_parameters()  # equal to the built model's count (tests/test_config.py)
        rows.append({"id": m.repo_id, "family": m.family, "width": c.hidden_size, "depth": c.num_hidden_layers,
                     "patch": c.patch_size, "resolution": c.image_size, "tokens": c.num_patches,
                     "vision_params": vp, "download_bytes": 4 * (vp + m.text_params()),
                     "cached": m.repo_id in cached})
    return rows
