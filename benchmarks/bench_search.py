"""Search storage benchmark: one query (open + top_k 10) against stored SigLIP image embeddings.

Stacked files of random float16 768-d rows (10k, 100k, 1M by default; 1M rows are 1.5 GB on disk), as
`siglip embed ... -o FILE.safetensors` and `-o FILE.npy` write them, in a temp folder deleted afterwards.
Each query runs in a fresh process (imports excluded from the time); its peak memory is the process's
peak RSS at the end minus its peak RSS before opening the file (VmHWM: on Linux, ru_maxrss carries the
parent's peak over fork and exec). "warm": the file is in the page cache (the fastest of --repeat
runs); "cold": its pages were dropped from the page cache first (posix_fadvise DONTNEED, which needs no
root; a VM's host may still cache the disk).

Then a folder of per-image [768] float32 .npy files (`siglip embed photos/ -o emb/ --pool map`): the
first search (it builds DIR/.siglip-index), a second one (index reused), one after touching 10 files,
and, for comparison, reading every file with np.load and no index.

    pip install -e .
    python benchmarks/bench_search.py [--sizes 10000,100000,1000000] [--folder 10000] [--repeat 3]
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

import numpy as np

REPO = Path(__file__).resolve().parent.parent

QUERY = """
import json, resource, sys, time
import numpy as np
from siglip_cli.store import open_collection, top_k

def peak_kb():  # this process's own peak RSS: ru_maxrss keeps the parent's across fork and exec on Linux
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

q = np.random.default_rng(1).standard_normal(int(sys.argv[2]))
before = peak_kb()
t = time.perf_counter()
c = open_collection(sys.argv[1])
hits = top_k(q, [c], 10)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": (peak_kb() - before) / 1024, "rows": c.count, "top": hits[0].source}))
"""


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    model = fields.get("Model name", platform.processor() or platform.machine()).strip()
    flags = fields.get("Flags", "").split()
    simd = " ".join(f for f in ("avx2", "f16c", "avx512f", "avx512_fp16") if f in flags) or "none"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{model}, {os.cpu_count()} CPUs ({simd}), {mem:.0f} GiB RAM; Python {platform.python_version()}, "
            f"numpy {np.__version__}")


def query(path: Path, dim: int, cold: bool = False) -> dict:
    if cold:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    out = subprocess.run([sys.executable, "-c", QUERY, str(path), str(dim)], check=True, capture_output=True,
                         text=True, cwd=REPO).stdout
    return json.loads(out)


def write_stacked(path: Path, rows: int, dim: int) -> None:
    from siglip_cli.writers import StackedWriter

    rng = np.random.default_rng(0)
    writer = StackedWriter(path, rows, {"model": "bench", "pool": "map", "dtype": "float16"})
    for start in range(0, rows, 16384):
        block = rng.standard_normal((min(16384, rows - start), dim), dtype=np.float32).astype(np.float16)
        for i, row in enumerate(block, start):
            writer.add(row, f"/data/photos/{i // 1000:04d}/IMG_{i:07d}.jpg")
    writer.finish()


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def bench_stacked(tmp: Path, sizes: list[int], dim: int, repeat: int) -> list[str]:
    lines = ["| rows | format | file | write (setup) | query warm | query cold | peak RSS over baseline |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for rows in sizes:
        for suffix in (".safetensors", ".npy"):
            path = tmp / f"emb{rows}{suffix}"
            t = time.perf_counter()
            write_stacked(path, rows, dim)
            setup = time.perf_counter() - t
            query(path, dim)  # into the page cache
            warm = min((query(path, dim) for _ in range(repeat)), key=lambda r: r["seconds"])
            cold = query(path, dim, cold=True)
            assert warm["rows"] == rows
            lines.append(f"| {rows:,} | {suffix} | {path.stat().st_size / 1e6:,.0f} MB | {fmt(setup)} | "
                         f"{fmt(warm['seconds'])} | {fmt(cold['seconds'])} | {warm['rss_mb']:.0f} MB |")
            for p in (path, path.with_name(path.name + ".json")):
                p.unlink(missing_ok=True)
    return lines


def bench_folder(tmp: Path, n: int, dim: int, repeat: int) -> list[str]:
    from siglip_cli.store import MANIFEST
    from siglip_cli.writers import write_embeddings

    emb, rng = tmp / "emb", np.random.default_rng(0)
    for i in range(n):
        sub = emb / f"{i // 1000:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        write_embeddings(sub / f"IMG_{i:05d}.jpg.npy", rng.standard_normal(dim).astype(np.float32), {})
    (emb / MANIFEST).write_text(json.dumps({"metadata": {"model": "bench", "pool": "map"}, "roots": ["/data"]}))
    files = sorted(emb.rglob("*.npy"))
    first = query(emb, dim)
    second = min((query(emb, dim) for _ in range(repeat)), key=lambda r: r["seconds"])
    for f in files[::len(files) // 10][:10]:
        os.utime(f)
    touched = query(emb, dim)
    t = time.perf_counter()
    for f in files:
        np.load(f, allow_pickle=False)
    plain = time.perf_counter() - t
    return [f"| {n:,}-file folder | time | peak RSS over baseline |", "|---|---:|---:|",
            f"| first search (builds the index) | {fmt(first['seconds'])} | {first['rss_mb']:.0f} MB |",
            f"| second search (index reused) | {fmt(second['seconds'])} | {second['rss_mb']:.0f} MB |",
            f"| after touching 10 files | {fmt(touched['seconds'])} | {touched['rss_mb']:.0f} MB |",
            f"| np.load of every file, no index (for comparison) | {fmt(plain)} | |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="rows of the stacked files, comma-separated")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--folder", type=int, default=10000, help="per-image files in the folder run (0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs of each query; the fastest counts")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        print(f"Machine: {machine()}; {time.strftime('%Y-%m-%d')}\n")
        if sizes:
            print("\n".join(bench_stacked(Path(tmp), sizes, args.dim, args.repeat)) + "\n")
        if args.folder:
            print("\n".join(bench_folder(Path(tmp), args.folder, args.dim, args.repeat)))


if __name__ == "__main__":
    main()
