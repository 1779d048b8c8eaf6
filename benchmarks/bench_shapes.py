"""How long `siglip inspect-shapes` takes, per preset: the whole command, and the trace alone.

    python benchmarks/bench_shapes.py
"""

from __future__ import annotations

import subprocess
import sys
import time


def main() -> None:
    for preset in ("base", "large", "so400m", "giant"):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "siglip_cli", "inspect-shapes", "--preset", preset, "--json"],
                       check=True, capture_output=True)
        command = time.perf_counter() - t0
        code = ("import time, torch; t0 = time.perf_counter(); from siglip_cli.config import PRESETS; "
                "from siglip_cli.shapes import trace_shapes; trace_shapes(PRESETS['base']); "
                f"t1 = time.perf_counter(); trace_shapes(PRESETS['{preset}']); t2 = time.perf_counter(); "
                "print(t1 - t0, t2 - t1)")
        first, warm = map(float, subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                                text=True).stdout.split())
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        torch_import = time.perf_counter() - t0
        print(f"{preset:7s} command {command:.2f} s   (python + import torch {torch_import:.2f} s, first trace with "
              f"meta-kernel set-up {first:.2f} s, trace {warm:.2f} s)")


if __name__ == "__main__":
    main()
