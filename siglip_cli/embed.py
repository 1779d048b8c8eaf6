"""Images -> embeddings: model, preprocessing and device together, for the CLI and for notebooks.

    from siglip_cli.embed import Embedder
    emb = Embedder.load("google/siglip-base-patch16-224", pool="map")
    vectors = emb.embed(["a.jpg", "b.png"])          # (2, 768) float32 numpy
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from . import __version__
from .config import DEFAULT_MODEL_ID, check_image_size
from .errors import ImageError, UsageError
from .model import NO_HEAD, POOL_MODES, SiglipVisionModel
from .preprocess import Preprocessing, choose_preprocessing, load_image, to_rgb

DEVICES = ("auto", "cpu", "cuda", "mps")


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


class Embedder:
    def __init__(self, model: SiglipVisionModel, preprocessing: Preprocessing, pool: str = "none",
                 device: str = "auto"):
        if pool not in POOL_MODES:
            raise UsageError(f"unknown --pool {pool!r}: use one of {', '.join(POOL_MODES)}")
        if pool == "map" and not model.has_head:
            raise UsageError(NO_HEAD)
        check_image_size(preprocessing.image_size, model.config)
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.preprocessing = preprocessing
        self.pool = pool

    @classmethod
    def load(cls, model: str | None = None, *, random_init: bool = False, pool: str = "none",
             norm: str = "auto", image_size: int | None = None, device: str = "auto", offline: bool = False,
             note=None) -> "Embedder":
        """A hub id or checkpoint directory (default google/siglip-base-patch16-224, downloaded into the
        Hugging Face cache when missing unless offline), or the seeded untrained base model."""
        if random_init and model:
            raise UsageError("use either --model or --random-init, not both")
        if image_size is not None and image_size <= 0:
            raise UsageError(f"--image-size must be positive, got {image_size}")
        if random_init:
            net = SiglipVisionModel.random_init()
        else:
            net = SiglipVisionModel.from_pretrained(model or DEFAULT_MODEL_ID, offline=offline, note=note)
        if image_size is not None:
            check_image_size(image_size, net.config)
        prep = choose_preprocessing(norm, net.preprocessor_config, net.config.image_size, image_size,
                                    where=str(net.name_or_path))
        return cls(net, prep, pool=pool, device=device)

    def metadata(self) -> dict[str, object]:
        """What produced these embeddings: recorded in every output file."""
        p = self.preprocessing
        return {
            "model": self.model.name_or_path or "",
            "revision": self.model.revision or "",
            "pool": self.pool,
            "norm": p.preset,
            "image_mean": list(p.mean),
            "image_std": list(p.std),
            "resample": p.resample,
            "rescale_factor": p.rescale_factor,
            "image_size": p.image_size,
            "dtype": "float32",
            "siglip_cli_version": __version__,
        }

    @torch.inference_mode()
    def embed_pixels(self, pixel_values: torch.Tensor) -> np.ndarray:
        """(B, 3, S, S) preprocessed pixels -> (B, N, D) or (B, D) float32 numpy."""
        out = self.model.embed(pixel_values.to(self.device), self.pool)
        return out.float().cpu().numpy()

    def embed_iter(self, images: Iterable[str | Path | Image.Image], batch_size: int = 8) -> Iterator[Result]:
        """One Result per input, in input order; an image that fails does not stop the others."""
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        batch: list[tuple[str, torch.Tensor]] = []

        def flush() -> Iterator[Result]:
            if batch:
                arrays = self.embed_pixels(torch.stack([t for _, t in batch]))
                yield from (Result(src, arr) for (src, _), arr in zip(batch, arrays))
                batch.clear()

        for item in images:
            source = "<PIL image>" if isinstance(item, Image.Image) else str(item)
            try:
                image = to_rgb(item) if isinstance(item, Image.Image) else load_image(item)
            except ImageError as e:
                # Earlier good images come out first, so results stay in input order.
                yield from flush()
                yield Result(source, error=e.reason)
                continue
            batch.append((source, self.preprocessing(image)))
            if len(batch) >= batch_size:
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
