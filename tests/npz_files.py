"""big_vision SigLIP `.npz` files built offline, for tests: the vision tower by inverting timm's `_load_weights`
(timm/models/vision_transformer.py), the text tower and `t`, `b` by inverting transformers'
`convert_siglip_to_hf.py` (the only references there are without the original big_vision code or files).

Layouts: keys under `img/` (transformers' converter) or `params/img/` (timm's), layers as `encoderblock_{i}` or
one scanned `encoderblock` with a leading depth axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# A tiny SigLIP ViT in timm: the same sizes as conftest.TINY (the MLP's 37 catches a hard-coded 4*D).
TIMM_TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=37 / 32)


def timm_model(seed: int = 0, **sizes):
    """A random timm SigLIP ViT with the attention-pooling head, tanh-GELU (what the checkpoints use), and every
    parameter random: timm's init leaves LayerNorms at 1 and 0 and biases at 0, which would hide a swap."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0, act_layer="gelu_tanh",
                              **{**TIMM_TINY, **sizes})
    randomize(model, seed)
    return model.eval()


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2
        p.copy_(noise + 1 if p.ndim == 1 and ("norm" in name or "layer_norm" in name) and "weight" in name else noise)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _heads_kernel(w: torch.Tensor, heads: int) -> np.ndarray:
    """A Linear (out, in) q/k/v weight -> flax's (D, h, Dh) kernel."""
    return _np(w.T.reshape(w.shape[1], heads, -1))


def _out_kernel(w: torch.Tensor, heads: int) -> np.ndarray:
    """The attention's output Linear (D, h * Dh) -> flax's (h, Dh, D) kernel."""
    return _np(w.T.reshape(heads, -1, w.shape[0]))


def _attention(prefix: str, q, k, v, qb, kb, vb, out, out_b, heads: int) -> dict[str, np.ndarray]:
    arrays = {}
    for name, w, b in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
        arrays[f"{prefix}{name}/kernel"] = _heads_kernel(w, heads)
        arrays[f"{prefix}{name}/bias"] = _np(b.reshape(heads, -1))
    arrays[f"{prefix}out/kernel"] = _out_kernel(out, heads)
    arrays[f"{prefix}out/bias"] = _np(out_b)
    return arrays


def _mlp(prefix: str, sd: dict, ours: str) -> dict[str, np.ndarray]:
    """A Linear pair `{ours}fc1`, `{ours}fc2` -> flax's `MlpBlock_0/Dense_0`, `Dense_1` ((in, out) kernels)."""
    arrays = {}
    for r in range(2):
        arrays[f"{prefix}MlpBlock_0/Dense_{r}/kernel"] = _np(sd[f"{ours}fc{r + 1}.weight"].T)
        arrays[f"{prefix}MlpBlock_0/Dense_{r}/bias"] = _np(sd[f"{ours}fc{r + 1}.bias"])
    return arrays


def _scan(arrays: dict[str, np.ndarray], prefix: str, depth: int) -> dict[str, np.ndarray]:
    """`{prefix}encoderblock_{i}/x` for every i -> one `{prefix}encoderblock/x` stacked on a leading depth axis."""
    out = {k: v for k, v in arrays.items() if not k.startswith(prefix + "encoderblock_")}
    for name in [k for k in arrays if k.startswith(prefix + "encoderblock_0/")]:
        sub = name[len(prefix + "encoderblock_0/"):]
        out[f"{prefix}encoderblock/{sub}"] = np.stack([arrays[f"{prefix}encoderblock_{i}/{sub}"]
                                                       for i in range(depth)])
    return out


def vision_arrays(timm_sd: dict[str, torch.Tensor], heads: int, img: str = "img/",
                  scanned: bool = False) -> dict[str, np.ndarray]:
    """timm's SigLIP ViT state dict -> big_vision's `img/` arrays: timm's `_load_weights` (big_vision branch:
    MultiHeadDotProductAttention_0, MlpBlock_0, LayerNorm_0 and _1) run backwards. Every timm tensor is used."""
    sd, used = dict(timm_sd), set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return sd[name]

    arrays = {img + "embedding/kernel": _np(take("patch_embed.proj.weight").permute(2, 3, 1, 0)),  # OIHW -> HWIO
              img + "embedding/bias": _np(take("patch_embed.proj.bias")),
              img + "pos_embedding": _np(take("pos_embed")),
              img + "Transformer/encoder_norm/scale": _np(take("norm.weight")),
              img + "Transformer/encoder_norm/bias": _np(take("norm.bias"))}
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        b, p = f"blocks.{i}.", f"{img}Transformer/encoderblock_{i}/"
        q, k, v = take(b + "attn.qkv.weight").chunk(3)
        qb, kb, vb = take(b + "attn.qkv.bias").chunk(3)
        arrays.update(_attention(p + "MultiHeadDotProductAttention_0/", q, k, v, qb, kb, vb,
                                 take(b + "attn.proj.weight"), take(b + "attn.proj.bias"), heads))
        for j, norm in enumerate(("norm1", "norm2")):
            arrays[f"{p}LayerNorm_{j}/scale"] = _np(take(f"{b}{norm}.weight"))
            arrays[f"{p}LayerNorm_{j}/bias"] = _np(take(f"{b}{norm}.bias"))
        arrays.update(_mlp(p, sd, b + "mlp."))
        used.update(f"{b}mlp.fc{r}.{w}" for r in (1, 2) for w in ("weight", "bias"))
    if "attn_pool.latent" in sd:
        a, p = "attn_pool.", img + "MAPHead_0/"
        arrays[p + "probe"] = _np(take(a + "latent"))
        k, v = take(a + "kv.weight").chunk(2)
        kb, vb = take(a + "kv.bias").chunk(2)
        arrays.update(_attention(p + "MultiHeadDotProductAttention_0/", take(a + "q.weight"), k, v, take(a + "q.bias"),
                                 kb, vb, take(a + "proj.weight"), take(a + "proj.bias"), heads))
        arrays[p + "LayerNorm_0/scale"] = _np(take(a + "norm.weight"))
        arrays[p + "LayerNorm_0/bias"] = _np(take(a + "norm.bias"))
        arrays.update(_mlp(p, sd, a + "mlp."))
        used.update(f"{a}mlp.fc{r}.{w}" for r in (1, 2) for w in ("weight", "bias"))
    assert used == set(sd), f"timm tensors not written: {sorted(set(sd) - used)}"
    return _scan(arrays, img + "Transformer/", depth) if scanned else arrays


def timm_state_from_transformers(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' `vision_model.*` -> timm's SigLIP ViT names (q, k, v fused; the head's k, v fused)."""
    v = {k[len("vision_model."):]: t for k, t in hf_sd.items() if k.startswith("vision_model.")}
    sd = {"patch_embed.proj.weight": v["embeddings.patch_embedding.weight"],
          "patch_embed.proj.bias": v["embeddings.patch_embedding.bias"],
          "pos_embed": v["embeddings.position_embedding.weight"][None],
          "norm.weight": v["post_layernorm.weight"], "norm.bias": v["post_layernorm.bias"]}
    depth = len({k.split(".")[2] for k in v if k.startswith("encoder.layers.")})
    for i in range(depth):
        o, b = f"encoder.layers.{i}.", f"blocks.{i}."
        for w in ("weight", "bias"):
            sd[f"{b}attn.qkv.{w}"] = torch.cat([v[f"{o}self_attn.{n}_proj.{w}"] for n in "qkv"])
            sd[f"{b}attn.proj.{w}"] = v[f"{o}self_attn.out_proj.{w}"]
            sd[f"{b}norm1.{w}"], sd[f"{b}norm2.{w}"] = v[f"{o}layer_norm1.{w}"], v[f"{o}layer_norm2.{w}"]
            sd[f"{b}mlp.fc1.{w}"], sd[f"{b}mlp.fc2.{w}"] = v[f"{o}mlp.fc1.{w}"], v[f"{o}mlp.fc2.{w}"]
    if "head.probe" in v:
        sd["attn_pool.latent"] = v["head.probe"]
        for w in ("weight", "bias"):
            in_proj = v[f"head.attention.in_proj_{w}"]  # (3D, ...): q, then k and v (timm's kv)
            sd[f"attn_pool.q.{w}"], sd[f"attn_pool.kv.{w}"] = in_proj.split([len(in_proj) // 3, 2 * len(in_proj) // 3])
            sd[f"attn_pool.proj.{w}"] = v[f"head.attention.out_proj.{w}"]
            sd[f"attn_pool.norm.{w}"] = v[f"head.layernorm.{w}"]
            sd[f"attn_pool.mlp.fc1.{w}"], sd[f"attn_pool.mlp.fc2.{w}"] = v[f"head.mlp.fc1.{w}"], v[f"head.mlp.fc2.{w}"]
    return sd


def text_arrays(hf_sd: dict[str, torch.Tensor], heads: int, root: str = "",
                scanned: bool = False) -> dict[str, np.ndarray]:
    """transformers' `text_model.*`, `logit_scale`, `logit_bias` -> big_vision's `txt/`, `t`, `b`: the renames of
    transformers' convert_siglip_to_hf.py (`txt/Embed_0/embedding`, `txt/pos_embedding`,
    `txt/Encoder_0/encoderblock_{i}/...`, `txt/Encoder_0/encoder_norm`, `txt/head`, `t`, `b`) run backwards."""
    t = {k[len("text_model."):]: x for k, x in hf_sd.items() if k.startswith("text_model.")}
    p = root + "txt/"
    arrays = {p + "Embed_0/embedding": _np(t["embeddings.token_embedding.weight"]),
              p + "pos_embedding": _np(t["embeddings.position_embedding.weight"][None]),
              p + "Encoder_0/encoder_norm/scale": _np(t["final_layer_norm.weight"]),
              p + "Encoder_0/encoder_norm/bias": _np(t["final_layer_norm.bias"]),
              p + "head/kernel": _np(t["head.weight"].T), p + "head/bias": _np(t["head.bias"]),
              root + "t": _np(hf_sd["logit_scale"].reshape(1)), root + "b": _np(hf_sd["logit_bias"].reshape(1))}
    depth = len({k.split(".")[2] for k in t if k.startswith("encoder.layers.")})
    for i in range(depth):
        o, b = f"encoder.layers.{i}.", f"{p}Encoder_0/encoderblock_{i}/"
        a = {n: t[f"{o}self_attn.{n}_proj.weight"] for n in ("q", "k", "v", "out")}
        ab = {n: t[f"{o}self_attn.{n}_proj.bias"] for n in ("q", "k", "v", "out")}
        arrays.update(_attention(b + "MultiHeadDotProductAttention_0/", a["q"], a["k"], a["v"], ab["q"], ab["k"],
                                 ab["v"], a["out"], ab["out"], heads))
        for j in range(2):
            arrays[f"{b}LayerNorm_{j}/scale"] = _np(t[f"{o}layer_norm{j + 1}.weight"])
            arrays[f"{b}LayerNorm_{j}/bias"] = _np(t[f"{o}layer_norm{j + 1}.bias"])
        arrays.update(_mlp(b, t, o + "mlp."))
    return _scan(arrays, p + "Encoder_0/", depth) if scanned else arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray], compressed: bool = False) -> Path:
    """Save as big_vision does: one .npz of flax paths joined by `/`."""
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path
