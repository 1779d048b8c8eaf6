"""Model forward throughput on one input batch: siglip against transformers and timm, and --quantize int8.

All models see the same (B, 3, 224, 224) batch in the same process, in interleaved rounds, so a
shared machine's drift hits every model alike; the figure is each model's median over the rounds,
and the ratios are what to compare. siglip and transformers share one checkpoint (random weights
saved with transformers, or --model DIR for a real one); timm's vit_base_patch16_siglip_224 is the
same architecture with its own random weights (timm uses exact GELU where the checkpoint has tanh).
int8 accuracy is the cosine similarity to float32 on the photos in sample_images/.

    pip install -e . -r benchmarks/requirements.txt
    python benchmarks/bench_forward.py [--batch 8] [--rounds 7] [--model DIR]
    python benchmarks/bench_forward.py --device cuda --dtype bfloat16 --batch 64     # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cosine_on_photos(checkpoint: Path, quantize: str = "int8") -> dict[str, float]:
    """Minimum cosine similarity of patch and pooled embeddings, int8 vs float32, over sample_images/."""
    from siglip_cli.embed import Embedder

    photos = sorted(str(p) for p in (REPO / "sample_images").iterdir() if p.suffix in (".jpg", ".png"))
    out = {}
    for pool in ("none", "map"):
        exact = Embedder.load(str(checkpoint), pool=pool, device="cpu").embed(photos)
        approx = Embedder.load(str(checkpoint), pool=pool, device="cpu", quantize=quantize).embed(photos)
        a = torch.from_numpy(exact).reshape(-1, exact.shape[-1])
        b = torch.from_numpy(approx).reshape(-1, approx.shape[-1])
        out[f"min cosine ({'patch' if pool == 'none' else 'pooled'})"] = round(
            torch.nn.functional.cosine_similarity(a, b).min().item(), 5)
    out["photos"] = len(photos)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--model", type=Path, help="a checkpoint directory (default: random base weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--no-timm", action="store_true")
    args = ap.parse_args()

    import transformers

    from siglip_cli.model import SiglipVisionModel
    from siglip_cli.precision import set_precision

    transformers.logging.set_verbosity_error()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.model
        if checkpoint is None:
            checkpoint = Path(tmp) / "base"
            torch.manual_seed(0)
            transformers.SiglipVisionModel(transformers.SiglipVisionConfig()).save_pretrained(checkpoint)
            from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
            SiglipImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(checkpoint)

        # What users run: the precision layer also swaps in the fast CPU tanh-GELU.
        ours = set_precision(SiglipVisionModel.from_pretrained(str(checkpoint)).to(device), args.dtype, "none",
                             device).eval()
        hf = transformers.SiglipVisionModel.from_pretrained(checkpoint, attn_implementation="sdpa",
                                                            dtype=dtype).to(device).eval()
        size = ours.config.image_size
        x = torch.randn(args.batch, 3, size, size, device=device, dtype=dtype)
        models = {"siglip": lambda: ours(x),
                  "transformers (sdpa)": lambda: hf(pixel_values=x).last_hidden_state}
        if not args.no_timm and size == 224 and ours.config.hidden_size == 768:
            import timm

            tm = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0)
            tm = tm.to(device=device, dtype=dtype).eval()
            models["timm"] = lambda: tm.forward_features(x)
        if device.type == "cpu" and args.dtype == "float32":
            q = set_precision(SiglipVisionModel.from_pretrained(str(checkpoint)), "float32", "int8", device).eval()
            models["siglip --quantize int8"] = lambda: q(x)

        times: dict[str, list[float]] = {k: [] for k in models}
        with torch.inference_mode():
            for f in models.values():  # warm-up: allocator, kernels, lazy init
                f()
            for _ in range(args.rounds):
                for name, f in models.items():
                    synchronize(device)
                    t0 = time.perf_counter()
                    f()
                    synchronize(device)
                    times[name].append(time.perf_counter() - t0)
        rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
                       + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
            "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": args.device,
            "dtype": args.dtype, "batch": args.batch, "rounds": args.rounds,
            "images_per_s (median)": {k: round(v, 2) for k, v in rate.items()},
            "ratio to siglip": {k: round(v / rate["siglip"], 3) for k, v in rate.items()},
        }
        if "siglip --quantize int8" in models:
            result["int8 vs float32"] = cosine_on_photos(checkpoint)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
