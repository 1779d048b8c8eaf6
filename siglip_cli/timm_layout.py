"""timm's and open_clip's SigLIP checkpoints: their tensor names -> this model's, and their config -> ours.

timm saves a `vit_*_siglip_*` ViT as `model.safetensors` beside a `config.json` naming its `architecture` (and,
from save_for_hf, its `model_args`); open_clip saves the same timm ViT under `visual.trunk.`, its own text
transformer under `text.`, and `logit_scale`, `logit_bias`, as `open_clip_model.safetensors` beside
`open_clip_config.json`. Where each tensor goes (timm/models/vision_transformer.py, timm/layers/attention_pool.py,
open_clip/transformer.py TextTransformer):

    timm (open_clip: visual.trunk.)    ours (vision_model.)
    patch_embed.proj                   embeddings.patch_embedding
    pos_embed (1, N, D)                embeddings.position_embedding.weight (N, D): no class token
    blocks.i.norm1, norm2              encoder.layers.i.layer_norm1, layer_norm2
    blocks.i.attn.qkv (3D, D)          encoder.layers.i.self_attn.{q,k,v}_proj: split in q, k, v order
    blocks.i.attn.proj                 encoder.layers.i.self_attn.out_proj
    blocks.i.mlp.fc1, fc2              encoder.layers.i.mlp.fc1, fc2
    norm                               post_layernorm
    attn_pool.latent                   head.probe
    attn_pool.q (D, D), kv (2D, D)     head.attention.in_proj_weight, _bias (3D, D): cat(q, kv), k before v
    attn_pool.proj, norm, mlp          head.attention.out_proj, head.layernorm, head.mlp

    open_clip text.                    ours (text_model.)
    token_embedding                    embeddings.token_embedding
    positional_embedding (L, D)        embeddings.position_embedding.weight
    transformer.resblocks.i.ln_1, ln_2 encoder.layers.i.layer_norm1, layer_norm2
    ...attn.in_proj_weight (3D, D)     encoder.layers.i.self_attn.{q,k,v}_proj (nn.MultiheadAttention: q, k, v)
    ...attn.out_proj                   encoder.layers.i.self_attn.out_proj
    ...mlp.c_fc, mlp.c_proj            encoder.layers.i.mlp.fc1, fc2
    ln_final                           final_layer_norm
    text_projection (Linear, E x D)    head (a bare (D, E) parameter: transposed, with a zero bias)

Neither library stores the head count: it comes from timm's `model_args` (or open_clip's `timm_model_kwargs`),
else from the architecture name's defaults (TIMM_SIZES), and for open_clip's text tower from `text_cfg.heads`.
Every other size comes from the tensors, and must agree with what the config states.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping

import torch

from .checkpoint import OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME, WEIGHTS_NAME, read_json
from .config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig, is_int, is_number, json_kind, shown
from .errors import CheckpointError
from .layouts import Layout, Lazy, derive
from .preprocess import RESAMPLE_NAMES, SIGLIP_MEAN, SIGLIP_RESAMPLE, SIGLIP_STD

# timm's vit_{size}_patch{P}_siglip[_gap]_{S} models (timm/models/vision_transformer.py) and what each size builds.
ARCHITECTURE = re.compile(r"vit_(base|large|so400m|giantopt)_patch(\d{1,4})_siglip(_gap)?_(\d{1,4})")
TIMM_SIZES = {"base": dict(embed_dim=768, depth=12, num_heads=12),
              "large": dict(embed_dim=1024, depth=24, num_heads=16),
              "so400m": dict(embed_dim=1152, depth=27, num_heads=16),
              "giantopt": dict(embed_dim=1536, depth=40, num_heads=16)}
OPEN_CLIP_PREFIX = "visual.trunk."
# SigLIP was trained (in big_vision) with the tanh approximation of GELU and LayerNorm eps 1e-6. timm builds
# several siglip variants with exact GELU unless act_layer='gelu_tanh' is passed, and open_clip's SigLIP 1 text
# towers use exact GELU too (no act_kwargs): both differ from the checkpoint's true activation, which is used here.
SIGLIP_NUMERICS = dict(layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")

_BLOCK = {"norm1": "layer_norm1", "attn.proj": "self_attn.out_proj", "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1",
          "mlp.fc2": "mlp.fc2"}
_VISION = {"patch_embed.proj": "embeddings.patch_embedding", "norm": "post_layernorm", "attn_pool.proj":
           "head.attention.out_proj", "attn_pool.norm": "head.layernorm", "attn_pool.mlp.fc1": "head.mlp.fc1",
           "attn_pool.mlp.fc2": "head.mlp.fc2"}
_RESBLOCK = {"ln_1": "layer_norm1", "attn.out_proj": "self_attn.out_proj", "ln_2": "layer_norm2",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TEXT = {"token_embedding": "embeddings.token_embedding", "ln_final": "final_layer_norm"}


def _third(i: int):
    return lambda t: t.chunk(3)[i]


def _rename(rest: str, table: dict[str, str]) -> str | None:
    module, _, param = rest.rpartition(".")
    return f"{table[module]}.{param}" if module in table else None


def convert_vision(state: Mapping[str, Lazy], prefix: str = "") -> dict[str, Lazy]:
    """A timm SigLIP ViT's tensors (names after `prefix`) -> ours under `vision_model.`; names this does not know
    come back unchanged, for the strict check to name."""
    out, ours = {}, "vision_model."
    for name, value in state.items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", rest)
        if block and block[2] == "attn.qkv":
            for j, p in enumerate("qkv"):
                out[f"{ours}encoder.layers.{block[1]}.self_attn.{p}_proj.{block[3]}"] = derive(_third(j), value)
        elif block and block[2] in _BLOCK:
            out[f"{ours}encoder.layers.{block[1]}.{_BLOCK[block[2]]}.{block[3]}"] = value
        elif rest == "pos_embed":
            out[f"{ours}embeddings.position_embedding.weight"] = derive(lambda t: t.reshape(t.shape[-2:]), value)
        elif rest == "attn_pool.latent":
            out[f"{ours}head.probe"] = value
        elif re.fullmatch(r"attn_pool\.(q|kv)\.(weight|bias)", rest):
            param = rest.rsplit(".", 1)[1]
            q, kv = state.get(f"{prefix}attn_pool.q.{param}"), state.get(f"{prefix}attn_pool.kv.{param}")
            if q is None or kv is None:  # half a projection: named by the strict check
                out[name] = value
            else:  # nn.MultiheadAttention's in_proj: q, then k and v, as timm's kv holds them
                out[f"{ours}head.attention.in_proj_{param}"] = derive(lambda a, b: torch.cat([a, b]), q, kv)
        else:
            out[ours + renamed if (renamed := _rename(rest, _VISION)) else name] = value
    return out


def convert_text(state: Mapping[str, Lazy]) -> dict[str, Lazy]:
    """open_clip's text tower (`text.`) and score scalars -> ours; unknown `text.` names go under `text_model.`,
    so only a model with a text tower names them."""
    out, ours = {}, "text_model."
    for name, value in state.items():
        if name in ("logit_scale", "logit_bias"):  # open_clip's are scalars, ours (1,)
            out[name] = derive(lambda t: t.reshape(-1), value)
        if not name.startswith("text."):
            continue
        rest = name[len("text."):]
        block = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", rest)
        layer = f"{ours}encoder.layers.{block[1]}." if block else ""
        if block and block[2] in ("attn.in_proj_weight", "attn.in_proj_bias"):
            param = block[2].rsplit("_", 1)[1]
            for j, p in enumerate("qkv"):
                out[f"{layer}self_attn.{p}_proj.{param}"] = derive(_third(j), value)
        elif block and (renamed := _rename(block[2], _RESBLOCK)):
            out[layer + renamed] = value
        elif rest == "positional_embedding":
            out[f"{ours}embeddings.position_embedding.weight"] = value
        elif rest == "text_projection":  # a bare (D, E) matrix, x @ P: our head is a Linear with a bias
            out[f"{ours}head.weight"] = derive(lambda t: t.t().contiguous(), value)
            out[f"{ours}head.bias"] = derive(lambda t: t.new_zeros(t.shape[1]), value)
        elif rest.startswith("text_projection."):
            out[f"{ours}head.{rest.rsplit('.', 1)[1]}"] = value
        else:
            out[ours + (_rename(rest, _TEXT) or rest)] = value
    return out


def convert_timm(state: Mapping[str, Lazy], config=None) -> dict[str, Lazy]:
    return convert_vision(state)


def convert_open_clip(state: Mapping[str, Lazy], config=None) -> dict[str, Lazy]:
    out = convert_vision(state, OPEN_CLIP_PREFIX)
    out.update(convert_text(state))
    out.update({k: v for k, v in state.items()
                if not k.startswith((OPEN_CLIP_PREFIX, "text.")) and k not in ("logit_scale", "logit_bias")})
    return out


TIMM = Layout("timm", lambda names: "patch_embed.proj.weight" in names, convert_timm)
OPEN_CLIP = Layout("open_clip", lambda names: OPEN_CLIP_PREFIX + "patch_embed.proj.weight" in names,
                   convert_open_clip)
LAYOUTS = {"timm": TIMM, "open_clip": OPEN_CLIP}


def _object(file: Path, value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: {what} is {json_kind(value)}, not a JSON object: re-download the checkpoint")
    return value


def timm_args(file: Path, architecture: object, model_args: object) -> dict:
    """The arguments a timm SigLIP architecture name builds its ViT with, overridden by `model_args`."""
    name = architecture.split(".")[0] if isinstance(architecture, str) else None
    match = ARCHITECTURE.fullmatch(name) if name else None
    if match is None:
        raise CheckpointError(f"{file}: timm architecture {shown(architecture)} is not a SigLIP ViT (expected "
                              "vit_<base|large|so400m|giantopt>_patch<P>_siglip[_gap]_<size>): use a SigLIP "
                              "checkpoint")
    args = dict(TIMM_SIZES[match[1]], patch_size=int(match[2]), img_size=int(match[4]))
    return {**args, **_object(file, {} if model_args is None else model_args, "model_args")}


def _square(file: Path, what: str, value: object) -> int | None:
    """An image side from a JSON int, [H, W] or [C, H, W]; None when absent."""
    if isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(map(is_int, value)) and value[-1] == value[-2]:
        value = value[-1]
    if value is not None and not is_int(value):
        raise CheckpointError(f"{file}: {what} is {shown(value)}: expected a square image size: fix the config")
    return value


def _shape(file: Path, tensors: Mapping[str, Lazy], name: str, rank: int) -> tuple[int, ...]:
    if name not in tensors:
        raise CheckpointError(f"{file.parent}: no tensor {name} in the weights: not a complete SigLIP checkpoint "
                              "of this layout: re-download it")
    shape = tensors[name].shape
    if len(shape) != rank:
        raise CheckpointError(f"{file.parent}: tensor {name} has shape {list(shape)}, not {rank} dimensions: not a "
                              "SigLIP checkpoint of this layout: re-download it")
    return shape


def _depth(tensors: Mapping[str, Lazy], pattern: str) -> tuple[int, int | None]:
    """The number of blocks (the highest index + 1) and one block index present; `pattern` captures the index
    with a bounded number of digits (a hostile name may carry thousands)."""
    found = sorted({int(m[1]) for n in tensors if (m := re.fullmatch(pattern, n))})
    return (found[-1] + 1, found[0]) if found else (0, None)


def _agree(file: Path, stated: dict, found: dict) -> None:
    """Sizes the config states must be those of the tensors: else the config is not these weights' (or a
    whole last block is missing)."""
    for key, value in found.items():
        if stated.get(key) is not None and stated[key] != value:
            raise CheckpointError(f"{file}: {key} is {shown(stated[key])} but the weights hold {value}: the config "
                                  "does not fit the weights: re-download the checkpoint")


def _built(file: Path, cls: type, **sizes):
    try:
        return cls(**sizes, **SIGLIP_NUMERICS)
    except CheckpointError as e:
        raise CheckpointError(f"{file}: {e}") from None


def vision_config(file: Path, tensors: Mapping[str, Lazy], args: dict, prefix: str = "",
                  image_size: object = None) -> SiglipVisionConfig:
    """The vision tower's sizes from the tensors' shapes, the heads from `args`, checked against both."""
    width, _, _, patch = _shape(file, tensors, prefix + "patch_embed.proj.weight", 4)
    positions = _shape(file, tensors, prefix + "pos_embed", 3)[1]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise CheckpointError(f"{file.parent}: {prefix}pos_embed holds {positions} positions, not a square grid of "
                              "patches (a class token?): not a SigLIP ViT")
    depth, first = _depth(tensors, re.escape(prefix) + r"blocks\.(\d{1,9})\..*")
    if first is None:
        raise CheckpointError(f"{file.parent}: no {prefix}blocks.* tensors: not a complete SigLIP ViT: re-download it")
    _agree(file, args, {"embed_dim": width, "depth": depth, "patch_size": patch})
    # so400m-patch14-384: 384 // 14 = 27, the grid (6 px unused). A size the file states must fit the grid; the
    # architecture name's is only a default.
    size = _square(file, "the image size", image_size)
    if size is not None and size // patch != grid:
        raise CheckpointError(f"{file}: image size {size} at patch {patch} is a {size // patch} x {size // patch} "
                              f"grid, but {prefix}pos_embed holds {grid} x {grid}: the config does not fit the "
                              "weights: re-download the checkpoint")
    if size is None:
        size = args["img_size"] if is_int(args.get("img_size")) and args["img_size"] // patch == grid \
            else grid * patch
    mlp = _shape(file, tensors, f"{prefix}blocks.{first}.mlp.fc1.weight", 2)[0]
    return _built(file, SiglipVisionConfig, hidden_size=width, intermediate_size=mlp,
                  num_attention_heads=args.get("num_heads"), num_hidden_layers=depth, image_size=size,
                  patch_size=patch, vision_use_head=any(n.startswith(prefix + "attn_pool.") for n in tensors))


def text_refusal(model_cfg: dict) -> str | None:
    """Why open_clip's text tower computes what ours cannot (None: it is SigLIP's): open_clip's defaults are CLIP's
    (argmax pooling, a causal mask), which its SigLIP configs override."""
    text = model_cfg.get("text_cfg")
    if not isinstance(text, dict):
        return "is not described (no text_cfg)"
    flags = [k for k in ("hf_model_name", "embed_cls", "use_pad_mask", "qk_norm", "scaled_cosine_attn", "scale_heads",
                         "scale_attn_inner", "scale_attn", "scale_fc", "ls_init_value") if text.get(k)]
    if model_cfg.get("quick_gelu"):
        flags.append("quick_gelu")
    if flags:
        return f"uses {', '.join(flags)}"
    if text.get("pool_type", "argmax") != "last":
        return f"pools at {shown(text.get('pool_type', 'argmax'))}, SigLIP at the last position"
    if text.get("no_causal_mask") is not True:
        return "uses a causal attention mask, SigLIP none"
    if text.get("proj_type", "linear") != "linear":
        return f"has a {shown(text['proj_type'])} projection, SigLIP a linear one"
    return None


def text_config(file: Path, tensors: Mapping[str, Lazy], text: dict) -> SiglipTextConfig:
    vocab, width = _shape(file, tensors, "text.token_embedding.weight", 2)
    positions = _shape(file, tensors, "text.positional_embedding", 2)[0]
    depth, first = _depth(tensors, r"text\.transformer\.resblocks\.(\d{1,9})\..*")
    if first is None:
        raise CheckpointError(f"{file.parent}: no text.transformer.resblocks.* tensors: re-download the checkpoint")
    _agree(file, text, {"width": width, "layers": depth, "vocab_size": vocab, "context_length": positions})
    mlp = _shape(file, tensors, f"text.transformer.resblocks.{first}.mlp.c_fc.weight", 2)[0]
    projection = width
    if "text.text_projection.weight" in tensors:  # a Linear (E, D)
        projection = _shape(file, tensors, "text.text_projection.weight", 2)[0]
    elif "text.text_projection" in tensors:  # a bare matrix (D, E)
        projection = _shape(file, tensors, "text.text_projection", 2)[1]
    return _built(file, SiglipTextConfig, vocab_size=vocab, hidden_size=width, intermediate_size=mlp,
                  num_attention_heads=text.get("heads", 8), num_hidden_layers=depth, max_position_embeddings=positions,
                  projection_size=projection)


def preprocessor(file: Path, cfg: object, image_size: int) -> dict:
    """SigLIP's preprocessing (bicubic, mean = std = 0.5) at the model's size, with the mean, std and interpolation
    the file states, as a Hugging Face preprocessor_config.json. The resize is always a squash to S x S, as SigLIP
    was trained: timm's crop_pct and open_clip's resize_mode describe crops this tool does not make."""
    cfg = _object(file, {} if cfg is None else cfg, "the preprocessing config")
    out = {"do_resize": True, "size": {"height": image_size, "width": image_size}, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_normalize": True}
    for key, ours, default in (("mean", "image_mean", SIGLIP_MEAN), ("std", "image_std", SIGLIP_STD)):
        value = cfg.get(key, default)
        values = [value] * 3 if is_number(value) else value
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(map(is_number, values)) \
                or (key == "std" and min(values) <= 0):
            above = ", each above 0" if key == "std" else ""
            raise CheckpointError(f"{file}: {key} is {shown(value)}: expected 3 numbers (R, G, B){above}: "
                                  "fix the config")
        out[ours] = [float(v) for v in values]
    codes = {name: code for code, name in RESAMPLE_NAMES.items()}
    interpolation = cfg.get("interpolation", RESAMPLE_NAMES[SIGLIP_RESAMPLE])
    if not isinstance(interpolation, str) or interpolation not in codes:
        raise CheckpointError(f"{file}: interpolation is {shown(interpolation)}: expected one of {', '.join(codes)}: "
                              "fix the config")
    out["resample"] = codes[interpolation]
    return out


def read_settings(kind: str, folder: Path) -> tuple[Path, dict, object, object, dict | None]:
    """A timm or open_clip folder's config file, checked as far as it can be without the weights (e.g. before
    downloading them: an architecture that is not a SigLIP ViT is refused here): (the file, the timm arguments,
    the image size it states, its preprocessing config, open_clip's model_cfg or None)."""
    if kind == "timm":
        file = folder / "config.json"
        data = _object(file, read_json(file), "config.json")
        args = timm_args(file, data.get("architecture"), data.get("model_args"))
        pretrained = _object(file, data.get("pretrained_cfg") or {}, "pretrained_cfg")
        # The image size: model_args', else the preprocessing's input_size, else the architecture name's.
        model_args = data.get("model_args") or {}
        return file, args, model_args["img_size"] if "img_size" in model_args else pretrained.get("input_size"), \
            pretrained, None
    file = folder / OPEN_CLIP_CONFIG_NAME
    data = _object(file, read_json(file), OPEN_CLIP_CONFIG_NAME)
    model_cfg = _object(file, data.get("model_cfg"), "model_cfg")
    vision_cfg = _object(file, model_cfg.get("vision_cfg"), "model_cfg.vision_cfg")
    if "timm_model_name" not in vision_cfg:
        raise CheckpointError(f"{file}: the vision tower is not a timm model (no vision_cfg.timm_model_name): only "
                              "open_clip's SigLIP models (a timm vit_*_siglip_* trunk) load: use a SigLIP checkpoint")
    args = timm_args(file, vision_cfg["timm_model_name"], vision_cfg.get("timm_model_kwargs"))
    return file, args, vision_cfg.get("image_size"), data.get("preprocess_cfg"), model_cfg


def config_from(kind: str, folder: Path, tensors: Mapping[str, Lazy]) -> tuple[SiglipConfig, dict]:
    """A timm or open_clip checkpoint folder -> (its SiglipConfig, its preprocessing as preprocessor_config.json
    keys), from its config file and the tensors' shapes (headers only: nothing is read)."""
    file, args, size, pp, model_cfg = read_settings(kind, folder)
    if not LAYOUTS[kind].matches(tensors):
        raise CheckpointError(f"{folder / (WEIGHTS_NAME if kind == 'timm' else OPEN_CLIP_WEIGHTS_NAME)}: holds no "
                              f"{'timm ViT' if kind == 'timm' else OPEN_CLIP_PREFIX} tensors (e.g. "
                              "patch_embed.proj.weight) although the config says so: re-download the checkpoint")
    vision = vision_config(file, tensors, args, "" if kind == "timm" else OPEN_CLIP_PREFIX, size)
    text = None
    if model_cfg is not None and any(n.startswith("text.") for n in tensors) and text_refusal(model_cfg) is None:
        text = text_config(file, tensors, model_cfg["text_cfg"])
    return SiglipConfig(vision, text), preprocessor(file, pp, vision.image_size)


def no_text_tower(kind: str, path: Path) -> str:
    """The one-line reason a checkpoint of this kind gives no text tower."""
    if kind == "open_clip":
        file = path / OPEN_CLIP_CONFIG_NAME
        data = read_json(file)
        model_cfg = data.get("model_cfg") if isinstance(data, dict) else None
        reason = text_refusal(model_cfg) if isinstance(model_cfg, dict) else "is not described (no model_cfg)"
        if reason:
            return f"{file}: the open_clip text tower {reason}, which SigLIP's text tower does not: load the " \
                   "image tower only (SiglipVisionModel)"
        return f"{path / OPEN_CLIP_WEIGHTS_NAME}: holds no text.* tensors: use a full open_clip SigLIP checkpoint"
    if kind == "timm":
        return f"{path}: a timm checkpoint holds the image tower only: use a full SigLIP checkpoint (transformers, " \
               "open_clip or big_vision) for text"
    return f"{path}: holds no text tower (no txt/ arrays): use a full SigLIP checkpoint for text"
