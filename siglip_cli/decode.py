"""Image file -> RGB PIL image as the model should see it: one input's decoding, and nothing else.

First frame, EXIF orientation applied, any mode made RGB. Whatever goes wrong with one file becomes an
ImageError naming that file, so a run over many files goes on. No model, no torch: a decoder is cheap to
build and to send to another process.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

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
