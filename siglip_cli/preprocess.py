"""Image file -> (3, S, S) float tensor, with one of two normalisation presets.

- `imagenet`: the seed documents' torchvision pipeline, Resize((S, S)) (bilinear), ToTensor,
  Normalize(ImageNet mean/std). Right for the seeds' untrained model, wrong for real SigLIP weights.
- `checkpoint`: what the checkpoint's preprocessor_config.json says. Real SigLIP weights were trained
  with a bicubic resize to S x S and mean = std = 0.5 (pixels in [-1, 1]); this preset equals
  transformers' SiglipImageProcessorPil.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CheckpointError, ImageError, UsageError

NORM_PRESETS = ("auto", "imagenet", "checkpoint")
# Pillow warns about corrupt EXIF blocks and large images from whichever thread decodes; the size
# limit is enforced below and a bad EXIF block only loses its orientation, so neither is worth a
# warning without a path on stderr. (catch_warnings is not thread-safe; module filters are.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
# Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): ~179 MP, e.g. 16000 x 11000.
DEFAULT_MAX_PIXELS = 178_956_970
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) only while every side keeps at
# least this many times the output size, so the bicubic resize still does the final filtering.
# Pillow documents a reducing gap of 3 as "indistinguishable from fair resampling in most cases";
# measured here: at most 2-3 levels in 255 on photos (mean 0.2), see the README. --exact-decode: off.
DRAFT_GAP = 3


def draft_scale(size: tuple[int, int], least: int) -> int:
    """The largest JPEG DCT scale (8, 4, 2) that divides both sides and keeps both >= least, else 1.

    Only exact divisors: with a partial last block the reduced image would cover a fraction of a
    pixel more than the photo, and resizing all of it would stretch the content (up to 7 levels).
    """
    width, height = size
    for scale in (8, 4, 2):
        if width % scale == 0 and height % scale == 0 and min(width, height) // scale >= least:
            return scale
    return 1
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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB.

    Transparency is composited onto white (as transformers' convert_to_rgb does). 16/32-bit integer
    and float images are stretched from their own min..max to 0..255, where a plain convert would
    clip them to white or black.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        a = np.asarray(image, dtype=np.float64)
        finite = a[np.isfinite(a)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        a = np.nan_to_num((a - lo) * (255.0 / (hi - lo)), nan=0.0) if hi > lo else np.clip(a, 0, 255)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None) -> Image.Image:
    """Decode an image file as the model should see it: first frame, EXIF orientation applied, RGB.

    Images over max_pixels are refused before decoding (decompression bombs), quickly and cheaply.
    draft=S lets a JPEG decode at a reduced scale (1/2, 1/4, 1/8) that keeps both sides >= S pixels
    and divides them exactly: several times faster for camera photos; other formats decode whole.
    """
    name = str(path)
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise ImageError(name, "not a regular file (a pipe, socket or device)")
    # Pillow itself refuses images over twice this while opening (some formats hide huge frames);
    # the size check below is the exact limit.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(path)
        with image:
            if image.width * image.height > max_pixels:
                raise ImageError(name, f"too many pixels ({image.width}x{image.height} = "
                                       f"{image.width * image.height:,} > --max-pixels {max_pixels:,})")
            scale = draft_scale(image.size, draft) if draft else 1
            if scale > 1:  # draft() is a no-op for formats other than JPEG
                image.draft(None, (image.width // scale, image.height // scale))
            image.load()  # decode now: truncation and corrupt data surface here, not later
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except FileNotFoundError:
        raise ImageError(name, "no such file") from None
    except IsADirectoryError:
        raise ImageError(name, "is a directory, not an image") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(name, "not an image Pillow can read") from None
    except Image.DecompressionBombError:
        raise ImageError(name, f"too many pixels (over --max-pixels {max_pixels:,}): refused as a possible "
                               "decompression bomb") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(name, f"cannot decode image ({e})") from None
