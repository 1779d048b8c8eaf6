"""How long the help screens take, and which heavy modules they import (none should be imported).

    python benchmarks/bench_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "torchvision", "numpy", "safetensors", "huggingface_hub", "PIL", "pydantic")
PROBE = ("import runpy, sys; sys.argv = ['siglip', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('siglip_cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    result = {}
    for command in (["--help"], ["embed", "--help"], ["download-weights", "--help"], ["--version"]):
        walls = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "siglip_cli", *command], check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
        stderr = subprocess.run([sys.executable, "-c", PROBE, *command], check=True, capture_output=True,
                                text=True).stderr
        heavy = stderr[stderr.rindex("HEAVY:") + len("HEAVY:"):].strip()
        result["siglip " + " ".join(command)] = {"median_s": round(statistics.median(walls), 3),
                                                 "max_s": round(max(walls), 3),
                                                 "heavy_imports": heavy or "none"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
