"""Image file -> (3, S, S) float tensor, with one of two normalisation presets.

- `imagenet`: the seed documents' torchvision pipeline, Resize((S, S)) (bilinear), ToTensor,
  Normalize(ImageNet mean/std). Right for the seeds' untrained model, wrong for real SigLIP weights.
- `checkpoint`: what the checkpoint's preprocessor_config.json says. Real SigLIP weights were trained
  with a bicubic resize to S x S and mean = std = 0.5 (pixels in [-1, 1]); this preset equals
  transformers' SiglipImageProcessorPil.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .decode import DEFAULT_MAX_PIXELS, DRAFT_GAP, draft_scale, load_image, to_rgb  # noqa: F401 (public here too)
from .errors import CheckpointError, UsageError

NORM_PRESETS = ("auto", "imagenet", "checkpoint")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# PIL's resampling filters by the names (and the integer codes) preprocessor configs use.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
             "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


@dataclass(frozen=True)
class Preprocessing:
    """A resize to image_size x image_size, a rescale, and a per-channel normalisation."""

    preset: str
    image_size: int
    resample: str
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> (3, S, S) float32."""
        image = image.resize((self.image_size, self.image_size), resample=_RESAMPLE[self.resample])
        # float64 for the rescale, then float32: the same arithmetic as transformers' processor.
        x = (np.asarray(image, dtype=np.float64) * self.rescale_factor).astype(np.float32)  # (S, S, 3)
        x = (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (3, S, S)

    def to_metadata(self) -> dict[str, object]:
        return asdict(self)


def imagenet_preprocessing(image_size: int) -> Preprocessing:
    return Preprocessing("imagenet", image_size, "bilinear", 1 / 255, IMAGENET_MEAN, IMAGENET_STD)


def checkpoint_preprocessing(config: dict, image_size: int | None, where: str = "checkpoint") -> Preprocessing:
    """The preset a SigLIP preprocessor_config.json describes (SiglipImageProcessor semantics)."""
    size = config.get("size") or {}
    native = size.get("height") if isinstance(size, dict) else size
    if isinstance(size, dict) and size.get("height") != size.get("width"):
        raise CheckpointError(f"{where}: preprocessor_config.json size {size} is not square: "
                              "only square SigLIP checkpoints are supported")
    if not config.get("do_resize", True) or not isinstance(native, int):
        raise CheckpointError(f"{where}: preprocessor_config.json has no square resize size: "
                              "use --norm imagenet")
    resample = config.get("resample", 2)
    resample = RESAMPLE_NAMES.get(resample, resample) if isinstance(resample, int) else str(resample).lower()
    if resample not in _RESAMPLE:
        raise CheckpointError(f"{where}: preprocessor_config.json resample {resample!r} is not supported")
    rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
    if config.get("do_normalize", True):
        mean, std = config.get("image_mean", IMAGENET_MEAN), config.get("image_std", IMAGENET_STD)
        mean = tuple(float(v) for v in (mean if isinstance(mean, list) else [mean] * 3))
        std = tuple(float(v) for v in (std if isinstance(std, list) else [std] * 3))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Preprocessing("checkpoint", image_size or native, resample, rescale, mean, std)


def choose_preprocessing(norm: str, preprocessor_config: dict | None, model_image_size: int,
                         image_size: int | None = None, where: str = "checkpoint") -> Preprocessing:
    """--norm auto|imagenet|checkpoint -> a Preprocessing (auto: the checkpoint's own when it has one).

    image_size overrides the resolution; by default it is the checkpoint's (or the model config's).
    """
    if norm not in NORM_PRESETS:
        raise UsageError(f"unknown --norm {norm!r}: use one of {', '.join(NORM_PRESETS)}")
    if norm == "imagenet" or (norm == "auto" and preprocessor_config is None):
        return imagenet_preprocessing(image_size or model_image_size)
    if preprocessor_config is None:
        raise UsageError(f"{where} has no preprocessor_config.json, so --norm checkpoint has nothing to follow: "
                         "use --norm imagenet or --norm auto")
    return checkpoint_preprocessing(preprocessor_config, image_size, where)
