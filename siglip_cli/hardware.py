"""What this machine offers the model's arithmetic, and which precision is fastest on it. Torch-free.

The CPU's instruction sets come from /proc/cpuinfo (Linux; `sysctl` on macOS); torch is asked (its
kernels' CPU capability, a CUDA GPU) only when the caller has imported it already or asks for it, so
reading the flags costs no torch import. The advice is per hardware class:

    gpu          a CUDA GPU: bfloat16 (float16 before compute capability 8.0)
    amx          AMX tiles with bf16/int8 (Intel Xeon 4th gen on): bfloat16
    avx512-bf16  AVX-512 with native bf16 dot products and VNNI (AMD Zen 4 on, Intel Cooper Lake): int8,
                 then bfloat16 (measured; bfloat16 is the fast one that stays close to float32)
    avx512-vnni  AVX-512 with int8 dot products, no bf16 (Intel Cascade/Ice Lake): int8
    avx2         AVX2 (or AVX-512) without either: int8; bfloat16 no faster than float32 (AVX-512: oneDNN
                 converts it) or slower (AVX2: no bf16 kernels)
    arm-bf16     Arm with BF16 and I8MM (Graviton 3 on, Apple M2 on): not measured here
    other        anything else: float32
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

# The flags that decide the precision, by their /proc/cpuinfo names.
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                "amx_tile", "amx_bf16", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "sve", "bf16", "i8mm")
# macOS names the same features in sysctl hw.optional.*.
_MAC = {"hw.optional.avx2_0": "avx2", "hw.optional.avx512f": "avx512f", "hw.optional.avx512bw": "avx512bw",
        "hw.optional.avx512vnni": "avx512_vnni", "hw.optional.arm.FEAT_BF16": "bf16",
        "hw.optional.arm.FEAT_I8MM": "i8mm", "hw.optional.arm.FEAT_DotProd": "asimddp",
        "hw.optional.neon": "asimd"}

# Per class: the precisions fastest first, the fastest that stays within ~1e-4 of float32 (cosine), why,
# and what it rests on. Only avx512-bf16 is measured (README, Speed); the others follow from which
# kernels oneDNN has for them.
ADVICE = {
    "gpu": (("bfloat16", "float16", "float32"), "bfloat16",
            "tensor cores run bfloat16/float16; float16 only before compute capability 8.0 (no bf16 tensor cores)",
            "not measured here"),
    "amx": (("bfloat16", "int8", "float32"), "bfloat16",
            "AMX tiles multiply bf16 and int8 matrices at many times the float32 rate; int8's dynamic quantization "
            "keeps attention, LayerNorm and GELU in float32, which AMX does not speed up",
            "not measured here"),
    "avx512-bf16": (("int8", "bfloat16", "float32"), "bfloat16",
                    "int8 dot products (VNNI) do twice the multiply-adds of bf16's (vdpbf16ps), which run at ~2.2x "
                    "float32's matmul rate; bfloat16 is ~10x closer to float32 (cosine 0.9999 vs 0.999)",
                    "AMD EPYC (AVX-512 BF16/VNNI), 2 cores, base model, batch 8: int8 12.1, bfloat16 9.6, "
                    "float32 4.7 images/s"),
    "avx512-vnni": (("int8", "float32", "bfloat16"), "float32",
                    "int8 dot products (VNNI); no native bf16: oneDNN converts bfloat16 to float32, no faster",
                    "not measured here"),
    "avx2": (("int8", "float32", "bfloat16"), "float32",
             "int8 runs on 16-bit multiply-adds, ~1.6x float32; no native bf16: bfloat16 is no faster than float32",
             "AMD EPYC (AVX2), 2 cores, base model, batch 8: int8 5.4, float32 3.4 images/s (bfloat16 not measured)"),
    "arm-bf16": (("bfloat16", "float32", "int8"), "bfloat16",
                 "BF16 and I8MM matrix instructions; the int8 path here is x86's (oneDNN/fbgemm)",
                 "not measured here"),
    "other": (("float32",), "float32", "no reduced-precision matrix instructions known to be fast here",
              "not measured here"),
}
# What each precision is called on the command line.
OPTION = {"float32": "--dtype float32 (the default)", "bfloat16": "--dtype bfloat16", "float16": "--dtype float16",
          "int8": "--quantize int8"}


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, the set of feature flags) from /proc/cpuinfo's text (x86 `flags`, Arm `Features`)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    return model, flags


def _read_cpu() -> tuple[str, set[str]]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model, flags = parse_cpuinfo(f.read())
        if flags:
            return model, flags
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return "", set()
        model, flags = "", set()
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key == "machdep.cpu.brand_string":
                model = value.strip()
            elif key in _MAC and value.strip() == "1":
                flags.add(_MAC[key])
        return model, flags
    return "", set()


def classify(flags: set[str], machine: str = "", gpu: dict | None = None) -> str:
    """The hardware class (a key of ADVICE) for these CPU flags, or "gpu" when a CUDA GPU is in use."""
    if gpu:
        return "gpu"
    if {"amx_tile", "amx_bf16"} <= flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512-vnni" if "avx512f" in flags else "avx2"
    if "avx2" in flags or "avx512f" in flags:
        return "avx2"
    if machine.lower() in ("aarch64", "arm64") and {"bf16", "i8mm"} <= flags:
        return "arm-bf16"
    return "other"


def _torch_facts(probe: bool) -> tuple[str | None, dict | None]:
    """torch's CPU kernel capability and the CUDA GPU, if torch is imported already (or probe asks)."""
    if "torch" not in sys.modules and not probe:
        return None, None
    import torch  # lazily: this module is torch-free at import

    capability = None
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        pass
    gpu = None
    try:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            gpu = {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}",
                   "bf16": major >= 8}
    except (AssertionError, RuntimeError):  # a CUDA build without a usable driver
        gpu = None
    return capability, gpu


def _gpu_jpeg() -> str | None:
    """torchvision's version where it can decode JPEGs on the GPU (embed does so on CUDA), else None."""
    from .gpu_decode import torchvision_decode_jpeg  # torch is imported already: a GPU was found with it

    if torchvision_decode_jpeg() is None:
        return None
    import torchvision

    return torchvision.__version__


def advise(klass: str, gpu: dict | None = None) -> dict:
    """For a hardware class: the precisions fastest first and the option for the first, the fastest one within
    ~1e-4 of float32 (closest_fast), why, and what it rests on."""
    order, close, why, basis = ADVICE[klass]
    if klass == "gpu" and gpu is not None and not gpu.get("bf16", True):
        order, close = ("float16", "float32", "bfloat16"), "float16"
    return {"best": order[0], "option": OPTION[order[0]], "order": list(order), "closest_fast": close,
            "closest_fast_option": OPTION[close], "why": why, "measured": basis}


def report(probe_torch: bool = False, cpuinfo: str | None = None) -> dict:
    """What this machine offers (CPU model, cores, feature flags, torch's capability, GPU) and the advice.

    probe_torch imports torch to ask it (`siglip doctor` does); otherwise torch is asked only when it is
    already imported. cpuinfo: a /proc/cpuinfo text to read instead of this machine's (tests).
    """
    model, flags = parse_cpuinfo(cpuinfo) if cpuinfo is not None else _read_cpu()
    machine = platform.machine()
    capability, gpu = _torch_facts(probe_torch)
    jpeg = _gpu_jpeg() if gpu else None
    known = X86_FEATURES if machine.lower() in ("x86_64", "amd64", "i686") or flags & set(X86_FEATURES) \
        else ARM_FEATURES
    klass = classify(flags, machine, gpu)
    return {
        "cpu": model or platform.processor() or machine,
        "arch": machine,
        "cores": os.cpu_count(),
        "features": {name: name in flags for name in known},
        "torch_cpu_capability": capability,
        "gpu": gpu,
        "gpu_jpeg_decode": jpeg,
        "class": klass,
        "cpu_class": classify(flags, machine),
        "advice": advise(klass, gpu),
    }


def render(info: dict) -> list[str]:
    """report()'s dict as lines of text for the terminal."""
    have = [name for name, present in info["features"].items() if present]
    lacks = [name for name, present in info["features"].items() if not present]
    advice = info["advice"]
    lines = [f"cpu:       {info['cpu']} ({info['arch']}, {info['cores']} cores)",
             f"features:  {' '.join(have) or 'none of those that matter'}"]
    if lacks:
        lines.append(f"lacks:     {' '.join(lacks)}")
    if info["torch_cpu_capability"]:
        lines.append(f"torch:     its CPU kernels use {info['torch_cpu_capability']}")
    if info["gpu"]:
        g = info["gpu"]
        lines.append(f"gpu:       {g['name']} (compute capability {g['compute_capability']})")
        lines.append("jpeg:      " + (f"decoded on the GPU (torchvision {info['gpu_jpeg_decode']}, nvJPEG)"
                                      if info.get("gpu_jpeg_decode") else
                                      'decoded on the CPU: pip install "siglip-cli[gpu]" to decode on the GPU'))
    if info["class"] != info["cpu_class"]:
        lines.append(f"class:     {info['class']} (the CPU alone: {info['cpu_class']})")
    else:
        lines.append(f"class:     {info['class']}")
    lines.append(f"fastest:   {advice['option']} (then {', '.join(advice['order'][1:]) or 'nothing else'})")
    if advice["closest_fast"] != advice["best"]:
        lines.append(f"closer:    {advice['closest_fast_option']}: the fastest that stays within ~1e-4 of float32")
    lines += [f"why:       {advice['why']}",
              f"measured:  {advice['measured']}"]
    return lines
