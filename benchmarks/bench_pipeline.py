"""End to end against model only, per precision: does decoding and writing keep the model fed?

For each precision (float32, bfloat16, int8) on the same base-size checkpoint (random weights saved with
transformers) and the same folder of JPEGs:

- model only: the Embedder's forward pass (`embed_pixels`, the pooled output included) on one batch of
  preprocessed pixels, --batch images per call, in this process; the median of --calls timed calls.
- end to end: `siglip embed FOLDER -o OUT/ --batch-size B` in a fresh process (decode on worker threads,
  resize, the model, atomic per-image writes). Its rate is taken from two runs, over the first --short
  images and over all of them: (N - n) / (t_N - t_n), so start-up and model load cancel out and the
  figure is the steady state a long run sees.

The share (end to end / model only) is what the pipeline keeps of the model's speed; on a machine
whose cores the model already fills, decoding competes with it for them.

    pip install -e . -r benchmarks/requirements.txt
    python benchmarks/bench_pipeline.py [--images 500] [--short 100] [--size 640x480] [--repeat 2]
    python benchmarks/bench_pipeline.py --device cuda --size 4032x3024 --images 2000 --short 200 \
        --precisions bfloat16 --batch 64          # on a GPU: GPU JPEG decode vs CPU decode

With --repeat, each figure is the best of its rounds (model only and end to end alike), so a moment of
load from elsewhere does not decide the share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import make_checkpoint, make_photos  # noqa: E402

OPTIONS = {"float32": [], "bfloat16": ["--dtype", "bfloat16"], "int8": ["--quantize", "int8"]}


DEVICE = "cpu"  # --device


def model_only(ckpt: Path, folder: Path, precision: str, batch: int, calls: int) -> float:
    """Images/s of the Embedder's model stage alone, on real preprocessed pixels."""
    import numpy as np

    from siglip_cli.embed import Embedder

    kwargs = {"quantize": "int8"} if precision == "int8" else {"dtype": precision}
    emb = Embedder.load(ckpt, pool="none", device=DEVICE, **kwargs)
    paths = sorted(folder.glob("*.jpg"))[:batch]
    pixels = np.stack([emb.decoder(p) for p in paths])
    for _ in range(2):
        emb.embed_pixels(pixels)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        emb.embed_pixels(pixels)  # returns host arrays: the GPU has finished
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def end_to_end(ckpt: Path, folder: Path, out: Path, precision: str, batch: int, extra: tuple = ()) -> float:
    """Wall seconds of one `siglip embed` run over the folder, in a fresh process."""
    cmd = [sys.executable, "-m", "siglip_cli", "embed", str(folder), "--model", str(ckpt), "-o", f"{out}/",
           "--batch-size", str(batch), "--device", DEVICE, "--quiet", "--overwrite", *OPTIONS[precision], *extra]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--short", type=int, default=100, help="images in the short run (start-up cancels out)")
    ap.add_argument("--size", default="640x480", help="JPEG size WxH (e.g. 4032x3024 for camera photos)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--precisions", default="float32,bfloat16,int8")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over the precisions; the best of each figure")
    ap.add_argument("--device", default="cpu", help="cuda: also end to end with every JPEG decoded on the CPU "
                                                    "(--exact-decode), against the default GPU decode")
    args = ap.parse_args()
    from siglip_cli.hardware import report

    global DEVICE
    DEVICE = args.device
    w, h = (int(v) for v in args.size.lower().split("x"))
    info = report()
    results: dict[str, object] = {"machine": f"{info['cpu']}, {info['cores']} cores, class {info['class']}",
                                  "date": time.strftime("%Y-%m-%d"),
                                  "images": args.images, "size": args.size, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_checkpoint(tmp / "base")
        make_photos(tmp / "all", args.images, (w, h))
        (tmp / "short").mkdir()
        for p in sorted((tmp / "all").glob("*.jpg"))[:args.short]:
            (tmp / "short" / p.name).hardlink_to(p)
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for precision in args.precisions.split(","):
                model = model_only(tmp / "base", tmp / "all", precision, args.batch, args.calls)
                t_short = end_to_end(tmp / "base", tmp / "short", tmp / "out-short", precision, args.batch)
                t_all = end_to_end(tmp / "base", tmp / "all", tmp / "out-all", precision, args.batch)
                pipeline = (args.images - args.short) / (t_all - t_short)
                print(precision, round(model, 2), round(pipeline, 2), file=sys.stderr, flush=True)
                if DEVICE == "cuda":  # the same run with every image decoded on the CPU threads
                    cpu = [end_to_end(tmp / "base", tmp / d, tmp / f"out-{d}", precision, args.batch,
                                      ("--exact-decode",)) for d in ("short", "all")]
                    results[f"{precision}, CPU decode (--exact-decode), end to end images/s"] = round(
                        (args.images - args.short) / (cpu[1] - cpu[0]), 2)
                b = best.setdefault(precision, {"model": 0.0, "pipeline": 0.0, "walls": None})
                b["model"] = max(b["model"], model)
                if pipeline > b["pipeline"]:
                    b["pipeline"], b["walls"] = pipeline, [round(t_short, 1), round(t_all, 1)]
        for precision, b in best.items():
            results[precision] = {"model only images/s": round(b["model"], 2),
                                  "end to end images/s": round(b["pipeline"], 2),
                                  "share": round(b["pipeline"] / b["model"], 3),
                                  f"wall s ({args.short} / {args.images} images)": b["walls"]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
