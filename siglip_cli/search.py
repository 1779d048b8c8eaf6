"""Search what `siglip embed` wrote: rank stored images against a text (SigLIP's sigmoid probability) or an
image (cosine), for the CLI and for notebooks.

    from siglip_cli.search import search
    hits = search("a dog on a beach", ["emb/", "more.safetensors"], k=5)
    for h in hits: print(h.probability, h.source)

The stored files say which model made them (their metadata, a folder's manifest): the query is embedded
with that model unless one is given, and files from another model are refused. Pooled (`--pool map`)
files are searched as they are; patch files (`--pool none`) go through the checkpoint's pooling head
(their rows are exactly its input), so nothing is re-embedded. Reading is chunked (store.py): memory
stays bounded whatever the size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import OutputError, UsageError
from .folder_index import open_collection
from .store import Collection, top_k
from .writers import read_manifest

RANDOM = "random-init"


@dataclass
class Hit:
    """One ranked image: where its vector is stored, its source, and its score."""

    rank: int
    source: str
    cosine: float
    probability: float | None  # a text query's sigmoid probability; None for an image query
    embeddings: str  # the file or folder it was found in
    row: int

    def to_dict(self) -> dict:
        return {"rank": self.rank, "path": self.source, "probability": self.probability, "cosine": self.cosine,
                "embeddings": self.embeddings, "row": self.row}


def recorded_metadata(path: str | Path) -> dict:
    """The run metadata an embeddings file or folder records (cheap: headers and manifests only)."""
    path = Path(path)
    if path.is_dir():
        manifest = read_manifest(path)
        if manifest is not None:
            return dict(manifest["metadata"])
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.endswith(".safetensors") and not name.startswith("."):
                    return _safetensors_metadata(Path(root) / name)
        return {}
    if path.suffix.lower() == ".safetensors":
        return _safetensors_metadata(path)
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        try:
            with sidecar.open("rb") as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise OutputError(f"{sidecar}: not a readable siglip sidecar ({e}): run `siglip embed` again") from None
        return {k: v for k, v in meta.items() if k not in ("sources", "data_sha256", "shape")} \
            if isinstance(meta, dict) else {}
    return {}


def _safetensors_metadata(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise OutputError(f"{path}: not a readable safetensors file ({e})") from None
    meta: dict[str, object] = {}
    for k, v in header.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return meta


def recorded_model(paths: Sequence[str | Path], metas: Sequence[dict]) -> str:
    """The one model the files were embedded with (what search loads when no --model is given)."""
    named = {}
    for path, meta in zip(paths, metas):
        check_same_model(path, meta, {"model": ""}, explicit=True) if meta.get("input") == "text" else None
        if not meta.get("model"):
            raise UsageError(f"{path}: no record of the model that made these embeddings (written by an older "
                             "siglip?): give it with --model")
        named.setdefault(_model_key(meta), (str(meta["model"]), meta.get("revision") or "", path))
    if len(named) > 1:
        (a, _, pa), (b, _, pb) = list(named.values())[:2]
        raise UsageError(f"the embeddings come from different models ({pa}: {a}; {pb}: {b}): search one "
                         "model's files at a time")
    model, revision, _ = next(iter(named.values()))
    if model.startswith(RANDOM):
        raise UsageError(f"{paths[0]}: embedded with --random-init (untrained weights): there is nothing to "
                         "search for in them; embed with a real checkpoint")
    return f"{model}@{revision}" if revision and not Path(model).is_dir() else model


def _model_key(meta: dict) -> str:
    return str(meta.get("model_fingerprint") or meta.get("model"))


def check_same_model(path: str | Path, meta: dict, identity: dict[str, str], explicit: bool) -> None:
    """Refuse embeddings made by another model than the query's (their metadata says which), and text ones."""
    if meta.get("input") == "text":
        raise UsageError(f"{path}: holds text embeddings (written by `siglip embed-text`), not images: search "
                         "what `siglip embed` wrote")
    if not meta.get("model"):
        if explicit:
            return  # nothing recorded (old .npy folders): the user vouches with --model
        raise UsageError(f"{path}: no record of the model that made these embeddings: give it with --model")
    theirs, ours = meta.get("model_fingerprint"), identity.get("model_fingerprint")
    if theirs and ours:
        same = theirs == ours
    else:  # files written before fingerprints: the names must agree
        same = _same_name(str(meta["model"]), identity["model"])
    if not same:
        raise UsageError(f"{path}: embedded with {meta['model']}, not {identity['model']} (the model of the "
                         "query): vectors of different models cannot be compared; search with "
                         f"--model {meta['model']}, or embed these images again with {identity['model']}")


def _same_name(a: str, b: str) -> bool:
    if os.path.isdir(a) and os.path.isdir(b):
        return os.path.samefile(a, b)
    return a == b


def open_all(paths: Sequence[str | Path], siglip, explicit: bool, note=None) -> list[Collection]:
    """Every embeddings file or folder, checked against the query's model, ready to rank."""
    identity = siglip.identity()
    collections = []
    for path in paths:
        meta = recorded_metadata(path)
        check_same_model(path, meta, identity, explicit)
        collections.append(open_collection(path, pooler=siglip.pool_patches, identity=identity, note=note))
    return collections


def text_query(siglip, text: str) -> np.ndarray:
    if not text.strip():
        raise UsageError("an empty query: give the text to search for, or --image FILE")
    return siglip.embed_texts([text])[0]


def image_query(siglip, image: Path, metas: Sequence[dict], **options) -> np.ndarray:
    """The query image's pooled embedding, preprocessed as the stored images were (their recorded norm and
    size), so image-to-image scores compare like with like."""
    from .errors import ImageError

    meta = metas[0] if metas else {}
    norm = meta.get("norm") if meta.get("norm") in ("checkpoint", "imagenet") else "auto"
    size = meta.get("image_size") if isinstance(meta.get("image_size"), int) else None
    if size == siglip.vision.config.image_size:
        size = None
    embedder = siglip.embedder(norm=norm, image_size=size, **options)
    result = next(embedder.embed_iter([image], batch_size=1, workers=0))
    if result.error is not None:
        raise ImageError(str(image), result.error)
    return result.embedding


def search(query: str | None, paths: Sequence[str | Path], *, image: str | Path | None = None,
           k: int | None = 10, threshold: float | None = None, model=None, siglip=None, device: str = "auto",
           offline: bool = False, cache_dir: Path | None = None, note=None) -> list[Hit]:
    """Rank the images stored in `paths` against a text `query` or an `image`, best first.

    Text: `probability` is SigLIP's sigmoid score and `threshold` a minimum probability; image: the score
    is the cosine, and `threshold` a minimum cosine. `model`: default, the model the files record.
    """
    if (query is None) == (image is None):
        raise UsageError("give a text query or --image FILE (one of them)")
    if not paths:
        raise UsageError("no embeddings to search: give files or folders written by `siglip embed`")
    if k is not None and k < 1:
        raise UsageError(f"--top must be at least 1, got {k}")
    metas = [recorded_metadata(p) for p in paths]
    explicit = model is not None or siglip is not None
    if siglip is None:
        from .text import Siglip

        siglip = Siglip.load(model or recorded_model(paths, metas), device=device, offline=offline,
                             cache_dir=cache_dir, note=note, text=image is None)
    if image is None:
        siglip.need_text()
        if threshold is not None and not 0 <= threshold <= 1:
            raise UsageError(f"--threshold {threshold}: a probability, between 0 and 1")
        q = text_query(siglip, query)
        cosine = None if threshold is None else siglip.cosine_for(threshold)
    else:
        if threshold is not None and not -1 <= threshold <= 1:
            raise UsageError(f"--threshold {threshold}: with --image, a cosine between -1 and 1")
        q = image_query(siglip, Path(image), metas)
        cosine = threshold
    collections = open_all(paths, siglip, explicit, note)
    if cosine is not None and math.isinf(cosine):
        if cosine > 0:
            return []
        cosine = None
    found = top_k(q, collections, k, pooler=siglip.pool_patches, threshold=cosine)
    probs = siglip.probability(np.array([h.score for h in found])) if image is None and found else None
    return [Hit(i + 1, h.source, float(h.score), None if probs is None else float(probs[i]), str(h.collection),
                h.row) for i, h in enumerate(found)]
