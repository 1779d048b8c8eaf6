"""Image file -> (3, S, S) float pixels, with one of two normalisation presets: the decode stage.

- `imagenet`: the seed documents' torchvision pipeline, Resize((S, S)) (bilinear), ToTensor,
  Normalize(ImageNet mean/std). Right for the seeds' untrained model, wrong for real SigLIP weights.
- `checkpoint`: what the checkpoint's preprocessor_config.json says. Real SigLIP weights were trained
  with a bicubic resize to S x S and mean = std = 0.5 (pixels in [-1, 1]); this preset equals
  transformers' SiglipImageProcessorPil.

A Decoder (file -> NumPy pixels) holds no model and no open file, and pickles: a Ray actor or a process
pool decodes with the same code as `siglip embed`. torch is imported only for `Preprocessing(image)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .choices import NORMS
from .config import MAX_IMAGE_SIZE, is_int, is_number, shown
from .decode import DEFAULT_MAX_PIXELS, DRAFT_GAP, DecodeBudget, load_image, to_rgb
from .decode import draft_scale  # noqa: F401 (public here too)
from .errors import CheckpointError, UsageError

NORM_PRESETS = NORMS
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What transformers' SiglipImageProcessor uses for a key its preprocessor_config.json leaves out.
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
SIGLIP_RESAMPLE = 3  # bicubic
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

    def array(self, image: Image.Image) -> np.ndarray:
        """An RGB PIL image -> (3, S, S) float32 NumPy."""
        image = image.resize((self.image_size, self.image_size), resample=_RESAMPLE[self.resample])
        return np.ascontiguousarray(self._normalise(np.asarray(image)).transpose(2, 0, 1))  # (3, S, S)

    def _normalise(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) 8-bit RGB -> float32, rescaled and normalised per channel."""
        # float64 for the rescale, then float32: the same arithmetic as transformers' processor.
        x = (np.asarray(rgb, dtype=np.float64) * self.rescale_factor).astype(np.float32)
        return (x - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)

    def levels(self) -> np.ndarray:
        """What each 8-bit level becomes in each channel, (256, 3) float32: array()'s arithmetic as a
        table, so pixels resized elsewhere (on a GPU) are normalised to the same numbers."""
        return self._normalise(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))

    def __call__(self, image: Image.Image):
        """An RGB PIL image -> (3, S, S) float32 torch tensor (sharing the NumPy array's memory)."""
        import torch

        return torch.from_numpy(self.array(image))


class Decoder:
    """One image (a file, or a PIL image) -> (3, S, S) float32 NumPy pixels, ready for the model.

    Holds the preprocessing, the --max-pixels limit, the JPEG draft size and the decode memory budget;
    no model and no open file, so it pickles. The budget is per process: a copy starts with its own.
    """

    def __init__(self, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS,
                 exact_decode: bool = False, decode_memory: int | None = None):
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        # JPEGs decode at reduced scale while >= DRAFT_GAP x the output size (see decode.DRAFT_GAP).
        self.draft = None if exact_decode else preprocessing.image_size * DRAFT_GAP
        # Decoded images in flight on all threads together stay under this many bytes (default: a
        # quarter of the machine's memory, 2-8 GB): a tiny file can declare a huge image.
        self.budget = DecodeBudget(decode_memory)

    def __call__(self, image: str | Path | Image.Image) -> np.ndarray:
        """Raises ImageError naming the file for anything that goes wrong with it."""
        if isinstance(image, Image.Image):
            return self.preprocessing.array(to_rgb(image))
        return load_image(image, max_pixels=self.max_pixels, draft=self.draft, budget=self.budget,
                          then=self.preprocessing.array)


def imagenet_preprocessing(image_size: int) -> Preprocessing:
    return Preprocessing("imagenet", image_size, "bilinear", 1 / 255, IMAGENET_MEAN, IMAGENET_STD)


def checkpoint_preprocessing(config: dict, image_size: int | None, where: str = "checkpoint") -> Preprocessing:
    """The preset a SigLIP preprocessor_config.json describes (SiglipImageProcessor semantics).

    Every value is checked: the file is data from the internet, and a wrong type would otherwise be a
    traceback, or worse, silently different numbers (a "false" string is truthy; a std of 0 divides by zero).
    """
    file = f"{where}: preprocessor_config.json"

    def bad(key: str, value: object, expected: str) -> CheckpointError:
        return CheckpointError(f"{file} {key} is {shown(value)}: expected {expected}: fix preprocessor_config.json")

    def flag(key: str) -> bool:
        value = config.get(key, True)
        if not isinstance(value, bool):
            raise bad(key, value, "true or false")
        return value

    def channels(key: str, default: tuple[float, float, float], positive: bool) -> tuple[float, float, float]:
        value = config.get(key, default)
        values = [value] * 3 if is_number(value) else value  # one number: the same for R, G and B
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(map(is_number, values)) \
                or (positive and min(values) <= 0):
            raise bad(key, value, f"3 numbers (R, G, B){', each above 0' if positive else ''}, or one number")
        return tuple(float(v) for v in values)

    size = config.get("size")
    if isinstance(size, dict):
        height, width = size.get("height"), size.get("width")
        if height != width:
            raise CheckpointError(f"{file} size {shown(size)} is not square: only square SigLIP checkpoints are "
                                  "supported")
        if not is_int(height) or not 1 <= height <= MAX_IMAGE_SIZE:
            raise CheckpointError(f"{file} size is {shown(height)} x {shown(width)}: expected a side from 1 to "
                                  f"{MAX_IMAGE_SIZE} px: fix preprocessor_config.json")
        native = height
    elif size is not None and (not is_int(size) or not 1 <= size <= MAX_IMAGE_SIZE):
        raise bad("size", size, f'{{"height": S, "width": S}} with S from 1 to {MAX_IMAGE_SIZE}')
    else:
        native = size
    if not flag("do_resize") or native is None:
        raise CheckpointError(f"{file} has no square resize size: use --norm imagenet")
    resample = config.get("resample", SIGLIP_RESAMPLE)
    name = RESAMPLE_NAMES.get(resample) if is_int(resample) else None
    if isinstance(resample, str):
        name = resample.lower()
    if name not in _RESAMPLE:
        raise bad("resample", resample, f"one of {', '.join(_RESAMPLE)} or its number 0-5")
    rescale = 1.0
    if flag("do_rescale"):
        rescale = config.get("rescale_factor", 1 / 255)
        if not is_number(rescale) or rescale <= 0:
            raise bad("rescale_factor", rescale, "a number above 0 (SigLIP's is 1/255)")
    if flag("do_normalize"):
        mean, std = channels("image_mean", SIGLIP_MEAN, False), channels("image_std", SIGLIP_STD, True)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return Preprocessing("checkpoint", image_size or native, name, float(rescale), mean, std)


def choose_preprocessing(norm: str, preprocessor_config: dict | None, model_image_size: int,
                         image_size: int | None = None, where: str = "checkpoint") -> Preprocessing:
    """--norm auto|imagenet|checkpoint -> a Preprocessing (auto: the checkpoint's own when it has one).

    image_size overrides the resolution; by default it is the checkpoint's (or the model config's).
    """
    if norm not in NORMS:
        raise UsageError(f"unknown --norm {norm!r}: use one of {', '.join(NORMS)}")
    if norm == "imagenet" or (norm == "auto" and preprocessor_config is None):
        return imagenet_preprocessing(image_size or model_image_size)
    if preprocessor_config is None:
        raise UsageError(f"{where} has no preprocessor_config.json, so --norm checkpoint has nothing to follow: "
                         "use --norm imagenet or --norm auto")
    return checkpoint_preprocessing(preprocessor_config, image_size, where)
