"""Compute precision: float32 (exact), bfloat16/float16 (GPUs, and CPUs with native bf16), or int8 (CPUs).

    --dtype bfloat16|float16  weights and activations in half precision; LayerNorm (weights and
                              arithmetic) stays float32, softmax accumulates in float32. On a CPU
                              whose oneDNN has bf16 kernels, bfloat16 encoder layers run fused
                              (FusedEncoderLayer, below).
    --quantize int8           every Linear layer's weights in int8 (per output channel) and its
                              inputs quantized per batch at run time: 1.6x (AVX2) to 2.6x (AVX-512
                              VNNI) faster on x86 CPUs, approximate (min cosine to float32 0.9989 per
                              patch, 0.9996 pooled, on the sample photos: see the README).

Whatever the precision (to_dtype, quantize_int8, set_precision), the MLPs get a faster CPU tanh-GELU
(FastMLP, TanhGELU): the same function within 5e-7, in cache-sized blocks, in place where no trace or
hook sees fc1's output. It takes its fast path only where it applies (CPU, float32, no autograd).

bfloat16 on a CPU (FusedEncoderLayer): each encoder layer is five oneDNN matmuls on weights packed once
in oneDNN's blocked layout (q/k/v as one), with the bias, the tanh-GELU (after fc1) and the residual
add (after out_proj and fc2) computed in float32 inside the matmul and rounded to bf16 once, and
LayerNorm reading bf16 directly (model.LayerNorm). Measured on an AVX-512 BF16 CPU: see the README.
The float32 and int8 paths are untouched by it.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from . import choices
from .choices import QUANTIZE
from .errors import UsageError
from .model import LayerNorm, SiglipEncoderLayer, SiglipMLP, SiglipVisionModel

DTYPES = {name: getattr(torch, name) for name in choices.DTYPES}  # "float32" -> torch.float32 ...

_GELU_K = 2 * math.sqrt(2 / math.pi)
_GELU_BLOCK = 2**18  # elements per block: 1 MiB of float32, measured fastest on 2 cores


class TanhGELU(nn.GELU):
    """GELU with the tanh approximation, 0.5 x (1 + tanh(z)) with z = sqrt(2/pi) (x + 0.044715 x^3).

    On CPU without autograd it is computed as x * sigmoid(2z), the same function (1 + tanh(z) =
    2 sigmoid(2z)), in row blocks that stay in cache, and in place when the caller allows: faster
    than PyTorch's tanh-GELU kernel on CPU, and equal to it within 5e-7. Elsewhere it is nn.GELU.
    """

    def __init__(self):
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled() or x.numel() == 0 \
                or x.dim() == 0:
            return super().forward(x)
        if not x.is_contiguous():
            x, inplace = x.contiguous(), True  # a fresh copy: ours to overwrite
        out = x if inplace else torch.empty_like(x)
        width = x.shape[-1]
        block = max(1, _GELU_BLOCK // width)  # rows per block
        for a, y in zip(x.view(-1, width).split(block), out.view(-1, width).split(block)):
            z = torch.addcmul(a, a, a * a, value=0.044715)  # x + 0.044715 x^3
            torch.mul(a, z.mul_(_GELU_K).sigmoid_(), out=y)
        return out


def _has_forward_hooks(*modules: nn.Module) -> bool:
    """Whether a forward (pre-)hook, on these modules or a global one, would be handed their tensors."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks) or \
        any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class FastMLP(SiglipMLP):
    """SiglipMLP with TanhGELU, which overwrites fc1's output rather than allocate a second (B, N, F).

    fc1's output is this forward's own unless a trace or a forward hook sees it: then it is SiglipMLP's
    forward (TanhGELU out of place).
    """

    def forward(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        if trace is not None or _has_forward_hooks(self.fc1, self.activation_fn):
            return super().forward(x, trace)
        return self.fc2(self.activation_fn(self.fc1(x), inplace=True))  # (B, N, F) -> (B, N, D)


def use_fast_gelu(model: nn.Module) -> nn.Module:
    """Give every tanh-GELU SiglipMLP the fast CPU GELU (in place).

    Only the classes change: parameters, state-dict keys and hooks stay as they are.
    """
    for module in model.modules():
        if type(module) is SiglipMLP and type(module.activation_fn) is nn.GELU \
                and module.activation_fn.approximate == "tanh":
            module.__class__ = FastMLP
            module.activation_fn.__class__ = TanhGELU
    return model


def fused_cpu_bf16() -> bool:
    """Whether this torch's oneDNN runs bf16 matmuls on this CPU (natively with AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and not torch.ops.mkldnn._is_mkldnn_acl_supported())  # Arm's ACL has no fused linear
    except (AttributeError, RuntimeError):
        return False


def _stamp(t: torch.Tensor) -> tuple:
    """Which values a tensor holds: its storage, dtype and (outside inference tensors) its version."""
    try:
        version = t._version
    except RuntimeError:  # an inference tensor keeps no version counter
        version = None
    return t.data_ptr(), t.dtype, version


def _layer_tensors(layer: SiglipEncoderLayer) -> list[torch.Tensor]:
    a, m = layer.self_attn, layer.mlp
    return [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, a.q_proj.bias, a.k_proj.bias, a.v_proj.bias,
            a.out_proj.weight, m.fc1.weight, m.fc2.weight]


class _Packed:
    """One encoder layer's matmul weights in oneDNN's blocked layout (q, k and v as one), and their sources.

    oneDNN would otherwise reorder each weight on every call. The packed copies add the layers' weights
    once more in memory (bf16: 2 bytes a parameter); they are packed again if a weight changes.
    """

    def __init__(self, layer: SiglipEncoderLayer, rows: int):
        a, m = layer.self_attn, layer.mlp
        pack = torch.ops.mkldnn._reorder_linear_weight
        self.sources = [_stamp(t) for t in _layer_tensors(layer)]
        self.qkv = pack(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), rows)  # (3D, D)
        self.qkv_bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])  # (3D,)
        self.out_proj, self.fc1, self.fc2 = (pack(w.weight, rows) for w in (a.out_proj, m.fc1, m.fc2))

    def fresh(self, layer: SiglipEncoderLayer) -> bool:
        return self.sources == [_stamp(t) for t in _layer_tensors(layer)]


class FusedEncoderLayer(SiglipEncoderLayer):
    """SiglipEncoderLayer for bfloat16 on a CPU: five oneDNN matmuls on packed weights (_Packed), with the
    bias, GELU and residual add fused into them, computed in float32 and rounded to bf16 once.

    The same function as SiglipEncoderLayer's, and closer to float32 (fewer roundings). Anything else
    (float32, a GPU, autograd, a trace, a hook, the explicit attention) takes SiglipEncoderLayer's forward.
    """

    _packed: _Packed | None = None

    def __getstate__(self) -> dict:
        # oneDNN's packed tensors have no storage to copy or pickle: a copy packs its own when it first runs.
        return {k: v for k, v in self.__dict__.items() if k != "_packed"}

    def forward(self, x: torch.Tensor, trace: dict | None = None) -> torch.Tensor:
        a, m = self.self_attn, self.mlp
        if trace is not None or x.dtype != torch.bfloat16 or x.device.type != "cpu" or x.dim() != 3 \
                or torch.is_grad_enabled() or a.explicit or self.training or type(m.activation_fn) not in \
                (nn.GELU, TanhGELU) or any(w.dtype != torch.bfloat16 for w in _layer_tensors(self)) \
                or _has_forward_hooks(*self.modules()):
            return super().forward(x, trace)
        B, N, D = x.shape
        if self._packed is None or not self._packed.fresh(self):
            self._packed = _Packed(self, B * N)
        p, linear = self._packed, torch.ops.mkldnn._linear_pointwise
        qkv = linear(self.layer_norm1(x), p.qkv, p.qkv_bias, "none", [], "")  # (B, N, 3D)
        q, k, v = qkv.view(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, h, N, Dh)
        y = F.scaled_dot_product_attention(q, k, v, scale=a.scale)  # (B, h, N, Dh)
        y = y.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        x = linear.binary(y, x, p.out_proj, a.out_proj.bias, "add")  # x + out_proj(y)
        approximate = m.activation_fn.approximate  # "tanh" for SigLIP checkpoints, "none" for erf
        h = linear(self.layer_norm2(x), p.fc1, m.fc1.bias, "gelu", [], approximate)  # (B, N, F)
        return linear.binary(h, x, p.fc2, m.fc2.bias, "add")  # x + fc2(h): (B, N, D)


def use_fused_layers(model: nn.Module) -> nn.Module:
    """Give every encoder layer the fused bf16 CPU forward (in place), where this CPU's oneDNN has bf16 kernels.

    Only the classes change: parameters, state-dict keys and hooks stay as they are.
    """
    if fused_cpu_bf16():
        for module in model.modules():
            if type(module) is SiglipEncoderLayer:
                module.__class__ = FusedEncoderLayer
    return model


def to_dtype(model: SiglipVisionModel, dtype: str) -> SiglipVisionModel:
    """Cast the model's weights to dtype, except LayerNorm's, which stay float32, with the fast GELU (in place).

    bfloat16 also gets the fused CPU encoder layers (use_fused_layers), which any other device skips.
    """
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    target = DTYPES[dtype]
    keep = {id(p) for m in model.modules() if isinstance(m, LayerNorm) for p in m.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in keep and p.is_floating_point() and p.dtype != target:
                p.data = p.data.to(target)
    if target == torch.bfloat16:
        use_fused_layers(model)
    return use_fast_gelu(model)


def quantize_int8(model: SiglipVisionModel) -> SiglipVisionModel:
    """Replace every nn.Linear by a dynamically quantized int8 Linear (in place; CPU only).

    Weights are int8 per output channel; each call quantizes its input per tensor. This is torch's
    eager dynamic quantization, which PyTorch now marks deprecated in favour of torchao; torchao's
    eager int8 path has no fast x86 CPU kernel (measured 25x slower than float32 here), so this is
    the one that makes CPUs faster today. The weights are packed for oneDNN where this torch has it
    (measured 1.5-1.7x over float32 on an AVX2 CPU, against 1.4-1.5x for fbgemm), else for the
    default engine; the packed weights keep their kernel whatever the engine setting later.
    """
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        raise UsageError("--quantize int8: this torch build has no dynamic int8 quantization "
                         "(torch.ao.quantization): use --quantize none") from None
    engines = torch.backends.quantized.supported_engines
    if not [e for e in engines if e != "none"]:
        raise UsageError("--quantize int8: this torch build has no int8 CPU kernels: use --quantize none")
    use_fast_gelu(model)  # the activations stay float32: the fast path applies
    previous = torch.backends.quantized.engine
    try:
        if "onednn" in engines:
            torch.backends.quantized.engine = "onednn"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    finally:
        torch.backends.quantized.engine = previous
    return model


def check_precision(dtype: str, quantize: str, device: str) -> None:
    """Refuse --dtype/--quantize/--device combinations that cannot work, before any model is loaded."""
    if quantize not in QUANTIZE:
        raise UsageError(f"unknown --quantize {quantize!r}: use one of {', '.join(QUANTIZE)}")
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if quantize == "int8":
        if device not in ("auto", "cpu"):
            raise UsageError(f"--quantize int8 runs on the CPU only, not {device}: add --device cpu, "
                             "or use --dtype bfloat16 on a GPU")
        if dtype != "float32":
            raise UsageError("--quantize int8 and --dtype bfloat16/float16 do not combine: choose one")


def set_precision(model: SiglipVisionModel, dtype: str, quantize: str, device: torch.device) -> SiglipVisionModel:
    """Apply --dtype and --quantize (in place) for a model that runs on device, with the fast GELU."""
    check_precision(dtype, quantize, device.type)
    return quantize_int8(model) if quantize == "int8" else to_dtype(model, dtype)
