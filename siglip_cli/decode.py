"""Image file -> RGB PIL image as the model should see it: one input's decoding, and nothing else.

First frame, EXIF orientation applied, any mode made RGB. Whatever goes wrong with one file becomes an
ImageError naming that file, so a run over many files goes on. No model, no torch: a decoder is cheap to
build and to send to another process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from .errors import ImageError

# Pillow warns about corrupt EXIF blocks and large images from whichever thread decodes; the size
# limit is enforced below and a bad EXIF block only loses its orientation, so neither is worth a
# warning without a path on stderr. (catch_warnings is not thread-safe; module filters are.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
warnings.filterwarnings("ignore", message="Image was not the expected size", category=UserWarning)  # ICO
# Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): ~179 MP, e.g. 16000 x 11000.
DEFAULT_MAX_PIXELS = 178_956_970
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) only while every side keeps at
# least this many times the output size, so the bicubic resize still does the final filtering.
# Pillow documents a reducing gap of 3 as "indistinguishable from fair resampling in most cases";
# measured here: at most 2-3 levels in 255 on photos (mean 0.2), see the README. --exact-decode: off.
DRAFT_GAP = 3
T = TypeVar("T")


def _quiet_libtiff() -> None:
    """Stop libtiff (inside Pillow) printing its own warnings and errors on stderr with no file name
    ("ZIPDecode: Decoding error", "tempfile.tif: Using code not yet in table"): a broken TIFF is
    reported once, by siglip, as `path: reason`. Best effort, and only on the libtiff already loaded
    (RTLD_NOLOAD): Pillow's wheels bundle it in pillow.libs/, other builds use the system's."""
    import ctypes
    import ctypes.util
    import glob

    from PIL import _imaging

    bundled = os.path.join(os.path.dirname(os.path.dirname(_imaging.__file__)), "pillow.libs", "libtiff*")
    for path in [*glob.glob(bundled), ctypes.util.find_library("tiff")]:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
            lib.TIFFSetErrorHandler(None)
            lib.TIFFSetWarningHandler(None)
            return
        except (OSError, AttributeError, TypeError):
            continue


_quiet_libtiff()


def prefetch(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator:
    """fn(item) for each item on `workers` threads, results in input order, at most `window` in flight.

    Pillow and NumPy release the GIL while decoding and resizing, so threads overlap with the model.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="siglip-decode") as pool:
        pending: deque = deque()
        it = iter(items)
        for item in itertools.islice(it, window):
            pending.append(pool.submit(fn, item))
        try:
            while pending:
                future = pending.popleft()
                for item in itertools.islice(it, 1):
                    pending.append(pool.submit(fn, item))
                yield future.result()
        finally:
            for future in pending:
                future.cancel()


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


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def default_decode_memory() -> int:
    """The default budget for decoded images in flight: a quarter of the machine's memory, 2-8 GB."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        ram = 16 << 30
    return int(min(max(ram // 4, 2 << 30), 8 << 30))


def decode_bytes(mode: str, size: tuple[int, int]) -> int:
    """What decoding an image of this mode and size costs at its peak, in bytes (an upper estimate).

    Pillow holds 1 byte a pixel for 1/L/P, 2 for 16-bit, 4 for everything else (RGB too); the decoded
    image may be copied once (EXIF rotation); then come the RGB result (4), for transparency an RGBA
    copy and a composite (8), and for 16/32-bit and float images a NumPy copy and the 8-bit image.
    """
    raw = 2 if mode.startswith("I;16") else 1 if mode in ("1", "L", "P") else 4
    extra = 0 if mode == "RGB" else 4
    if mode in ("I", "F") or mode.startswith("I;"):
        extra += raw + 2
    if "A" in mode or mode in ("P", "L", "1"):  # P/L/1 may carry a transparency key
        extra += 8
    return size[0] * size[1] * (2 * raw + extra)


class DecodeBudget:
    """At most `limit` bytes of decoded images in flight across decoding threads.

    A tiny file can declare a huge image (a 1 KB TIFF of 156 MP at 16 bits); each decode reserves its
    estimated peak before decoding and gives it back when its pixels are resized, so N workers never
    hold N huge images at once. An image that alone needs more than the limit is refused.
    """

    def __init__(self, limit: int | None = None):
        self._asked = limit
        self.limit = default_decode_memory() if limit is None else int(limit)
        self.used = 0
        self._cv = threading.Condition()

    def __reduce__(self):
        # A budget is per process: a copy sent elsewhere starts empty, with its own lock (and the
        # default of the machine it lands on, when none was given).
        return DecodeBudget, (self._asked,)

    @contextlib.contextmanager
    def hold(self, nbytes: int, name: str, what: str):
        if nbytes > self.limit:
            raise ImageError(name, f"needs ~{_gb(nbytes)} to decode ({what}), more than the decode memory "
                                   f"budget of {_gb(self.limit)}: raise --decode-memory to embed it")
        with self._cv:
            self._cv.wait_for(lambda: self.used + nbytes <= self.limit)
            self.used += nbytes
        try:
            yield
        finally:
            with self._cv:
                self.used -= nbytes
                self._cv.notify_all()


_pillow_limit = threading.Lock()


def _allow_pixels(max_pixels: int) -> None:
    """Pillow refuses images over twice Image.MAX_IMAGE_PIXELS while opening, frames some formats hide
    behind a small canvas too. That limit is shared by every thread and by the user's own code, so it is
    only ever raised, to the largest --max-pixels asked for (never per image, never lowered, and left
    alone when the user turned it off); the exact limit is checked in load_image."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        with _pillow_limit:
            if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
                Image.MAX_IMAGE_PIXELS = max_pixels


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB.

    Transparency is composited onto white (as transformers' convert_to_rgb does). 16/32-bit integer
    and float images are stretched from their own min..max to 0..255, where a plain convert would
    clip them to white or black; this runs in bands of rows, so it needs little memory beyond the image.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        a = np.asarray(image)
        if a.dtype.kind == "f":  # the range of the finite values (NaN and inf would make it meaningless)
            finite = np.isfinite(a)
            lo, hi = float(a.min(where=finite, initial=np.inf)), float(a.max(where=finite, initial=-np.inf))
            del finite
        else:
            lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        out = np.empty(a.shape, dtype=np.uint8)
        rows = max(1, (1 << 20) // max(1, a.shape[1]))
        with np.errstate(invalid="ignore", over="ignore"):  # signalling NaNs and infs: mapped just below
            for r in range(0, a.shape[0], rows):
                band = a[r:r + rows].astype(np.float64)
                band = (band - lo) * (255.0 / (hi - lo)) if hi > lo else band
                out[r:r + rows] = np.clip(np.rint(np.nan_to_num(band, nan=0.0)), 0, 255)
        del a
        return Image.fromarray(out, "L").convert("RGB")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None,
               budget: DecodeBudget | None = None, then: Callable[[Image.Image], T] | None = None):
    """Decode an image file as the model should see it: first frame, EXIF orientation applied, RGB.

    Images over max_pixels are refused before decoding (decompression bombs), quickly and cheaply.
    draft=S lets a JPEG decode at a reduced scale (1/2, 1/4, 1/8) that keeps both sides >= S pixels
    and divides them exactly: several times faster for camera photos; other formats decode whole.
    With a budget, the decode waits until its estimated memory fits (see DecodeBudget); then(rgb),
    e.g. the resize, runs while that memory is still held, and its result is returned.
    Anything that goes wrong is an ImageError naming the file: one input's failure, never the run's.
    """
    name = str(path)
    try:
        if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
            raise ImageError(name, "not a regular file (a pipe, socket or device)")
        _allow_pixels(max_pixels)
        image = Image.open(path)
        with image:
            pixels = image.width * image.height
            if pixels > 2 * max_pixels:  # where Pillow gives up while opening: the same refusal, at this limit
                raise Image.DecompressionBombError(pixels)
            if pixels > max_pixels:
                raise ImageError(name, f"too many pixels ({image.width}x{image.height} = {pixels:,} > "
                                       f"--max-pixels {max_pixels:,})")
            scale = draft_scale(image.size, draft) if draft else 1
            if scale > 1:  # draft() is a no-op for formats other than JPEG
                image.draft(None, (image.width // scale, image.height // scale))
            cost = decode_bytes(image.mode, image.size)
            what = f"{image.width}x{image.height} {image.mode}"
            with budget.hold(cost, name, what) if budget is not None else contextlib.nullcontext():
                image.load()  # decode now: truncation and corrupt data surface here, not later
                image = _oriented(image)
                rgb = to_rgb(image)
                return then(rgb) if then is not None else rgb
    except ImageError:
        raise
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
    except MemoryError:
        raise ImageError(name, "out of memory while decoding it") from None
    except OSError as e:
        if e.errno is not None:  # the file system's error (a name too long, an I/O error), not the decoder's
            raise ImageError(name, f"cannot read it: {e.strerror or e}") from None
        raise ImageError(name, f"cannot decode image ({e})") from None
    except (ValueError, SyntaxError, EOFError) as e:
        raise ImageError(name, f"cannot decode image ({e})") from None
    except Exception as e:  # a plug-in's or an EXIF parser's bug (TypeError, struct.error ...): this file only
        raise ImageError(name, f"cannot decode image ({type(e).__name__}: {e})") from None


# EXIF orientation -> the transpose that undoes it (ImageOps.exif_transpose's table).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def orientation(image: Image.Image) -> int:
    """An opened image's EXIF (or XMP) orientation, 1-8; 1 when it has none, or a malformed block."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _oriented(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF (or XMP) orientation says, as ImageOps.exif_transpose turns it.

    Only the pixels are turned (exif_transpose also rewrites the metadata, and raises on malformed
    blocks). A malformed EXIF block, common in real photo collections, only loses the orientation:
    the pixels are fine, so the image is still embedded.
    """
    method = _TRANSPOSE.get(orientation(image))
    return image.transpose(method) if method is not None else image
