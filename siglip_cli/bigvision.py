"""Google's original big_vision SigLIP checkpoints: one `.npz` file, its sizes, and its names in this model's.

big_vision saves a two-tower SigLIP as a NumPy `.npz` (a zip of `.npy` arrays) keyed by flax parameter paths,
sometimes under `params/`: `img/...` (the ViT), `txt/...` (the text transformer), `t` and `b` (the score's
log-temperature and bias). Layers are `encoderblock_{i}/...`, or one scanned `encoderblock/...` with a leading
depth axis. Nothing else describes the model: the sizes come from the shapes, the heads from (D, h, Dh) kernels.

Names and transforms follow transformers' convert_siglip_to_hf.py and timm's `_load_weights`. Only
`numpy.load(allow_pickle=False)` opens the file; an array is read only when needed (shape and dtype come from its
`.npy` header before, checked), and an object array (a pickle) is refused, never unpickled."""

from __future__ import annotations

import contextlib
import lzma
import math
import re
import zipfile
import zlib
from operator import attrgetter, methodcaller
from pathlib import Path
from typing import Callable, Collection, Iterator, Mapping

import numpy as np
import torch

from .config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig, shown
from .errors import CheckpointError
from .layouts import Lazy, Layout, derive

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # what numpy.load takes for an .npz (the second: an empty zip)
# (kind, bytes) of a .npy dtype -> torch's. JAX writes bfloat16 as 2-byte void ("|V2"), as timm's load_bfloat16 reads.
NPY_DTYPES = {("f", 2): torch.float16, ("f", 4): torch.float32, ("f", 8): torch.float64, ("V", 2): torch.bfloat16}
NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, RuntimeError,
               NotImplementedError)
# Released resolutions a (patch, grid) pair cannot give: so400m/14 at 384 px has a 27 x 27 grid (378 px; the
# patch conv drops the last 6), as transformers' and timm's configs for webli_en_so400m_384 say.
RELEASED_IMAGE_SIZES = {(14, 27): 384}


class NpzTensors(Mapping[str, Lazy]):
    """name -> Lazy for every array of a big_vision `.npz`, keyed as stored (`params/img/embedding/kernel` ...).

    A member's header is read when its shape is first needed; its data only by Lazy.read(). (An .npz member is
    a zip entry, possibly deflated, so it is read, not memory-mapped.)
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with self.path.open("rb") as f:
                magic = f.read(6)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot be read ({e.strerror or e}): check the path") from None
        if not magic.startswith(ZIP_MAGIC):
            what = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
            raise CheckpointError(f"{self.path}: {what}, so not a big_vision .npz checkpoint (a zip of named .npy "
                                  "arrays): use the .npz big_vision published, or re-download it")
        try:
            self._npz = np.load(self.path, allow_pickle=False)  # a zip: names only, no array read
        except _ZIP_ERRORS as e:
            raise self._corrupt(e) from None
        members = self._npz.zip.namelist()
        odd = [m for m in members if not m.endswith(".npy")]
        if odd:
            self.close()
            raise CheckpointError(f"{self.path}: holds {shown(odd[0])}, not a .npy array: a zip archive, but not a "
                                  "big_vision .npz checkpoint: use the .npz big_vision published")
        self._members = {m[: -len(".npy")]: m for m in members}

    def _corrupt(self, e: BaseException) -> CheckpointError:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        return CheckpointError(f"{self.path}: truncated or corrupt .npz file ({type(e).__name__}: {reason}): "
                               "re-download the checkpoint")

    @contextlib.contextmanager
    def _member(self, name: str) -> Iterator:
        if self._npz.zip is None:
            raise CheckpointError(f"{self.path}: read after the file was closed: load the checkpoint again")
        try:
            with self._npz.zip.open(self._members[name]) as f:
                yield f
        except _ZIP_ERRORS as e:
            raise self._corrupt(e) from None

    def _dtype(self, name: str, dtype: np.dtype) -> torch.dtype:
        if dtype.hasobject:
            raise CheckpointError(f"{self.path}: array {shown(name)} holds Python objects (a pickle), which siglip "
                                  "never loads because unpickling can run code: use a checkpoint of plain arrays")
        found = NPY_DTYPES.get((dtype.kind, dtype.itemsize)) if dtype.names is None else None
        if found is None:
            raise CheckpointError(f"{self.path}: array {shown(name)} is stored as {dtype.str}: weights must be "
                                  "floating-point (float16, float32, float64, bfloat16): re-download the checkpoint")
        return found

    def _meta(self, name: str) -> torch.Tensor:
        with self._member(name) as f:
            version = np.lib.format.read_magic(f)
            if version not in NPY_HEADERS:
                raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
            shape, _, dtype = NPY_HEADERS[version](f)
        if not all(isinstance(n, int) and 0 <= n < 1 << 31 for n in shape) or math.prod(shape) >= 1 << 36:
            raise CheckpointError(f"{self.path}: array {shown(name)} declares shape {list(shape)[:8]}, which no "
                                  "SigLIP weight has (a damaged or hostile file): re-download the checkpoint")
        return torch.empty(shape, dtype=self._dtype(name, dtype), device="meta")

    def _read(self, name: str) -> torch.Tensor:
        meta = self._meta(name)  # refuses objects and integers before any data is read
        with self._member(name) as f:
            array = np.lib.format.read_array(f, allow_pickle=False)
        if tuple(array.shape) != tuple(meta.shape):
            raise self._corrupt(ValueError(f"{name}: shape changed between reads"))
        if meta.dtype == torch.bfloat16:
            return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
        array = np.ascontiguousarray(array)  # a Fortran-order array, too
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        return torch.from_numpy(array)

    def __getitem__(self, name: str) -> Lazy:
        if name not in self._members:
            raise KeyError(name)
        return Lazy(lambda: self._meta(name), lambda: self._read(name))

    def __iter__(self):
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def close(self) -> None:
        self._npz.close()

    def __enter__(self) -> NpzTensors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the names -----------------------------------------------------------------------------------------------

def _root(names: Collection[str]) -> str | None:
    """The prefix above `img/`: `params/` in some files, nothing in others (transformers' converter's)."""
    return next((root for root in ("", "params/") if f"{root}img/embedding/kernel" in names), None)


def _layer(prefix: str, name: str) -> re.Match | None:
    """`{prefix}encoderblock_{i}/{rest}` -> (i, rest)."""
    return re.match(re.escape(prefix) + r"encoderblock_(\d+)/(.*)$", name)


def matches(names: Collection[str]) -> bool:
    return _root(names) is not None


def _heads_in(t):  # (D, h, Dh) -> (h * Dh, D): the q, k and v kernels
    return t.flatten(1).T


def _heads_out(t):  # (h, Dh, D) -> (D, h * Dh)
    return t.flatten(0, 1).T


_kernel = attrgetter("T")  # flax Dense (in, out) -> Linear (out, in)
_conv = methodcaller("permute", 3, 2, 0, 1)  # (P, P, C, D) HWIO -> (D, C, P, P) OIHW
_flat = methodcaller("flatten", 0, 1)  # (h, Dh) -> (h * Dh,) a q, k or v bias; (1, N, D) -> (N, D) a position table
_scalar = methodcaller("reshape", -1)  # t and b: () or (1,) -> (1,)


def _norm(bv: str, ours: str) -> list[tuple]:
    return [(f"{bv}/scale", f"{ours}.weight", 1, None), (f"{bv}/bias", f"{ours}.bias", 1, None)]


def _dense(bv: str, ours: str, fn: Callable = _kernel, rank: int = 2) -> list[tuple]:
    """A Dense or an attention projection: the kernel by `fn`; a q, k or v bias is (h, Dh), flattened."""
    split = fn is _heads_in
    return [(f"{bv}/kernel", f"{ours}.weight", rank, fn),
            (f"{bv}/bias", f"{ours}.bias", 2 if split else 1, _flat if split else None)]


_MHA, _MLP = "MultiHeadDotProductAttention_0/", "MlpBlock_0/"
# One encoder block, big_vision's Encoder1DBlock -> SiglipEncoderLayer: (stored name, ours, stored rank, transform).
BLOCK = [*_norm("LayerNorm_0", "layer_norm1"), *_dense(_MHA + "query", "self_attn.q_proj", _heads_in, 3),
         *_dense(_MHA + "key", "self_attn.k_proj", _heads_in, 3),
         *_dense(_MHA + "value", "self_attn.v_proj", _heads_in, 3),
         *_dense(_MHA + "out", "self_attn.out_proj", _heads_out, 3), *_norm("LayerNorm_1", "layer_norm2"),
         *_dense(_MLP + "Dense_0", "mlp.fc1"), *_dense(_MLP + "Dense_1", "mlp.fc2")]
# The attention-pooling head (MAPHead_0), but for its q, k, v: they become one in_proj, in that order.
HEAD = [("probe", "probe", 3, None), *_dense(_MHA + "out", "attention.out_proj", _heads_out, 3),
        *_norm("LayerNorm_0", "layernorm"), *_dense(_MLP + "Dense_0", "mlp.fc1"), *_dense(_MLP + "Dense_1", "mlp.fc2")]


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A tensor with its own contiguous storage: a transposed or sliced view would keep the whole stored array
    alive, and tensors sharing storage cannot be saved as safetensors."""
    t = t.contiguous()
    return t.clone() if t._base is not None else t


def _step(where: str, name: str, rank: int | None, fn: Callable | None, index: int | None = None,
          depth: int = 0) -> Callable:
    """fn (None: as stored) for one stored array, after checking its rank (None: any): a hostile shape is a one-line
    error, not a traceback. With `index`, the array is a scanned block's, layer `index` its slice of the depth axis."""
    def run(t: torch.Tensor) -> torch.Tensor:
        want = rank if index is None or rank is None else rank + 1
        if (want is not None and t.ndim != want) or (index is not None and t.shape[0] != depth):
            scan = "" if index is None else f" (a leading depth axis of {depth}, then {rank})"
            raise CheckpointError(f"{where}: array {shown(name)} has shape {list(t.shape)}: expected {want} "
                                  f"dimensions{scan}: not a SigLIP checkpoint as big_vision writes them")
        t = t if index is None else t[index]
        return _owned(fn(t) if fn else t)
    return run


class _Scanned:
    """A scanned block's array (L, ...): read once for its L layers, let go when each has taken its slice."""

    def __init__(self, lazy: Lazy, depth: int):
        self.lazy, self.left, self.value = lazy, depth, None

    def read(self) -> torch.Tensor:
        value = self.value if self.value is not None else self.lazy.read()
        self.left -= 1
        self.value = value if self.left > 0 else None
        return value

    def layer(self, step: Callable) -> Lazy:
        return Lazy(lambda: step(self.lazy.meta), lambda: step(self.read()))


def _identity_head(embedding: Lazy) -> tuple[Lazy, Lazy]:
    """big_vision's text tower has no head when num_classes is 0 (siglip-base-patch16-256-i18n): its output is
    the pooled token itself, an identity head (what transformers' converter writes). Sized by the (V, D) header."""
    def make(fn: Callable, device: str) -> Callable[[], torch.Tensor]:
        return lambda: fn(embedding.meta.shape[-1], dtype=embedding.meta.dtype, device=device)
    return Lazy(make(torch.eye, "meta"), make(torch.eye, "cpu")), Lazy(make(torch.zeros, "meta"),
                                                                       make(torch.zeros, "cpu"))


def convert(state: Mapping[str, Lazy], config=None) -> dict[str, Lazy]:
    """A big_vision state dict -> this model's keys (both towers, `logit_scale`, `logit_bias`), lazily.

    Names this layout does not know come back unchanged, and a tensor whose parts are missing is left out, for
    the strict check to name. `config` is not needed: the shapes say everything.
    """
    root, where = _root(state) or "", _where(state)
    out: dict[str, Lazy] = {}
    used: set[str] = set()

    def put(target: str, source: str, rank: int | None, fn: Callable) -> None:
        if source in state:
            used.add(source)
            out[target] = derive(_step(where, source, rank, fn), state[source])

    def encoder(prefix: str, target: str) -> None:
        scan = prefix + "encoderblock/"
        scanned = sorted(n for n in state if n.startswith(scan))
        depth = state[scanned[0]].shape[:1] if scanned else ()  # the leading axis of any of them (header only)
        for sub, ours, rank, fn in BLOCK if depth else ():
            if scan + sub in state:
                used.add(scan + sub)
                whole = _Scanned(state[scan + sub], depth[0])
                for i in range(depth[0]):
                    out[f"{target}.{i}.{ours}"] = whole.layer(_step(where, scan + sub, rank, fn, i, depth[0]))
        block = {sub: (ours, rank, fn) for sub, ours, rank, fn in BLOCK}
        for name in state:
            found = _layer(prefix, name)
            if found and found.group(2) in block:
                ours, rank, fn = block[found.group(2)]
                put(f"{target}.{int(found.group(1))}.{ours}", name, rank, fn)

    img, v = root + "img/", "vision_model."
    put(v + "embeddings.patch_embedding.weight", img + "embedding/kernel", 4, _conv)
    put(v + "embeddings.patch_embedding.bias", img + "embedding/bias", 1, None)
    put(v + "embeddings.position_embedding.weight", img + "pos_embedding", 3, _flat)
    encoder(img + "Transformer/", v + "encoder.layers")
    put(v + "post_layernorm.weight", img + "Transformer/encoder_norm/scale", 1, None)
    put(v + "post_layernorm.bias", img + "Transformer/encoder_norm/bias", 1, None)
    head = img + "MAPHead_0/"
    for sub, ours, rank, fn in HEAD:
        put(f"{v}head.{ours}", head + sub, rank, fn)
    for part, ours, rank, fn in (("kernel", "weight", 3, _heads_in), ("bias", "bias", 2, _flat)):
        sources = [f"{head}{_MHA}{n}/{part}" for n in ("query", "key", "value")]
        if all(s in state for s in sources):
            used.update(sources)
            steps = [_step(where, s, rank, fn) for s in sources]
            out[f"{v}head.attention.in_proj_{ours}"] = derive(
                lambda *qkv, steps=steps: torch.cat([f(t) for f, t in zip(steps, qkv)]), *(state[s] for s in sources))

    txt, t = root + "txt/", "text_model."
    if any(n.startswith(txt) for n in state):
        put(t + "embeddings.token_embedding.weight", txt + "Embed_0/embedding", 2, None)
        put(t + "embeddings.position_embedding.weight", txt + "pos_embedding", 3, _flat)
        encoder(txt + "Encoder_0/", t + "encoder.layers")
        put(t + "final_layer_norm.weight", txt + "Encoder_0/encoder_norm/scale", 1, None)
        put(t + "final_layer_norm.bias", txt + "Encoder_0/encoder_norm/bias", 1, None)
        put(t + "head.weight", txt + "head/kernel", 2, _kernel)
        put(t + "head.bias", txt + "head/bias", 1, None)
        if not any(n.startswith(txt + "head/") for n in state) and txt + "Embed_0/embedding" in state:
            out[t + "head.weight"], out[t + "head.bias"] = _identity_head(state[txt + "Embed_0/embedding"])
    put("logit_scale", root + "t", None, _scalar)  # the log temperature: exp(t) scales the cosines
    put("logit_bias", root + "b", None, _scalar)
    out.update((name, value) for name, value in state.items() if name not in used)
    return out


LAYOUT = Layout("big_vision", matches, convert)


# --- the sizes -----------------------------------------------------------------------------------------------

def _where(tensors: Mapping[str, Lazy]) -> str:
    return str(getattr(tensors, "path", "big_vision checkpoint"))


def _shape(tensors: Mapping[str, Lazy], name: str, rank: int, what: str) -> tuple[int, ...]:
    if name not in tensors:
        raise CheckpointError(f"no array {shown(name)} ({what}): not a complete big_vision SigLIP "
                              "checkpoint: re-download it")
    shape = tensors[name].shape
    if len(shape) != rank:
        raise CheckpointError(f"array {shown(name)} has shape {list(shape)}, not {rank} "
                              f"dimensions ({what}): not a SigLIP checkpoint as big_vision writes them")
    return shape


def _encoder_sizes(tensors: Mapping[str, Lazy], prefix: str) -> dict[str, int]:
    """num_hidden_layers, intermediate_size, num_attention_heads of `{prefix}encoderblock...`."""
    mlp, attention = "MlpBlock_0/Dense_0/kernel", "MultiHeadDotProductAttention_0/query/kernel"
    scan = prefix + "encoderblock/"
    if any(n.startswith(scan) for n in tensors):  # (L, ...): depth first
        depth = _shape(tensors, scan + "LayerNorm_0/scale", 2, "the first LayerNorm of each layer")[0]
        width = _shape(tensors, scan + mlp, 3, "the MLP's first kernel")[2]
        heads = _shape(tensors, scan + attention, 4, "the attention's query kernel")[2]
    else:
        layers = sorted({int(m.group(1)) for n in tensors if (m := _layer(prefix, n))})
        if not layers:
            raise CheckpointError(f"no {prefix}encoderblock_0/ (nor a scanned encoderblock/): not "
                                  "a complete big_vision SigLIP checkpoint: re-download it")
        # The highest layer sets the depth, so a missing middle layer is named by the strict check.
        depth = layers[-1] + 1

        def first(sub: str) -> str:
            return next((f"{prefix}encoderblock_{i}/{sub}" for i in layers
                         if f"{prefix}encoderblock_{i}/{sub}" in tensors), f"{prefix}encoderblock_0/{sub}")

        width = _shape(tensors, first(mlp), 2, "the MLP's first kernel")[1]
        heads = _shape(tensors, first(attention), 3, "the attention's query kernel")[1]
    return dict(num_hidden_layers=depth, intermediate_size=width, num_attention_heads=heads)


def _vision_sizes(tensors: Mapping[str, Lazy], img: str) -> dict[str, int]:
    patch, patch_w, channels, width = _shape(tensors, img + "embedding/kernel", 4, "the patch embedding")
    if patch != patch_w:
        raise CheckpointError(f"patches of {patch} x {patch_w} px: only square patches are "
                              "supported")
    tokens = _shape(tensors, img + "pos_embedding", 3, "the position embedding")[1]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise CheckpointError(f"{tokens} position embeddings are not a square grid: only square "
                              "SigLIP checkpoints are supported")
    return dict(hidden_size=width, patch_size=patch, num_channels=channels,
                image_size=RELEASED_IMAGE_SIZES.get((patch, side), side * patch))


def config_from(tensors: Mapping[str, Lazy]) -> SiglipConfig:
    """The towers' sizes from the arrays' shapes (headers only): width, depth, patch, grid (-> image size),
    MLP width, heads; the text tower's when the file has one. Checkpoints use GELU-tanh and LayerNorm eps 1e-6."""
    root = _root(tensors)
    if root is None:
        raise CheckpointError(f"{_where(tensors)}: no img/embedding/kernel (nor params/img/...): not a big_vision "
                              "SigLIP checkpoint: use the .npz big_vision published")
    img, txt = root + "img/", root + "txt/"
    try:
        vision = SiglipVisionConfig(**_vision_sizes(tensors, img), **_encoder_sizes(tensors, img + "Transformer/"),
                                    layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                                    vision_use_head=any(n.startswith(img + "MAPHead_0/") for n in tensors))
        text = None
        if any(n.startswith(txt) for n in tensors):
            vocab, width = _shape(tensors, txt + "Embed_0/embedding", 2, "the token embedding")
            head = txt + "head/kernel"
            text = SiglipTextConfig(
                vocab_size=vocab, hidden_size=width,
                max_position_embeddings=_shape(tensors, txt + "pos_embedding", 3, "the position embedding")[1],
                projection_size=_shape(tensors, head, 2, "the text head")[1] if head in tensors else width,
                layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", **_encoder_sizes(tensors, txt + "Encoder_0/"))
    except CheckpointError as e:  # name the file once: most messages name only the array or the size
        where = _where(tensors)
        raise CheckpointError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    return SiglipConfig(vision, text)


def preprocessor_from(tensors: Mapping[str, Lazy]) -> dict:
    """SigLIP's preprocessing, as a Hugging Face preprocessor_config.json would say it: a bicubic squash resize
    to the model's size, pixels to [-1, 1] (mean = std = 0.5). big_vision's files carry no such record."""
    size = config_from(tensors).vision_config.image_size
    return {"do_resize": True, "size": {"height": size, "width": size}, "resample": 3, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
