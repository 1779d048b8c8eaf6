"""Texts -> embeddings, and images x labels -> SigLIP's sigmoid probabilities: the text half, for the CLI
and for notebooks.

    from siglip_cli.text import Siglip
    s = Siglip.load("google/siglip-base-patch16-224")
    t = s.embed_texts(["a photo of a cat", "a red car"])           # (2, 768) float32 numpy
    for row in s.classify(["cat.jpg", "photos/"], ["cat", "dog"]):  # one Labelled per image, input order
        print(row.source, row.ranked()[:3])

A full checkpoint gives both towers; a vision-only one gives `vision` alone (everything image-only works,
and text asks for a full checkpoint in one line). The tokenizer comes from the checkpoint's own files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from . import __version__
from .checkpoint import ModelSource, is_full_checkpoint
from .errors import CheckpointError, UsageError
from .model import SiglipVisionModel

DEFAULT_TEMPLATE = "a photo of a {}."  # what each label is put in before it is embedded (--template)
NO_TEXT = ("{name}: this checkpoint has no text tower (a vision-only config.json): text needs a full SigLIP "
           "checkpoint, e.g. google/siglip-base-patch16-224")


def vision_part(model) -> SiglipVisionModel:
    """A SiglipModel's vision tower as a SiglipVisionModel (sharing its weights), for the Embedder."""
    with torch.device("meta"):
        vision = SiglipVisionModel(model.config.vision_config)
    vision.vision_model = model.vision_model
    for attr in ("name_or_path", "revision", "preprocessor_config", "fingerprint"):
        setattr(vision, attr, getattr(model, attr))
    return vision.eval()


def prompts(labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """Each label put into the template ("{}" marks where), checked: no empty or repeated label."""
    if template.count("{}") != 1:
        raise UsageError(f"--template {template!r} must contain {{}} once, where the label goes, "
                         f"e.g. {DEFAULT_TEMPLATE!r} (or '{{}}' for the label alone)")
    if not labels:
        raise UsageError("no labels: give --labels cat,dog,car or --labels-file FILE (one label a line)")
    seen: set[str] = set()
    for label in [*labels, template]:
        try:
            label.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{label.encode('utf-8', 'backslashreplace').decode()!r} is not valid text (bytes "
                             "that are not UTF-8): give labels and the template as UTF-8") from None
    for label in labels:
        if not label.strip():
            raise UsageError("an empty label: remove the extra comma or blank line")
        if label in seen:
            raise UsageError(f"label {label!r} is given twice: each label once")
        seen.add(label)
    return [template.replace("{}", label) for label in labels]


@dataclass
class Labelled:
    """One image's zero-shot result: each label's probability (in label order), or why it failed."""

    source: str
    labels: Sequence[str]
    probabilities: np.ndarray | None = None  # (L,) independent sigmoid probabilities: they do not sum to 1
    logits: np.ndarray | None = None  # (L,)
    error: str | None = None

    def ranked(self) -> list[tuple[str, float]]:
        """(label, probability), best first (ties in label order)."""
        order = np.argsort(-self.probabilities, kind="stable")
        return [(self.labels[i], float(self.probabilities[i])) for i in order]


class Siglip:
    """A SigLIP checkpoint's towers on a device: `vision` always, the text tower and the score's scale and
    bias when the checkpoint has them, and its tokenizer."""

    def __init__(self, vision: SiglipVisionModel, text=None, tokenizer=None, device: str = "auto"):
        from .embed import pick_device

        self.device = pick_device(device)
        self.vision = vision
        self.model = text  # the SiglipModel (both towers), or None for a vision-only checkpoint
        self.tokenizer = tokenizer
        if text is not None:
            text.to(self.device)  # the vision tower is the Embedder's to place (and to cast)

    @classmethod
    def load(cls, model: str | Path | ModelSource | None = None, *, device: str = "auto", offline: bool = False,
             cache_dir: Path | None = None, note=None, text: bool = True) -> Siglip:
        """A checkpoint (ModelSource, folder or hub id; default google/siglip-base-patch16-224) with its text
        tower when it has one and `text` (a vision-only one loads its vision tower alone)."""
        from .hub import resolve_model
        from .weights import load_model

        source = model if isinstance(model, ModelSource) else resolve_model(
            None if model is None else str(model), offline=offline, cache_dir=cache_dir, note=note)
        if not (text and is_full_checkpoint(source.path)):
            return cls(load_model(SiglipVisionModel, source), device=device)
        from .text_model import SiglipModel

        full = load_model(SiglipModel, source)
        tokenizer = load_tokenizer(source, full.config.text_config, offline=offline, cache_dir=cache_dir,
                                   note=note)
        return cls(vision_part(full), full, tokenizer, device=device)

    @property
    def name(self) -> str:
        return self.vision.name_or_path or ""

    def identity(self) -> dict[str, str]:
        """Which weights: what search compares with the model recorded in embedding files."""
        return {"model": self.name, "revision": self.vision.revision or "",
                "model_fingerprint": self.vision.fingerprint or ""}

    def need_text(self) -> None:
        if self.model is None:
            raise CheckpointError(NO_TEXT.format(name=self.name))

    def embedder(self, **options):
        """An Embedder over this checkpoint's vision tower (pool="map" unless given): images -> (B, D)."""
        from .embed import Embedder
        from .preprocess import choose_preprocessing

        options.setdefault("pool", "map")
        norm, image_size = options.pop("norm", "auto"), options.pop("image_size", None)
        prep = choose_preprocessing(norm, self.vision.preprocessor_config, self.vision.config.image_size,
                                    image_size, where=self.name)
        options.setdefault("device", self.device.type)
        return Embedder(self.vision, prep, **options)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(T,) texts -> (T, E) float32 text embeddings, each text padded to the full length on its own."""
        self.need_text()
        ids = self.tokenizer(list(texts))  # (T, L)
        out = [self.model.text_embeds(torch.from_numpy(ids[i:i + batch_size]).to(self.device)).float().cpu()
               for i in range(0, len(ids), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.model.config.text_config.projection_size),
                                                           np.float32)

    @torch.inference_mode()
    def scores(self, image_embeds: np.ndarray, text_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B_img, E) x (B_txt, E) -> logits and sigmoid probabilities, (B_img, B_txt)."""
        self.need_text()
        logits, probs = self.model.scores(torch.as_tensor(image_embeds).to(self.device),
                                          torch.as_tensor(text_embeds).to(self.device))
        return logits.cpu().numpy(), probs.cpu().numpy()

    def cosine_for(self, probability: float) -> float:
        """The cosine at which a pair's probability is `probability` (the score is monotonic in the cosine)."""
        self.need_text()
        if not 0 < probability < 1:
            return -math.inf if probability <= 0 else math.inf
        logit = math.log(probability / (1 - probability))
        return (logit - self.model.logit_bias.item()) / math.exp(self.model.logit_scale.item())

    def probability(self, cosine: np.ndarray) -> np.ndarray:
        self.need_text()
        logits = cosine * math.exp(self.model.logit_scale.item()) + self.model.logit_bias.item()
        return 1 / (1 + np.exp(-logits))

    @torch.inference_mode()
    def pool_patches(self, patches: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(n, N, D) stored patch embeddings -> (n, D) through the attention-pooling head (exactly what
        `--pool map` stores: the patch embeddings are the head's input)."""
        if not self.vision.has_head:
            from .embed import NO_HEAD

            raise UsageError(NO_HEAD)
        n = patches.shape[1] if patches.ndim == 3 else 0
        if math.isqrt(n) ** 2 != n or patches.shape[-1] != self.vision.config.hidden_size:
            raise UsageError(f"rows of {list(patches.shape[1:])} are not this model's patch embeddings (a square grid "
                             f"of {self.vision.config.hidden_size}-wide patches): a stacked .npy without its .json "
                             "sidecar? search the files `siglip embed` wrote, with their sidecars")
        head = self.vision.vision_model.head
        param = next(head.parameters())
        out = [head(torch.from_numpy(np.ascontiguousarray(patches[i:i + batch_size]))
                    .to(param.device, param.dtype)).float().cpu().numpy()
               for i in range(0, len(patches), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, patches.shape[-1]), np.float32)

    def text_metadata(self) -> dict[str, object]:
        """What embed-text records in its output."""
        return {**self.identity(), "input": "text", **self.tokenizer.describe(), "dtype": "float32",
                "siglip_cli_version": __version__}

    def classify(self, images: Iterable, labels: Sequence[str], template: str = DEFAULT_TEMPLATE, *,
                 embedder=None, batch_size: int = 8, workers: int | None = None) -> Iterator[Labelled]:
        """Every image against every label, in input order: the labels are embedded once, then each batch
        of images; an image that cannot be read is its own Labelled with an error, never the run's."""
        texts = self.embed_texts(prompts(labels, template))  # (L, E), once per run
        embedder = embedder or self.embedder()
        if embedder.pool != "map":
            raise UsageError("classify compares SigLIP's pooled image embeddings (pool 'map') with the labels")
        for r in embedder.embed_iter(images, batch_size, workers):
            if r.error is not None:
                yield Labelled(r.source, labels, error=r.error)
                continue
            logits, probs = self.scores(r.embedding[None], texts)
            yield Labelled(r.source, labels, probs[0], logits[0])


def load_tokenizer(source: ModelSource, text_config, *, offline: bool = False, cache_dir: Path | None = None,
                   note=None):
    """The checkpoint's tokenizer, padding to its text length; a hub model cached without one (by an older
    siglip, which fetched no tokenizer) gets it downloaded, unless offline."""
    from .tokenizer import Tokenizer

    folder = source.path if source.path.is_dir() else source.path.parent  # an .npz's tokenizer lies beside it
    try:
        tokenizer = Tokenizer.from_folder(folder, text_config.max_position_embeddings)
    except CheckpointError as e:
        from .hub import download_weights, offline_mode

        if source.revision is None and "no tokenizer" in str(e):  # a local checkpoint: nothing to download
            raise CheckpointError(f"{folder}: no tokenizer (spiece.model, or SigLIP 2's tokenizer.model) for "
                                  f"{source.path.name}'s text tower: put the checkpoint's tokenizer file beside it"
                                  ) from None
        if source.revision is None or offline_mode(offline):
            raise
        if note is not None:
            note(f"{source.name}: its tokenizer is not in the cache: downloading it")
        done = download_weights(source.name, source.revision, cache_dir=cache_dir, note=None)
        tokenizer = Tokenizer.from_folder(done.path, text_config.max_position_embeddings)
    if tokenizer.vocab_size > text_config.vocab_size:
        raise CheckpointError(f"{tokenizer.path}: {tokenizer.vocab_size} tokens, more than the text tower's "
                              f"{text_config.vocab_size} (config.json vocab_size): a tokenizer from another model? "
                              "re-download the checkpoint")
    return tokenizer
