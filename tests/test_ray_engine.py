"""`siglip embed --engine ray`: the same files, resume and failures as a local run, on a local Ray cluster.

The Ray tests run where the `ray` extra is installed (CI installs it); the refusals run everywhere. One
cluster (2 CPUs, usage statistics off) serves the library-level tests; the CLI test starts its own, as a
user's run does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PHOTOS, TINY, run_cli

from siglip_cli.batch import embed_to, run_plan
from siglip_cli.embed import Embedder
from siglip_cli.plan import plan_items
from siglip_cli.ray_engine import RayEngine, RaySettings, WorkerSpec, check_engine, worker_error
from siglip_cli.writers import output_path_for, read_embeddings

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def has_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not has_ray(), reason="the ray extra is not installed")


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The sample photos in a tree, and one file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    for i, p in enumerate(PHOTOS):
        dest = folder / ("sub" if i % 2 else "") / p.name
        dest.parent.mkdir(exist_ok=True)
        shutil.copy(p, dest)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def ray_run(ckpt: Path, photos: Path, out: Path, *, workers: int = 1, batch_size: int = 2, overwrite=False,
            report: Path | None = None, rows_per_call: int = 2, pool: str = "map"):
    load = dict(pool=pool, device="cpu")
    embedder = Embedder.load(ckpt, **load)  # the driver's: its metadata and the manifest
    plan = plan_items([photos], f"{out}/", report=report)
    spec = WorkerSpec(ckpt, False, load, str(out), "float32", overwrite, batch_size,
                      1, threads=1)
    engine = RayEngine(RaySettings(workers=workers, rows_per_call=rows_per_call), spec,
                       lambda item: output_path_for(plan.output, item.rel, plan.fmt))
    return run_plan(embedder, plan, overwrite=overwrite, batch_size=batch_size, engine=engine)


@needs_ray
def test_ray_run_writes_the_files_of_a_local_run(cluster, tiny_ckpt, photos, tmp_path):
    local = embed_to(Embedder.load(tiny_ckpt, pool="map", device="cpu"), [photos], f"{tmp_path / 'local'}/",
                     batch_size=3, report=tmp_path / "local.jsonl")
    summary = ray_run(tiny_ckpt, photos, tmp_path / "ray", workers=2, report=tmp_path / "ray.jsonl")
    assert (summary.embedded, summary.skipped, summary.failed) == (len(PHOTOS), 0, 1)
    assert (local.embedded, local.failed) == (summary.embedded, summary.failed)
    assert summary.shape == [TINY["hidden_size"]]
    names = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.npy"))
    assert names == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.npy"))
    assert len(names) == len(PHOTOS)
    for name in names:
        a, meta_a = read_embeddings(tmp_path / "local" / name)
        b, meta_b = read_embeddings(tmp_path / "ray" / name)
        assert a.shape == b.shape == (TINY["hidden_size"],)
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert meta_a == meta_b
    # The same report, line for line, in input order; the broken file is that file's failure.
    local_lines = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    ray_lines = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if k != "output"} for r in local_lines]
    assert strip == [{k: v for k, v in r.items() if k != "output"} for r in ray_lines]
    broken = [r for r in ray_lines if r["status"] == "failed"]
    assert [r["path"] for r in broken] == [str(photos / "broken.jpg")]
    assert "cannot" in broken[0]["reason"] or "not an image" in broken[0]["reason"]
    assert json.loads((tmp_path / "ray" / ".siglip.json").read_text())["metadata"]["model_fingerprint"]


@needs_ray
def test_ray_rerun_recomputes_only_the_deleted_outputs(cluster, tiny_ckpt, photos, tmp_path):
    out = tmp_path / "out"
    assert ray_run(tiny_ckpt, photos, out).embedded == len(PHOTOS)
    files = sorted(out.rglob("*.npy"))
    gone, kept = files[:2], files[2:]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    for p in gone:
        p.unlink()
    summary = ray_run(tiny_ckpt, photos, out, report=tmp_path / "again.jsonl")
    assert (summary.embedded, summary.skipped, summary.failed) == (2, len(PHOTOS) - 2, 1)
    assert all(p.exists() for p in gone)
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps  # not rewritten
    lines = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert sorted(r["output"] for r in lines if r["status"] == "embedded") == sorted(map(str, gone))


@needs_ray
def test_ray_worker_that_cannot_start_is_one_line(cluster, tiny_ckpt, photos, tmp_path):
    from siglip_cli.errors import OutputError

    load = dict(pool="map", device="cpu", image_size=31)  # not a multiple of the patch: the actor's load fails
    embedder = Embedder.load(tiny_ckpt, pool="map", device="cpu")
    plan = plan_items([photos], f"{tmp_path / 'out'}/")
    spec = WorkerSpec(tiny_ckpt, False, load, str(tmp_path / "out"), "float32", False, 2, 1, threads=1)
    engine = RayEngine(RaySettings(), spec, lambda item: output_path_for(plan.output, item.rel, plan.fmt))
    with pytest.raises(OutputError) as e:
        run_plan(embedder, plan, batch_size=2, engine=engine)
    assert "the Ray job failed" in str(e.value) and "31" in str(e.value)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "out").rglob("*.npy"))


@needs_ray
def test_cli_engine_ray_end_to_end(tiny_ckpt, photos, tmp_path):
    out = tmp_path / "out"
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    proc = run_cli("embed", str(photos), "--model", str(tiny_ckpt), "-o", f"{out}/", "--pool", "map",
                   "--engine", "ray", "--ray-workers", "2", "--report", str(tmp_path / "r.jsonl"), env=env)
    assert proc.returncode == 1, proc.stderr  # one image failed
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # nothing of Ray's own (its C++ core logs an actor-restart caveat on fd 2)
    assert lines[0].startswith(f"{photos / 'broken.jpg'}: ")
    assert lines[1].endswith(f"{len(PHOTOS)} embedded, 0 skipped (output exists), 1 failed")
    report = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["output"] for r in report if r["output"]} == {str(p) for p in out.rglob("*.npy")}
    assert len(list(out.rglob("*.npy"))) == len(PHOTOS)
    local = run_cli("embed", str(photos), "--model", str(tiny_ckpt), "-o", f"{tmp_path / 'local'}/", "--pool", "map")
    assert local.returncode == 1
    for p in out.rglob("*.npy"):
        np.testing.assert_allclose(np.load(p), np.load(tmp_path / "local" / p.relative_to(out)), atol=1e-5)
    again = run_cli("embed", str(photos), "--model", str(tiny_ckpt), "-o", f"{out}/", "--pool", "map",
                    "--engine", "ray", env=env)
    assert f"0 embedded, {len(PHOTOS)} skipped (output exists), 1 failed" in again.stderr


def test_engine_ray_refuses_a_stacked_file_in_one_line(tmp_path):
    proc = run_cli("embed", str(PHOTOS[0]), str(PHOTOS[1]), "--random-init", "-o", str(tmp_path / "all.npy"),
                   "--engine", "ray")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: --engine ray writes one file per image: use a folder output (-o DIR/); a stacked file is one "
        "stream written by one process (leave out --engine ray)"]
    assert not (tmp_path / "all.npy").exists()


def test_ray_options_need_engine_ray(tmp_path):
    proc = run_cli("embed", str(PHOTOS[0]), "--random-init", "-o", f"{tmp_path}/out/", "--ray-workers", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "Error: the --ray-* options need --engine ray"


def test_engine_ray_without_ray_says_how_to_install(tmp_path):
    """Where ray is not installed (simulated: the import fails), one line names the extra."""
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['siglip'] + sys.argv[1:]; "
            "from siglip_cli.__main__ import main; main()")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code, "embed", str(PHOTOS[0]), "--random-init", "-o",
                           f"{tmp_path}/out/", "--engine", "ray"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ('Error: --engine ray needs Ray Data, which is not installed: '
                                   'pip install "siglip-cli[ray]"')
    assert not (tmp_path / "out").exists()


def test_check_engine_refuses_bad_resources():
    from siglip_cli.errors import UsageError

    check_engine("local", False, RaySettings())
    with pytest.raises(UsageError, match="--ray-gpus-per-worker must be a number >= 0, got nan"):
        check_engine("ray", True, RaySettings(gpus_per_worker=float("nan")))


def test_worker_error_is_the_cause_s_last_line():
    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("RayTaskError: long\n  Traceback...\n  File x")
            self.cause = cause

    assert worker_error(Wrapped(ValueError("line one\nthe reason"))) == "the reason"


@needs_ray
def test_cli_device_cuda_without_cluster_gpus_is_refused_before_any_work(tmp_path):
    proc = run_cli("embed", str(PHOTOS[0]), str(PHOTOS[1]), "--random-init", "-o", f"{tmp_path / 'out'}/",
                   "--engine", "ray", "--device", "cuda", env={"RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "Error: --device cuda: the actors reserve no GPU (the Ray cluster has 0): set --ray-gpus-per-worker, or "
        "leave out --device cuda")
    assert not list((tmp_path / "out").rglob("*.npy"))


def test_an_address_that_does_not_answer_is_one_line_within_seconds(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    proc = run_cli("embed", str(PHOTOS[0]), "--random-init", "-o", f"{tmp_path / 'out'}/", "--engine", "ray",
                   "--ray-address", f"127.0.0.1:{port}", env={"RAY_USAGE_STATS_ENABLED": "0"})
    if not has_ray():
        pytest.skip("the ray extra is not installed")
    assert time.perf_counter() - t < 60
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"Error: cannot connect to the Ray cluster at 127.0.0.1:{port} (Connection refused): check --ray-address "
        "(or RAY_ADDRESS), or leave both unset to start a local cluster for the run")
    assert not list((tmp_path / "out").rglob("*.npy"))


@needs_ray
def test_resources_refuse_more_than_a_node_has(cluster):
    from siglip_cli.errors import UsageError
    from siglip_cli.ray_engine import resources

    assert resources(cluster, RaySettings(workers=2), "auto", "none") == (1.0, 0.0, 1)
    with pytest.raises(UsageError, match=r"--ray-cpus-per-worker 5: no node of the Ray cluster has that many CPUs "
                                         r"\(the largest has 2\): use 2 or fewer"):
        resources(cluster, RaySettings(cpus_per_worker=5), "auto", "none")
    with pytest.raises(UsageError, match=r"--ray-gpus-per-worker 1: no node of the Ray cluster has that many GPUs"):
        resources(cluster, RaySettings(gpus_per_worker=1), "auto", "none")
    with pytest.raises(UsageError, match=r"--device cuda: the actors reserve no GPU \(the Ray cluster has 0\)"):
        resources(cluster, RaySettings(), "cuda", "none")


@needs_ray
def test_a_driver_stopped_mid_run_leaves_complete_files_and_a_rerun_finishes(tiny_ckpt, tmp_path):
    """SIGTERM to the driver (a scheduler's stop) mid-run: exit 143, every file there loads, the report lists
    only written files, and a rerun embeds exactly the rest."""
    import signal
    import subprocess
    import time

    from PIL import Image

    big = tmp_path / "big.jpg"
    Image.open(PHOTOS[0]).convert("RGB").resize((2400, 1800)).save(big, quality=92)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(400):  # one slow-to-decode JPEG under 400 names
        os.link(big, photos / f"img{i:03d}.jpg")
    out, report = tmp_path / "out", tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "siglip_cli", "embed", str(photos), "--model", str(tiny_ckpt), "-o", f"{out}/",
           "--engine", "ray", "--exact-decode", "--batch-size", "1", "--workers", "1", "--report", str(report)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.npy"))) < 12:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    time.sleep(2)  # the actors' last writes
    files = sorted(out.glob("*.npy"))
    assert 12 <= len(files) < 400  # stopped mid-run
    for f in files:
        assert np.load(f).shape == (4 * 4, TINY["hidden_size"])
    listed = [json.loads(line) for line in report.read_text().splitlines()]
    assert listed and all(r["status"] == "embedded" for r in listed)
    assert {r["output"] for r in listed} <= {str(f) for f in files}
    again = run_cli("embed", str(photos), "--model", str(tiny_ckpt), "-o", f"{out}/", "--engine", "ray",
                    "--batch-size", "8", env={"RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""})
    assert again.returncode == 0, again.stderr
    assert f"{400 - len(files)} embedded, {len(files)} skipped (output exists), 0 failed" in again.stderr
    assert len(list(out.glob("*.npy"))) == 400
    assert not [p.name for p in out.iterdir() if "siglip-tmp" in p.name]
