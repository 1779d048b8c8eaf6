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
    timm: str = ""  # the same weights as timm/<timm> (timm's layout) and timm/<open_clip> (open_clip's)
    open_clip: str = ""

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


# (hub id, family, vision preset, text preset, patch, image size, timm model, open_clip model): the same weights
# in timm's and open_clip's layouts, from timm 1.0's vision_transformer.py default_cfgs and open_clip 3.3's
# pretrained.py. Both are served as timm/<name> on the hub (siglip reads them too: `--model timm/<name>`).
_RELEASES = [
    ("google/siglip-base-patch16-224", "SigLIP", "base", "base", 16, 224,
     "vit_base_patch16_siglip_224.webli", "ViT-B-16-SigLIP"),
    ("google/siglip-base-patch16-256", "SigLIP", "base", "base", 16, 256,
     "vit_base_patch16_siglip_256.webli", "ViT-B-16-SigLIP-256"),
    ("google/siglip-base-patch16-384", "SigLIP", "base", "base", 16, 384,
     "vit_base_patch16_siglip_384.webli", "ViT-B-16-SigLIP-384"),
    ("google/siglip-base-patch16-512", "SigLIP", "base", "base", 16, 512,
     "vit_base_patch16_siglip_512.webli", "ViT-B-16-SigLIP-512"),
    ("google/siglip-base-patch16-256-multilingual", "SigLIP", "base", "base-multi", 16, 256,
     "vit_base_patch16_siglip_256.webli_i18n", "ViT-B-16-SigLIP-i18n-256"),
    ("google/siglip-large-patch16-256", "SigLIP", "large", "large", 16, 256,
     "vit_large_patch16_siglip_256.webli", "ViT-L-16-SigLIP-256"),
    ("google/siglip-large-patch16-384", "SigLIP", "large", "large", 16, 384,
     "vit_large_patch16_siglip_384.webli", "ViT-L-16-SigLIP-384"),
    ("google/siglip-so400m-patch14-224", "SigLIP", "so400m", "so400m", 14, 224,
     "vit_so400m_patch14_siglip_224.webli", "ViT-SO400M-14-SigLIP"),
    ("google/siglip-so400m-patch14-384", "SigLIP", "so400m", "so400m", 14, 384,
     "vit_so400m_patch14_siglip_384.webli", "ViT-SO400M-14-SigLIP-384"),
    ("google/siglip-so400m-patch16-256-i18n", "SigLIP", "so400m", "so400m-i18n", 16, 256,
     "vit_so400m_patch16_siglip_256.webli_i18n", "ViT-SO400M-16-SigLIP-i18n-256"),
    ("google/siglip2-base-patch16-224", "SigLIP 2", "base", "v2-base", 16, 224,
     "vit_base_patch16_siglip_224.v2_webli", "ViT-B-16-SigLIP2"),
    ("google/siglip2-base-patch16-256", "SigLIP 2", "base", "v2-base", 16, 256,
     "vit_base_patch16_siglip_256.v2_webli", "ViT-B-16-SigLIP2-256"),
    ("google/siglip2-base-patch16-384", "SigLIP 2", "base", "v2-base", 16, 384,
     "vit_base_patch16_siglip_384.v2_webli", "ViT-B-16-SigLIP2-384"),
    ("google/siglip2-base-patch16-512", "SigLIP 2", "base", "v2-base", 16, 512,
     "vit_base_patch16_siglip_512.v2_webli", "ViT-B-16-SigLIP2-512"),
    ("google/siglip2-base-patch32-256", "SigLIP 2", "base", "v2-base", 32, 256,
     "vit_base_patch32_siglip_256.v2_webli", "ViT-B-32-SigLIP2-256"),
    ("google/siglip2-large-patch16-256", "SigLIP 2", "large", "v2-large", 16, 256,
     "vit_large_patch16_siglip_256.v2_webli", "ViT-L-16-SigLIP2-256"),
    ("google/siglip2-large-patch16-384", "SigLIP 2", "large", "v2-large", 16, 384,
     "vit_large_patch16_siglip_384.v2_webli", "ViT-L-16-SigLIP2-384"),
    ("google/siglip2-large-patch16-512", "SigLIP 2", "large", "v2-large", 16, 512,
     "vit_large_patch16_siglip_512.v2_webli", "ViT-L-16-SigLIP2-512"),
    ("google/siglip2-so400m-patch14-224", "SigLIP 2", "so400m", "v2-so400m", 14, 224,
     "vit_so400m_patch14_siglip_224.v2_webli", "ViT-SO400M-14-SigLIP2"),
    # timm and open_clip call it 378 px, the 27 x 27 patches it really sees (transformers' config says 384).
    ("google/siglip2-so400m-patch14-384", "SigLIP 2", "so400m", "v2-so400m", 14, 384,
     "vit_so400m_patch14_siglip_378.v2_webli", "ViT-SO400M-14-SigLIP2-378"),
    ("google/siglip2-so400m-patch16-256", "SigLIP 2", "so400m", "v2-so400m", 16, 256,
     "vit_so400m_patch16_siglip_256.v2_webli", "ViT-SO400M-16-SigLIP2-256"),
    ("google/siglip2-so400m-patch16-384", "SigLIP 2", "so400m", "v2-so400m", 16, 384,
     "vit_so400m_patch16_siglip_384.v2_webli", "ViT-SO400M-16-SigLIP2-384"),
    ("google/siglip2-so400m-patch16-512", "SigLIP 2", "so400m", "v2-so400m", 16, 512,
     "vit_so400m_patch16_siglip_512.v2_webli", "ViT-SO400M-16-SigLIP2-512"),
    ("google/siglip2-giant-opt-patch16-256", "SigLIP 2", "giant", "v2-so400m", 16, 256,
     "vit_giantopt_patch16_siglip_256.v2_webli", "ViT-gopt-16-SigLIP2-256"),
    ("google/siglip2-giant-opt-patch16-384", "SigLIP 2", "giant", "v2-so400m", 16, 384,
     "vit_giantopt_patch16_siglip_384.v2_webli", "ViT-gopt-16-SigLIP2-384"),
]
KNOWN_MODELS: list[KnownModel] = [KnownModel(*r) for r in _RELEASES]


def _complete(names: set[str]) -> bool:
    """A snapshot that can be loaded: a config and weights (what a cut-off download lacks)."""
    return ("config.json" in names and bool({"model.safetensors", "model.safetensors.index.json"} & names)) or \
        {"open_clip_config.json", "open_clip_model.safetensors"} <= names


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
                     "cached": m.repo_id in cached, "timm": f"timm/{m.timm}", "open_clip": f"timm/{m.open_clip}"})
    return rows
