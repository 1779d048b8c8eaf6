"""Batch embedding benchmark: `siglip embed FOLDER -o OUT/` against a plain transformers script.

Both sides load the same base-size checkpoint (random weights, saved with transformers: the same
compute as google/siglip-base-patch16-224) and embed the same folder of camera-size JPEGs; wall time
includes startup and model load, and peak memory is the process's max RSS. The runs alternate
(transformers, siglip, transformers, ...) and each figure is the faster of --repeat runs, so drift on
a shared machine hits both sides. Then: a 2,000-image folder run (time and peak memory), and 200 vs
2,000 small images streamed into one stacked file (peak memory).

    pip install -e . -r benchmarks/requirements.txt
    python benchmarks/bench_batch.py [--images 48] [--repeat 2] [--folder 2000] [--small 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TRANSFORMERS_LOOP = """
import sys, numpy as np, torch
from pathlib import Path
from PIL import Image
from transformers import AutoImageProcessor, SiglipVisionModel
ckpt, folder, out = sys.argv[1:4]
processor = AutoImageProcessor.from_pretrained(ckpt)
model = SiglipVisionModel.from_pretrained(ckpt).eval()
paths = sorted(Path(folder).glob("*.jpg"))
Path(out).mkdir(parents=True, exist_ok=True)
with torch.inference_mode():
    for i in range(0, len(paths), 8):
        batch = paths[i:i + 8]
        pixels = processor([Image.open(p).convert("RGB") for p in batch], return_tensors="pt")["pixel_values"]
        hidden = model(pixel_values=pixels).last_hidden_state.numpy()
        for p, h in zip(batch, hidden):
            np.save(Path(out) / (p.name + ".npy"), h)
"""


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS in MB, measured by a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
               "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, capture_output=True, text=True).stdout
    wall, mb = out.split()
    return float(wall), float(mb)


def make_checkpoint(path: Path, layers: int = 12) -> None:
    import torch
    import transformers
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(num_hidden_layers=layers)).save_pretrained(path)
    SiglipImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)


def make_photos(folder: Path, n: int, size: tuple[int, int]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((REPO / "sample_images").glob("*.jpg"))
    for i in range(n):
        Image.open(sources[i % len(sources)]).convert("RGB").resize(size).save(folder / f"img{i:05d}.jpg",
                                                                               quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48, help="camera-size JPEGs (4032x3024)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side; the fastest counts")
    ap.add_argument("--folder", type=int, default=2000, help="640x480 JPEGs for the long folder run (0: skip)")
    ap.add_argument("--small", type=int, default=2000, help="small images for the stacked memory check (0: skip)")
    args = ap.parse_args()
    siglip = [sys.executable, "-m", "siglip_cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_checkpoint(tmp / "base")
        make_photos(tmp / "photos", args.images, (4032, 3024))
        results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                   "date": time.strftime("%Y-%m-%d"), "images": args.images}
        loop = tmp / "loop.py"
        loop.write_text(TRANSFORMERS_LOOP)
        embed = [*siglip, "embed", str(tmp / "photos"), "--model", str(tmp / "base"), "-o", f"{tmp / 'out'}/",
                 "--quiet", "--overwrite"]
        runs = {
            "transformers script": [sys.executable, str(loop), str(tmp / "base"), str(tmp / "photos"),
                                    str(tmp / "out")],
            "siglip embed": embed,
            "siglip embed --exact-decode": [*embed, "--exact-decode"],
            "siglip embed --quantize int8": [*embed, "--quantize", "int8"],
        }
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for name, cmd in runs.items():
                wall, mb = peak_rss_of(cmd)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, mb)
        for name, (wall, mb) in best.items():
            results[name] = {"seconds": round(wall, 1), "img_per_s": round(args.images / wall, 2),
                             "peak_rss_mb": round(mb), "speedup": round(best["transformers script"][0] / wall, 2)}

        if args.folder:
            make_photos(tmp / "folder", args.folder, (640, 480))
            wall, mb = peak_rss_of([*siglip, "embed", str(tmp / "folder"), "--model", str(tmp / "base"), "-o",
                                    f"{tmp / 'folder-out'}/", "--quiet"])
            results[f"siglip embed, {args.folder} images (640x480)"] = {
                "seconds": round(wall, 1), "img_per_s": round(args.folder / wall, 2), "peak_rss_mb": round(mb)}

        # Memory does not grow with the number of images: 200 vs 2,000 into one stacked [B, 196, 768] file.
        if args.small:
            make_checkpoint(tmp / "narrow", layers=1)
            make_photos(tmp / "small", args.small, (64, 48))
            listing = sorted(str(p) for p in (tmp / "small").iterdir())
            mem = {}
            for n in (args.small // 10, args.small):
                (tmp / f"list{n}.txt").write_text("\n".join(listing[:n]) + "\n")
                t, mb = peak_rss_of([*siglip, "embed", "--files-from", str(tmp / f"list{n}.txt"), "--model",
                                     str(tmp / "narrow"), "-o", str(tmp / f"stacked{n}.npy"), "--quiet"])
                mem[n] = {"seconds": round(t, 1), "peak_rss_mb": round(mb, 1),
                          "output_mb": round((tmp / f"stacked{n}.npy").stat().st_size / 1e6)}
            results["stacked memory"] = mem
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
