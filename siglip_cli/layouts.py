"""Checkpoint layouts: one whole-dict conversion per layout, from its tensor names to this model's.

A layout is recognised from the whole set of its tensor names (timm's `checkpoint_filter_fn` idea), and
its conversion sees the whole state dict at once (and the config), so it can rename, split a fused
tensor or transpose a kernel, not only rename one key at a time. Values are `Lazy` tensors: a
conversion composes them with `derive`, and nothing is read from disk until the loader reads the
tensors the target model needs (a shape check reads headers only).

Hugging Face transformers' layout (three variants, below) is here; timm's and open_clip's are in
timm_layout.py, big_vision's in bigvision.py. Which one a checkpoint uses follows from its files
(checkpoint.checkpoint_kind: config.json, a timm config.json, open_clip_config.json, an .npz) and is
confirmed by its tensor names (each Layout's `matches`); weights.read_checkpoint puts the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection, Mapping, TypeVar

import torch

T = TypeVar("T")

# The top-level parts of a full SigLIP checkpoint. A model loads the parts it has; the others (the text
# tower for the vision model) are expected in a full checkpoint and skipped, never reported as unexpected.
SIGLIP_PARTS = ("vision_model", "text_model", "logit_scale", "logit_bias")


class Lazy:
    """A checkpoint tensor not read yet: `meta` (shape and dtype, from the file's header) and `read()`."""

    __slots__ = ("_meta", "_value", "_get_meta", "_read")

    def __init__(self, meta: Callable[[], torch.Tensor], read: Callable[[], torch.Tensor]):
        self._get_meta, self._read, self._meta = meta, read, None

    @property
    def meta(self) -> torch.Tensor:
        if self._meta is None:
            self._meta = self._get_meta()
        return self._meta

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta.shape)

    def read(self) -> torch.Tensor:
        return self._read()


def derive(fn: Callable[..., torch.Tensor], *parts: Lazy) -> Lazy:
    """A tensor computed from others (e.g. one third of a fused qkv): its shape from their meta tensors,
    its values only when read."""
    return Lazy(lambda: fn(*(p.meta for p in parts)), lambda: fn(*(p.read() for p in parts)))


def convert_transformers(state: Mapping[str, T], config=None) -> dict[str, T]:
    """transformers' layouts -> this model's keys, which are transformers' own names.

    A full SiglipModel (`vision_model.` beside `text_model.`, `logit_scale`, `logit_bias`) and a
    transformers 4 SiglipVisionModel (`vision_model.` prefix) are already in these names; a transformers 5
    SiglipVisionModel saves its tensors without the prefix. `*.position_ids` is a buffer some exports
    persist (always arange(N)): dropped. Names this layout does not know come back unchanged, for the
    strict check to name.
    """
    prefixed = any(name.split(".", 1)[0] in SIGLIP_PARTS for name in state)
    out = {}
    for name, value in state.items():
        if name.endswith("embeddings.position_ids"):
            continue
        vision_root = name.split(".", 1)[0] in ("embeddings", "encoder", "post_layernorm", "head")
        out[name if prefixed or not vision_root else "vision_model." + name] = value
    return out


@dataclass(frozen=True)
class Layout:
    name: str
    matches: Callable[[Collection[str]], bool]  # the whole set of tensor names -> whether it is this layout
    convert: Callable[[Mapping[str, T], object], dict[str, T]]  # (state dict, config) -> this model's keys


TRANSFORMERS = Layout("transformers", lambda names: True, convert_transformers)
# The layouts of a transformers checkpoint folder, in order: the first whose `matches` holds is used.
# transformers' comes last: it also takes what no other layout recognises, and the strict check then names
# what does not fit. (timm, open_clip and big_vision files are told apart by their files: see above.)
LAYOUTS: tuple[Layout, ...] = (TRANSFORMERS,)


def detect_layout(names: Collection[str]) -> Layout:
    return next(layout for layout in LAYOUTS if layout.matches(names))


def for_model(state: Mapping[str, T], model_keys: Collection[str]) -> dict[str, T]:
    """A converted state dict without the SigLIP parts the model does not have (the text tower, for the
    vision model): what remains is the model's keys, and anything unexpected."""
    have = {key.split(".", 1)[0] for key in model_keys}
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in have or k.split(".", 1)[0] not in SIGLIP_PARTS}
