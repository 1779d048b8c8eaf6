"""`siglip embed --engine ray` with 1 and 2 actors against the local engine, over the same folder, in one run.

Each run is a fresh `siglip embed FOLDER -o OUT/` process (the Ray runs start their own local cluster,
as a user's would), on the same base-size checkpoint (random weights saved with transformers) and the
same 640x480 JPEGs. Reported: wall seconds (start-up, the cluster and model loads included), images/s,
and the peak memory of the whole process tree (the driver, Ray's raylet/GCS/agents and the actors: the
sum of their RSS, sampled every 0.2 s). The runs alternate, and each figure is the faster of --repeat.

    pip install -e ".[ray]" -r benchmarks/requirements.txt
    python benchmarks/bench_ray.py [--images 200] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import make_checkpoint, make_photos  # noqa: E402


def tree_rss_mb(pid: int) -> float:
    """The summed RSS of pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 1e6


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and the peak summed RSS (MB) of the command's process tree."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak, stop = 0.0, threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_mb(proc.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    code = proc.wait()
    wall = time.perf_counter() - t
    stop.set()
    sampler.join()
    if code not in (0,):
        raise SystemExit(f"{' '.join(cmd)} exited {code}")
    return wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from siglip_cli.hardware import report

    info = report()
    results: dict[str, object] = {"machine": f"{info['cpu']}, {info['cores']} cores", "images": args.images,
                                  "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_checkpoint(tmp / "base")
        make_photos(tmp / "photos", args.images, (640, 480))
        base = [sys.executable, "-m", "siglip_cli", "embed", str(tmp / "photos"), "--model", str(tmp / "base"),
                "-o", f"{tmp / 'out'}/", "--overwrite", "--quiet"]
        runs = {"local engine": base,
                "--engine ray, 1 actor": [*base, "--engine", "ray", "--ray-workers", "1"],
                "--engine ray, 2 actors": [*base, "--engine", "ray", "--ray-workers", "2"]}
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeat):
            for name, cmd in runs.items():
                wall, mb = measure(cmd)
                print(name, round(wall, 1), "s", round(mb), "MB", file=sys.stderr, flush=True)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, mb)
        for name, (wall, mb) in best.items():
            results[name] = {"seconds": round(wall, 1), "images_per_s": round(args.images / wall, 2),
                             "peak_tree_rss_mb": round(mb), "vs local": round(best["local engine"][0] / wall, 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
