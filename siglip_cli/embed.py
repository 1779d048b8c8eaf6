"""Images -> embeddings: the decode stage and the model stage together, for the CLI and for notebooks.

    from siglip_cli.embed import Embedder
    emb = Embedder.load("google/siglip-base-patch16-224", pool="map")
    vectors = emb.embed(["a.jpg", "b.png"])          # (2, 768) float32 numpy

The stages also work apart (a Ray actor, a process pool): `emb.decoder` (preprocess.Decoder) turns a
file into (3, S, S) pixels with no model and pickles; `emb.embed_pixels` turns (B, 3, S, S) pixels into
embeddings on the model's device; batch.py and writers.py write them. On a CUDA GPU, embed_iter has the
JPEGs decoded there (`emb.device_decoder`, gpu_decode.py); None: every image on the CPU threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from . import __version__
from .checkpoint import ModelSource
from .choices import DEVICES, POOLS
from .config import check_image_size
from .decode import DEFAULT_MAX_PIXELS, prefetch
from .errors import ImageError, UsageError
from .gpu_decode import DeviceDecoder, use_device_decode
from .model import SiglipVisionModel
from .precision import set_precision
from .preprocess import Decoder, Preprocessing, choose_preprocessing

NO_HEAD = ("this checkpoint has no attention-pooling head (vision_use_head: false): "
           "use --pool mean or --pool none")


def pick_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise UsageError(f"unknown --device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is available to this torch build: use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps: Apple's MPS backend is not available here: use --device cpu")
    return torch.device(device)


@dataclass
class Result:
    """One input's outcome: its embedding, or the reason it failed."""

    source: str
    embedding: np.ndarray | None = None
    error: str | None = None
    item: object = None  # what the caller passed in, for its own bookkeeping


def default_workers() -> int:
    """Decode threads: enough to keep the model fed, leaving the cores to the model's matmuls."""
    return max(1, min(8, (os.cpu_count() or 1)))


def check_load_options(model: object, random_init: bool, image_size: int | None) -> None:
    """What Embedder.load refuses before any model is looked up (the CLI checks it before resolving)."""
    if random_init and model is not None:
        raise UsageError("use either --model or --random-init, not both")
    if image_size is not None and image_size <= 0:
        raise UsageError(f"--image-size must be positive, got {image_size}")


class Embedder:
    """A model on its device at its precision (the model stage), with its Decoder (the decode stage).

    dtype/quantize convert the model passed in, in place (as --dtype/--quantize); exact_decode turns
    JPEG draft decoding off, and the GPU JPEG decode (gpu_decode.use_device_decode says when it runs).
    """

    def __init__(self, model: SiglipVisionModel, preprocessing: Preprocessing, pool: str = "none",
                 device: str = "auto", max_pixels: int = DEFAULT_MAX_PIXELS, dtype: str = "float32",
                 quantize: str = "none", exact_decode: bool = False, decode_memory: int | None = None):
        if pool not in POOLS:
            raise UsageError(f"unknown --pool {pool!r}: use one of {', '.join(POOLS)}")
        if pool == "map" and not model.has_head:
            raise UsageError(NO_HEAD)
        check_image_size(preprocessing.image_size, model.config)
        # int8 kernels are CPU kernels: "auto" means the CPU then, an explicit GPU is an error.
        self.device = pick_device("cpu" if quantize == "int8" and device == "auto" else device)
        self.model = set_precision(model.to(self.device), dtype, quantize, self.device).eval()
        self.pool = pool
        self.dtype, self.quantize = dtype, quantize
        self.decoder = Decoder(preprocessing, max_pixels, exact_decode, decode_memory)
        self.device_decoder = (DeviceDecoder(self.decoder, self.device)
                               if use_device_decode(self.device, exact_decode, preprocessing.resample) else None)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.decoder.preprocessing

    @property
    def max_pixels(self) -> int:
        return self.decoder.max_pixels

    @property
    def draft(self) -> int | None:
        return self.decoder.draft

    @property
    def budget(self):
        return self.decoder.budget

    @classmethod
    def load(cls, model: str | Path | ModelSource | None = None, *, random_init: bool = False, pool: str = "none",
             norm: str = "auto", image_size: int | None = None, device: str = "auto",
             max_pixels: int = DEFAULT_MAX_PIXELS, dtype: str = "float32", quantize: str = "none",
             exact_decode: bool = False, decode_memory: int | None = None, offline: bool = False,
             cache_dir: Path | None = None, note=None) -> Embedder:
        """A checkpoint (a ModelSource, a directory, or a hub id: default google/siglip-base-patch16-224,
        from the Hugging Face cache or downloaded into it), or the seeded untrained base model.

        A name is resolved by hub.resolve_model, which alone takes offline, cache_dir and note (remarks
        for the user); a ModelSource is used as it is.
        """
        check_load_options(model, random_init, image_size)
        if random_init:
            net = SiglipVisionModel.random_init()
        else:
            from .weights import load_model

            if not isinstance(model, ModelSource):
                from .hub import resolve_model

                model = resolve_model(None if model is None else str(model), offline=offline, cache_dir=cache_dir,
                                      note=note)
            net = load_model(SiglipVisionModel, model)
        if image_size is not None:
            check_image_size(image_size, net.config)
        prep = choose_preprocessing(norm, net.preprocessor_config, net.config.image_size, image_size,
                                    where=str(net.name_or_path))
        return cls(net, prep, pool=pool, device=device, max_pixels=max_pixels, dtype=dtype, quantize=quantize,
                   exact_decode=exact_decode, decode_memory=decode_memory)

    def metadata(self) -> dict[str, object]:
        """What produced these embeddings: recorded in every output file."""
        p = self.preprocessing
        return {
            "model": self.model.name_or_path or "",
            "revision": self.model.revision or "",
            "model_fingerprint": self.model.fingerprint or "",
            "pool": self.pool,
            "norm": p.preset,
            "image_mean": list(p.mean),
            "image_std": list(p.std),
            "resample": p.resample,
            "rescale_factor": p.rescale_factor,
            "image_size": p.image_size,
            "dtype": "float32",
            "compute_dtype": self.dtype,
            "quantize": self.quantize,
            "decode": self.device_decoder.name if self.device_decoder is not None else
                      "exact" if self.draft is None else f"jpeg-draft>={self.draft}px",
            "siglip_cli_version": __version__,
        }

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, 3, S, S) preprocessed pixels -> (B, N, D) or (B, D) float32 numpy: the model stage."""
        pixel_values = torch.as_tensor(pixel_values)
        out = self.model.embed(pixel_values.to(self.device), self.pool)
        return out.float().cpu().numpy()

    def decode(self, path: str | Path) -> torch.Tensor:
        """One image file -> (3, S, S) preprocessed pixels, within the decode memory budget."""
        return torch.from_numpy(self.decoder(path))

    def prepare(self, item) -> Result:
        """Decode and preprocess one input (runs on a worker thread).

        Whatever goes wrong with this input is its Result's error, never an exception for the run.
        """
        source = "<PIL image>" if isinstance(item, Image.Image) else str(getattr(item, "path", item))
        try:
            pixels = torch.from_numpy(self.decoder(item if isinstance(item, Image.Image) else
                                                   getattr(item, "path", item)))
        except ImageError as e:
            return Result(source, error=e.reason, item=item)
        except Exception as e:  # e.g. out of memory resizing it: this input's failure
            return Result(source, error=f"cannot prepare image ({type(e).__name__}: {e})", item=item)
        return Result(source, embedding=pixels, item=item)  # pixels until embedded

    def _read_for_device(self, item) -> Result:
        """prepare(item), except that a plain JPEG file is only read, for device_decoder to decode with
        its batch: its Result's embedding is a gpu_decode.JpegJob until then."""
        if not isinstance(item, Image.Image):
            path = getattr(item, "path", item)
            job = self.device_decoder.read(path)
            if job is not None:
                return Result(str(path), embedding=job, item=item)
        return self.prepare(item)

    def embed_iter(self, images: Iterable, batch_size: int = 8, workers: int | None = None) -> Iterator[Result]:
        """One Result per input, in input order; an image that fails does not stop the others.

        Decoding runs on `workers` threads (default: one per core, up to 8) ahead of the model, so
        the model does not wait for the disk; batches stay full when some inputs fail. (Which inputs to
        leave out, e.g. those already done, is plan.resume's decision, made before this.)
        """
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        workers = default_workers() if workers is None else workers
        window = batch_size * 2 + workers
        pending: list[Result] = []  # in input order; those with pixels wait for the model
        queued = 0
        on_device = self.device_decoder

        def flush() -> Iterator[Result]:
            nonlocal queued
            if on_device is not None:  # decode the batch's JPEGs there; a failure there takes the CPU path
                on_device.finish(pending, self.prepare)
            waiting = [r for r in pending if r.embedding is not None]
            if waiting:
                arrays = self.embed_pixels(torch.stack([r.embedding for r in waiting]))
                for r, a in zip(waiting, arrays):
                    r.embedding = a
                    if not np.isfinite(a).all():  # NaN/inf weights, or a half-precision overflow
                        r.embedding, r.error = None, "the model's output is not finite (NaN or inf): check the " \
                                                     "weights, or use --dtype float32"
            yield from pending
            pending.clear()
            queued = 0

        prepare = self.prepare if on_device is None else self._read_for_device
        for result in prefetch(prepare, images, workers, window):
            pending.append(result)
            queued += result.embedding is not None
            if queued >= batch_size:
                yield from flush()
        yield from flush()

    def embed(self, images: Iterable[str | Path | Image.Image], batch_size: int = 8) -> np.ndarray:
        """Stacked embeddings of all images; raises ImageError on the first that cannot be read."""
        arrays = []
        for r in self.embed_iter(images, batch_size):
            if r.error is not None:
                raise ImageError(r.source, r.error)
            arrays.append(r.embedding)
        return np.stack(arrays)
