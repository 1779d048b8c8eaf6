"""JPEG files -> (3, S, S) pixels, decoded on the model's device (nvjpeg on a CUDA GPU): the decode stage
for a GPU fast enough to outrun the CPU threads that decode with Pillow.

    dev = DeviceDecoder(embedder.decoder, "cuda")
    job = dev.read("a.jpg")         # on a worker thread: the bytes and the header, no pixels (None: CPU path)
    pixels = dev.decode([job])[0]   # (3, S, S) float32 on the device (None: the device failed on it)

Legend: C channels, H x W the decoded image, S the model's input side.

Worker threads only read a file and its header (format, size, mode, EXIF orientation). A whole batch is
decoded by one torchvision.io.decode_jpeg call on the device, then each image is turned as its EXIF
says, resized to S x S and normalised there, and goes to the model with no copy to the host. Only
8-bit baseline or progressive Huffman JPEGs (RGB or greyscale) that end with their end marker come
here; the CPU path (preprocess.Decoder, unchanged) decodes everything else: other formats, CMYK and
arithmetic-coded JPEGs, truncated files, images over --max-pixels (refused there, before decoding, with
the same message), and any file the device fails on, so a corrupt file gets the same error as without
a GPU and a JPEG that nvjpeg cannot decode is still embedded.

Exactness (the rules --exact-decode keeps): the resize is interpolate's antialiased bicubic (a = -0.5)
or bilinear, Pillow's filters, done as Pillow does it (horizontal pass first, rounded to 8 bits after
each pass), and the rescale and normalisation are Preprocessing.array's arithmetic as a table of 256
levels, so the same 8-bit pixels give the same numbers. With torchvision's CPU decoder (libjpeg, as in
Pillow) that leaves the float resize: at most 1-2 levels in 255, mean <= 0.05 (tests/test_gpu_decode.py;
rounding once instead would be off by up to 7). nvjpeg is another decoder: its IDCT differs, and by default
it repeats 4:2:0 chroma where libjpeg interpolates it (a simulation of that alone on the sample photos:
mean 0.2-0.9 levels at 224 px for small JPEGs, up to tens at sharp colour edges; <= 0.05 for camera-size
ones). JPEGs are never draft-decoded here: the device decodes the whole image. A resize the device
refuses (CUDA's antialiased kernels run out of shared memory past a ~90x reduction of a side, e.g. a
20,000 px panorama to 224) raises, and that image takes the CPU path.

torchvision is optional and imported inside functions only: without it (or without decode_jpeg, which
torchvision 0.29 deprecates) every image is decoded on the CPU.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from .decode import DRAFT_GAP, _allow_pixels, draft_scale, orientation
from .preprocess import Decoder

NAME = "gpu-jpeg"  # Embedder.metadata()["decode"] when this decodes the JPEGs
# Pillow's resize filter -> interpolate's mode with antialias=True (the same kernels; bicubic a = -0.5).
DEVICE_RESAMPLE = {"bicubic": "bicubic", "bilinear": "bilinear"}
# Decoded pixels per decode_jpeg call (3 bytes each): camera photos go 8 at a time (12 MP), a huge one alone.
BATCH_PIXELS = 100_000_000
# SOF0 baseline, SOF2 progressive (Huffman-coded): what nvjpeg decodes. Extended (SOF1), lossless,
# hierarchical and arithmetic-coded JPEGs, all rare, go to the CPU.
_PLAIN_FRAMES = (0xC0, 0xC2)
# torchvision >= 0.29 warns on every decode call; the warning is for library authors, not for users.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def torchvision_decode_jpeg() -> Callable | None:
    """torchvision.io.decode_jpeg, or None where torchvision is missing, broken or has none."""
    try:
        from torchvision.io import decode_jpeg
    except Exception:  # not installed, removed in a later release, or built for another torch
        return None
    return decode_jpeg


def use_device_decode(device: torch.device | str, exact_decode: bool, resample: str = "bicubic") -> bool:
    """The rule: JPEGs are decoded on the model's device when it is a CUDA GPU, torchvision decodes JPEGs,
    --exact-decode is off (Pillow's decode is the bit-exact one) and the resize filter is one interpolate
    has (bicubic, bilinear). Otherwise every image is decoded on the CPU threads, as without a GPU."""
    return (torch.device(device).type == "cuda" and not exact_decode and resample in DEVICE_RESAMPLE
            and torchvision_decode_jpeg() is not None)


def plain_jpeg(data: bytes | bytearray) -> bool:
    """An 8-bit baseline or progressive Huffman JPEG in YCbCr or grey, with an end marker after its first scan.

    Three components named R, G, B are stored as RGB, not YCbCr (libjpeg's rule): the CPU decodes those.
    The markers before the first scan are walked (each segment has its length); entropy-coded data
    never holds 0xFFD9 (a 0xFF there is followed by 0x00 or a restart marker), so a file cut off in a
    scan has none after it, and goes to Pillow, which says it is truncated.
    """
    if data[:2] != b"\xff\xd8":
        return False
    i, frame = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan
            return frame in _PLAIN_FRAMES and data.rfind(b"\xff\xd9") > i
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (not DHT/JPG/DAC)
            if frame is not None or i + 4 >= len(data) or data[i + 4] != 8:  # a second frame, or not 8-bit
                return False
            if data[i + 9:i + 10] == b"\x03" and data[i + 10:i + 17:3] == b"RGB":  # components' ids
                return False
            frame = marker
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


@dataclass
class JpegJob:
    """A JPEG read by a worker thread but not decoded: its bytes and what its header says."""

    data: torch.Tensor  # (L,) uint8: the whole file
    width: int  # as stored, before the EXIF turn
    height: int
    orientation: int  # EXIF 1-8 (decode.orientation)


def turn(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) turned as Pillow's transpose for this EXIF orientation turns it (decode._TRANSPOSE)."""
    if orientation in (5, 7):  # TRANSPOSE; TRANSVERSE is TRANSPOSE and a half turn
        x = x.transpose(-2, -1)  # (C, W, H)
    if orientation in (2, 3, 7):
        x = x.flip(-1)
    if orientation in (3, 4, 7):
        x = x.flip(-2)
    if orientation == 6:  # ROTATE_270: a quarter turn clockwise
        x = torch.rot90(x, -1, (-2, -1))  # (C, W, H)
    if orientation == 8:  # ROTATE_90: a quarter turn counter-clockwise
        x = torch.rot90(x, 1, (-2, -1))  # (C, W, H)
    return x


def _round8(x: torch.Tensor) -> torch.Tensor:
    """To 8-bit levels as Pillow's resize stores a pass's result: rounded half up, clipped to 0-255."""
    return x.add_(0.5).floor_().clamp_(0, 255)


class DeviceDecoder:
    """Batches of JPEGs -> (3, S, S) float32 pixels on `device`, with a CPU Decoder's preprocessing and
    --max-pixels. The device is a parameter: CUDA in `siglip embed`, the CPU in the tests."""

    name = NAME

    def __init__(self, decoder: Decoder, device: torch.device | str, batch_pixels: int = BATCH_PIXELS,
                 least_side: int | None = None):
        prep = decoder.preprocessing
        if prep.resample not in DEVICE_RESAMPLE:
            raise ValueError(f"no device resize for {prep.resample!r}: use one of {', '.join(DEVICE_RESAMPLE)}")
        self.decoder, self.device, self.batch_pixels = decoder, torch.device(device), batch_pixels
        self.mode, self.size = DEVICE_RESAMPLE[prep.resample], prep.image_size
        self.levels = torch.from_numpy(prep.levels().T.copy()).to(self.device)  # (3, 256)
        # Only the JPEGs the CPU default would draft-decode (decode.draft_scale: a DCT scale of 2 or more that
        # keeps each side >= 3x the input) go to the device: where the default is approximate anyway, and
        # the decode costs most. The others stay exact on the CPU, away from nvJPEG's chroma upsampling (it
        # repeats 4:2:0 colour where libjpeg interpolates it). least_side=0: every plain JPEG (tests).
        self.least_side = DRAFT_GAP * self.size if least_side is None else least_side

    def read(self, path: str | Path) -> JpegJob | None:
        """A plain JPEG's bytes and header; None for anything the CPU path is to decode (and to report
        as broken, too big or unreadable: this never raises for a file)."""
        try:
            if not os.path.isfile(path):  # a pipe would block; a missing file is the CPU path's error
                return None
            _allow_pixels(self.decoder.max_pixels)
            with open(path, "rb") as f:
                with Image.open(f, formats=["JPEG"]) as image:
                    width, height, mode, fmt = image.width, image.height, image.mode, image.format
                    turned = orientation(image)
                    stored_rgb = image.info.get("adobe_transform") == 0 and mode == "RGB"  # not YCbCr
                if fmt != "JPEG" or mode not in ("RGB", "L") or stored_rgb or width * height > self.decoder.max_pixels \
                        or (self.least_side and draft_scale((width, height), self.least_side) < 2):
                    return None  # MPO, CMYK, RGB, small, or refused by the CPU path before it decodes
                f.seek(0)
                data = bytearray(f.read())
        except Exception:
            return None
        if not plain_jpeg(data):
            return None
        return JpegJob(torch.frombuffer(data, dtype=torch.uint8), width, height, turned)

    def decode(self, jobs: list[JpegJob]) -> list[torch.Tensor | None]:
        """(3, S, S) float32 pixels on the device for each job, in order; None where the device failed."""
        out: list[torch.Tensor | None] = []
        for group in self._groups(jobs):
            raws = self._decode_group([job.data for job in group])
            for i, job in enumerate(group):
                raw, raws[i] = raws[i], None  # the decoded image is freed once resized
                try:
                    out.append(None if raw is None else self.pixels(raw, job))
                except Exception:  # e.g. out of GPU memory for one huge image: the CPU path decodes it
                    out.append(None)
        return out

    def pixels(self, raw: torch.Tensor, job: JpegJob) -> torch.Tensor:
        """(C, H, W) uint8 as decoded -> (3, S, S) float32: turned, resized, rescaled, normalised."""
        if raw.dim() != 3 or raw.shape[0] not in (1, 3) or tuple(raw.shape[1:]) != (job.height, job.width):
            raise ValueError(f"the device decoded {tuple(raw.shape)}, the header says {job.width}x{job.height}")
        x = turn(raw.expand(3, -1, -1), job.orientation).unsqueeze(0).float()  # (1, 3, H, W)
        s = self.size
        # Pillow resizes across, then down, rounding to 8 bits after each pass; a side already S is kept.
        if x.shape[-1] != s:
            x = _round8(F.interpolate(x, size=(x.shape[-2], s), mode=self.mode, antialias=True))  # (1, 3, H, S)
        if x.shape[-2] != s:
            x = _round8(F.interpolate(x, size=(s, s), mode=self.mode, antialias=True))  # (1, 3, S, S)
        return self.levels.gather(1, x.reshape(3, -1).long()).view(3, s, s)  # (3, S*S) -> (3, S, S)

    def finish(self, results: list, fallback: Callable) -> None:
        """Give the batch's results their pixels on the device, in place.

        A result whose embedding is a JpegJob gets its device pixels, or where the device fails on it,
        fallback(result.item)'s embedding and error (Embedder.prepare: the CPU path); pixels decoded on
        the CPU threads (PNGs ...) move to the device; failed results are left as they are.
        """
        jobs = [r for r in results if isinstance(r.embedding, JpegJob)]
        done = self.decode([r.embedding for r in jobs]) if jobs else []
        for r, pixels in zip(jobs, done):
            if pixels is None:
                cpu = fallback(r.item)
                r.embedding, r.error = cpu.embedding, cpu.error
            else:
                r.embedding = pixels
        for r in results:
            if isinstance(r.embedding, torch.Tensor):
                r.embedding = r.embedding.to(self.device)

    def _groups(self, jobs: list[JpegJob]) -> Iterator[list[JpegJob]]:
        """Consecutive jobs, up to batch_pixels decoded pixels a group (an image bigger than that alone)."""
        group: list[JpegJob] = []
        total = 0
        for job in jobs:
            if group and total + job.width * job.height > self.batch_pixels:
                yield group
                group, total = [], 0
            group.append(job)
            total += job.width * job.height
        if group:
            yield group

    def _decode_group(self, data: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """One batched decode; when it raises, each image alone, None for those that fail."""
        decode_jpeg = torchvision_decode_jpeg()
        if decode_jpeg is None:  # gone since the Embedder chose this path: the CPU path decodes them all
            return [None] * len(data)
        from torchvision.io import ImageReadMode  # importable, as decode_jpeg was

        def run(batch: list[torch.Tensor]) -> list[torch.Tensor]:
            # apply_exif_orientation only works on the CPU (torchvision ignores it for CUDA): turn() does it.
            return list(decode_jpeg(batch, mode=ImageReadMode.RGB, device=self.device))

        try:
            return run(data)
        except Exception:
            if len(data) == 1:
                return [None]
        out: list[torch.Tensor | None] = []
        for one in data:
            try:
                out.append(run([one])[0])
            except Exception:
                out.append(None)
        return out
