"""Compute precision: float32 (exact), bfloat16/float16 (GPUs), or dynamic int8 Linear layers (CPUs).

    --dtype bfloat16|float16  weights and activations in half precision; LayerNorm (weights and
                              arithmetic) stays float32, softmax accumulates in float32.
    --quantize int8           every Linear layer's weights in int8 (per output channel) and its
                              inputs quantized per batch at run time: ~1.5x faster on x86 CPUs,
                              approximate (cosine ~0.9997 to float32, see the README).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .errors import UsageError
from .model import LayerNorm, SiglipVisionModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZE = ("none", "int8")


def to_dtype(model: SiglipVisionModel, dtype: str) -> SiglipVisionModel:
    """Cast the model's weights to dtype, except LayerNorm's, which stay float32 (in place)."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    target = DTYPES[dtype]
    keep = {id(p) for m in model.modules() if isinstance(m, LayerNorm) for p in m.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in keep and p.is_floating_point() and p.dtype != target:
                p.data = p.data.to(target)
    return model


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
    """Apply --dtype and --quantize (in place) for a model that runs on device."""
    check_precision(dtype, quantize, device.type)
    return quantize_int8(model) if quantize == "int8" else to_dtype(model, dtype)
