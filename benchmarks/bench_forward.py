"""Model forward throughput per precision: siglip against transformers and timm, each against its limit.

One process measures, in interleaved rounds (so a shared machine's drift hits everything alike), every
model at every precision on the same (B, 3, 224, 224) batch, the pooled embedding included (siglip's
attention-pooling head, transformers' pooler, timm's attention pool), and each precision's matmul peak
on two 2048x2048 matrices (torch.matmul; int8: torch._int_mm, int8 operands and int32 sums, what
VNNI/AMX do). The peak is measured two ways: sustained, a loop of matmuls as long as siglip's forward
pass at that precision and timed like it; burst, the best of three single calls, which a moment of
higher clock or a quiet machine flatters. Each figure is the median over the rounds. A precision's limit
is its peak over the model's FLOPs per image (inspect-shapes' count: 2 x multiply-adds of the
matmul-like stages); int8's is a bound that dynamic quantization (float32 attention, LayerNorm, GELU,
and the activations quantized on every call) does not approach.

siglip and transformers share one checkpoint (random weights saved with transformers, or --model DIR);
timm's vit_base_patch16_siglip_224 is the same architecture with its own random weights and exact GELU
(the checkpoint's is tanh). Accuracy: the minimum cosine similarity of siglip's fast paths to its
float32 output, per patch and pooled, on the photos in sample_images/ (and --photos DIR).

The CPU's features (siglip_cli.hardware) head the output. On a shared machine a call during which other
processes took more than --max-others of the CPUs (from /proc/stat) is measured again; the output says
how often, how busy the kept calls' machine was, and how much CPU time a hypervisor stole (a virtual
machine's neighbours: it slows everything alike).

    pip install -e . -r benchmarks/requirements.txt
    python benchmarks/bench_forward.py [--batch 8] [--rounds 7] [--model DIR] [--precisions float32,bfloat16,int8]
    python benchmarks/bench_forward.py --device cuda --precisions float32,bfloat16 --batch 64     # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PEAK_SIZE = 2048  # square matmul for the peak: large enough to be compute-bound, small enough for a round


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_seconds() -> tuple[float, float, float]:
    """CPU seconds so far: every process's in this (virtual) machine, this process's, and stolen by the host.

    From /proc/stat (NaN elsewhere). Steal is time this machine's CPUs were ready to run and the
    hypervisor ran another guest: it slows every model alike and cannot be waited out, so it is only
    reported; another process here is (see quiet_time).
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy, steal = (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / tick, fields[7] / tick
    except (OSError, ValueError, IndexError):
        busy = steal = float("nan")
    r = resource.getrusage(resource.RUSAGE_SELF)
    return busy, r.ru_utime + r.ru_stime, steal


def matmul_for(precision: str, device: torch.device):
    """One PEAK_SIZE square matmul at this precision (int8: torch._int_mm, int8 in, int32 out), or None."""
    if precision == "int8":
        a, b = (torch.randint(-128, 128, (PEAK_SIZE, PEAK_SIZE), dtype=torch.int8, device=device) for _ in range(2))
        try:
            torch._int_mm(a, b)
        except (RuntimeError, AttributeError):  # no int8 matmul kernel for this device in this torch
            return None
        return lambda: torch._int_mm(a, b)
    a, b = (torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=DTYPES[precision]) for _ in range(2))
    return lambda: a @ b


def timed(f, device: torch.device, calls: int = 1) -> tuple[float, float, float]:
    """(seconds of the fastest of `calls` calls of f, and meanwhile the share of the CPUs that other processes
    took and that the host stole)."""
    best = float("inf")
    before, t0 = cpu_seconds(), time.perf_counter()
    for _ in range(calls):
        synchronize(device)
        t1 = time.perf_counter()
        f()
        synchronize(device)
        best = min(best, time.perf_counter() - t1)
    after, wall = cpu_seconds(), time.perf_counter() - t0
    capacity = wall * (os.cpu_count() or 1)
    others = ((after[0] - before[0]) - (after[1] - before[1])) / capacity
    return best, max(0.0, others), (after[2] - before[2]) / capacity


def quiet_time(f, device: torch.device, calls: int, max_others: float, tries: int) -> tuple[float, float, float, int]:
    """timed(f), measured again (up to `tries` times) while other processes took more than max_others of the CPUs.

    On a shared machine another process's burst slows one model's call and not the next's; a call it
    overlapped is measured again. Returns (seconds, others' share, steal share, calls discarded).
    """
    for discarded in range(tries):
        seconds, others, steal = timed(f, device, calls)
        if others <= max_others or device.type != "cpu":
            break
    return seconds, others, steal, discarded


def photos(extra: Path | None) -> list[str]:
    folders = [REPO / "sample_images"] + ([extra] if extra else [])
    return sorted(str(p) for d in folders for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def cosine_on_photos(checkpoint: Path, paths: list[str], fast: list[tuple[str, str]]) -> dict[str, dict]:
    """Minimum cosine similarity of patch and pooled embeddings, each (dtype, quantize) vs float32."""
    from siglip_cli.embed import Embedder

    out: dict[str, dict] = {}
    for pool, what in (("none", "patch"), ("map", "pooled")):
        exact = torch.from_numpy(Embedder.load(str(checkpoint), pool=pool, device="cpu").embed(paths))
        for dtype, quantize in fast:
            approx = Embedder.load(str(checkpoint), pool=pool, device="cpu", dtype=dtype, quantize=quantize)
            b = torch.from_numpy(approx.embed(paths))
            cos = torch.nn.functional.cosine_similarity(exact.reshape(-1, exact.shape[-1]), b.reshape(-1, b.shape[-1]))
            out.setdefault(quantize if quantize != "none" else dtype, {})[f"min cosine ({what})"] = round(
                cos.min().item(), 5)
    return out


def build(args, checkpoint: Path, device: torch.device, size: int) -> dict[str, tuple[str, object]]:
    """name -> (precision, a function running one forward pass on that precision's input batch)."""
    import transformers

    from siglip_cli.model import SiglipVisionModel
    from siglip_cli.precision import set_precision

    models: dict[str, tuple[str, object]] = {}
    inputs = {}
    for precision in args.precisions:
        dtype, quantize = ("float32", "int8") if precision == "int8" else (precision, "none")
        x = inputs.setdefault(dtype, torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
                              .to(device=device, dtype=DTYPES[dtype]))
        # What users run: set_precision also swaps in the fast GELU and, for bf16 on a CPU, the fused layers.
        ours = set_precision(SiglipVisionModel.from_pretrained(str(checkpoint)).to(device), dtype, quantize,
                             device).eval()
        pool = "map" if ours.has_head else "mean"
        models[f"siglip {precision}"] = (precision, lambda m=ours, x=x, pool=pool: m.embed(x, pool))
        if precision == "int8":
            continue
        if not args.no_transformers:
            hf = transformers.SiglipVisionModel.from_pretrained(checkpoint, attn_implementation="sdpa",
                                                                dtype=DTYPES[dtype]).to(device).eval()
            models[f"transformers {precision}"] = (precision, lambda m=hf, x=x: m(pixel_values=x).pooler_output)
        if not args.no_timm and size == 224 and ours.config.hidden_size == 768:
            import timm

            tm = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0)
            tm = tm.to(device=device, dtype=DTYPES[dtype]).eval()
            models[f"timm {precision}"] = (precision, lambda m=tm, x=x: m.forward_head(m.forward_features(x)))
    return models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--model", type=Path, help="a checkpoint directory (default: random base weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default=None, help="comma-separated: float32, bfloat16, float16, int8 "
                                                        "(default: float32,bfloat16, and int8 on a CPU)")
    ap.add_argument("--photos", type=Path, help="a folder of more photos for the accuracy figures")
    ap.add_argument("--max-others", type=float, default=0.05,
                    help="measure a call again when other processes took more than this share of the CPUs (1: never)")
    ap.add_argument("--no-timm", action="store_true")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--no-accuracy", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    args.precisions = (args.precisions or ("float32,bfloat16,int8" if device.type == "cpu" else "float32,bfloat16")
                       ).split(",")

    import transformers

    from siglip_cli import hardware
    from siglip_cli.config import SiglipVisionConfig
    from siglip_cli.shapes import trace_shapes

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.model
        if checkpoint is None:
            checkpoint = Path(tmp) / "base"
            torch.manual_seed(0)
            transformers.SiglipVisionModel(transformers.SiglipVisionConfig()).save_pretrained(checkpoint)
            from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
            SiglipImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(checkpoint)
        config = SiglipVisionConfig.from_hf_dict(json.loads((checkpoint / "config.json").read_text()))
        size = config.image_size
        flops = trace_shapes(config, batch_size=1).total_flops  # per image, the pooling head included

        models = build(args, checkpoint, device, size)
        times: dict[str, list[float]] = {}
        peaks, reps = {}, {}
        with torch.inference_mode():
            for _, f in models.values():  # warm-up: allocator, weight packing, lazy init
                f()
            for name in sorted({p for p, _ in models.values()}, key=[*DTYPES, "int8"].index):
                # The peak is timed like the models: one call per round, as long as siglip's forward pass at that
                # precision (a loop of matmuls), so whatever slows a long call on this machine slows both.
                mm = matmul_for(name, device)
                if mm is None:
                    continue
                one = timed(mm, device, 3)[0]
                forward = timed(models[f"siglip {name}"][1], device)[0] if f"siglip {name}" in models else one
                reps[name] = max(1, round(forward / one))
                peaks[name] = lambda mm=mm, n=reps[name]: [mm() for _ in range(n)]
                peaks[f"{name} burst"] = mm  # one matmul, the best of 3 in each round
            times = {k: [] for k in [*peaks, *models]}
            others, steal, discarded = [], [], 0
            for _ in range(args.rounds):
                for name, f in [*peaks.items(), *((k, f) for k, (_, f) in models.items())]:
                    calls = 3 if name.endswith(" burst") else 1
                    seconds, busy, stolen, dropped = quiet_time(f, device, calls, args.max_others, 20)
                    times[name].append(seconds)
                    others.append(busy)
                    steal.append(stolen)
                    discarded += dropped

        peak = {k: reps.get(k, 1) * 2 * PEAK_SIZE ** 3 / statistics.median(times[k]) / 1e9 for k in peaks}
        limit = {k: peak[k] * 1e9 / flops for k in peak}
        rate = {k: args.batch / statistics.median(times[k]) for k in models}
        rows = {}
        for name, (precision, _) in models.items():
            base = rate.get(f"siglip {precision}")
            rows[name] = {"images_per_s": round(rate[name], 2),
                          "of_limit": round(rate[name] / limit[precision], 3) if precision in limit else None,
                          "of_burst_limit": round(rate[name] / limit[f"{precision} burst"], 3)
                          if precision in limit else None,
                          "vs_siglip_same_precision": round(rate[name] / base, 3) if base else None,
                          "vs_siglip_float32": round(rate[name] / rate["siglip float32"], 3)
                          if "siglip float32" in rate else None}
        info = hardware.report()
        result = {
            "machine": f"{info['cpu']} ({info['arch']}), {info['cores']} cores, torch threads "
                       f"{torch.get_num_threads()}" + (f", {torch.cuda.get_device_name()}" if device.type == "cuda"
                                                       else ""),
            "cpu features": [k for k, v in info["features"].items() if v], "hardware class": info["class"],
            "torch cpu capability": info["torch_cpu_capability"],
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": args.device,
            "batch": args.batch, "rounds": args.rounds,
            "share of the CPUs other processes took (median, max over the kept calls)":
                [round(statistics.median(others), 3), round(max(others), 3)] if device.type == "cpu" else None,
            "share of the CPUs the host stole (median, max)":
                [round(statistics.median(steal), 3), round(max(steal), 3)] if device.type == "cpu" else None,
            "calls measured again (another process took more than --max-others)": discarded,
            "GFLOP per image": round(flops / 1e9, 2),
            "matmul peak GFLOP/s (median; sustained: timed like the models, burst: the best of 3 single calls)":
                {k: round(v) for k, v in peak.items()},
            "limit images/s (peak / FLOPs)": {k: round(v, 2) for k, v in limit.items()},
            "models (median)": rows,
        }
        if not args.no_accuracy and device.type == "cpu":
            fast = [("float32", "int8") if p == "int8" else (p, "none") for p in args.precisions if p != "float32"]
            paths = photos(args.photos)
            result["accuracy vs float32"] = {"photos": len(paths), **cosine_on_photos(checkpoint, paths, fast)}
    print(json.dumps(result, indent=2))
    print(markdown(result), file=sys.stderr)


def markdown(result: dict) -> str:
    """The models as a README table: images/s, share of the precision's limit, ratios, accuracy."""
    acc = result.get("accuracy vs float32", {})
    lines = ["| model | images/s | of its limit (sustained / burst peak) | vs siglip, same precision | "
             "min cosine patch / pooled |", "|---|---:|---:|---:|---|"]
    for name, r in result["models (median)"].items():
        precision = name.split()[-1]
        a = acc.get(precision) if name.startswith("siglip") else None
        lines.append(f"| {name} | {r['images_per_s']:.2f} | "
                     + (f"{r['of_limit']:.0%} / {r['of_burst_limit']:.0%}" if r["of_limit"] is not None else "") + " | "
                     + (f"{r['vs_siglip_same_precision']:.2f}" if r["vs_siglip_same_precision"] else "") + " | "
                     + (f"{a['min cosine (patch)']:.4f} / {a['min cosine (pooled)']:.4f}" if a else "") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
