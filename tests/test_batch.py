"""Batch embedding over folders: bad inputs, resume after SIGKILL, shards, stacked output, safety."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.batch import embed_to
from siglip_cli.embed import Embedder
from siglip_cli.inputs import collect
from siglip_cli.plan import resume
from siglip_cli.preprocess import imagenet_preprocessing
from siglip_cli.writers import read_embeddings

from conftest import DATA, PHOTOS, TINY, run_cli, run_on_terminal

GOOD = ["cat.jpg", "2024/coffee.jpg", "2024/summer/rocket.jpg", "2024/camera.png", "logo.png", "big.png"]
BAD = {"2024/truncated.jpg": "cannot decode image (image file is truncated",
       "random.png": "not an image Pillow can read",
       "readme.jpg": "not an image Pillow can read",
       "2024/summer/empty.jpg": "not an image Pillow can read",
       "bomb.png": "too many pixels (600x500 = 300,000 > --max-pixels 200,000)",
       "decompression_bomb.gif": "too many pixels (over --max-pixels 200,000): refused as a possible "
                                 "decompression bomb"}


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for rel, src in zip(GOOD[:5], PHOTOS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    Image.open(PHOTOS[0]).resize((300, 200)).save(root / "big.png")  # 60,000 px: under the limit
    shutil.copy(DATA / "truncated_jpeg.jpg", root / "2024/truncated.jpg")
    (root / "random.png").write_bytes(os.urandom(3000))
    (root / "readme.jpg").write_text("this is text, not a JPEG")
    (root / "2024/summer/empty.jpg").write_bytes(b"")
    Image.new("RGB", (600, 500), "red").save(root / "bomb.png")  # 300,000 px: over --max-pixels 200000
    shutil.copy(DATA / "decompression_bomb.gif", root)  # claims 4.4 Gpx: Pillow refuses it while opening
    (root / "notes.txt").write_text("skipped silently: not an image by name")
    (root / ".cache").mkdir()
    shutil.copy(PHOTOS[0], root / ".cache" / "hidden.jpg")
    return root


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from conftest import build_checkpoint

    path = tmp_path_factory.mktemp("tiny-batch")
    build_checkpoint(path, TINY)
    return path


def test_folder_run_embeds_every_good_image_and_names_every_bad_one_once(photos, tiny_model_dir, tmp_path):
    out, report = tmp_path / "out", tmp_path / "run.jsonl"
    proc = run_cli("embed", str(photos), "--model", str(tiny_model_dir), "-o", f"{out}/", "--max-pixels", "200000",
                   "--report", str(report), "--pool", "map")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted([".siglip.json", *(f"{g}.npy" for g in GOOD)])  # the manifest, then the outputs
    for g in GOOD:
        assert np.load(out / f"{g}.npy").shape == (32,)
    for rel, reason in BAD.items():
        assert proc.stderr.count(str(photos / rel)) == 1, rel
        assert f"{photos / rel}: {reason}" in proc.stderr
    assert "notes.txt" not in proc.stderr and "hidden" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"wrote {out}/ (one file per image) [32] float32: 6 embedded, 0 skipped (output exists), 6 failed"
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(records) == 12
    by_path = {r["path"]: r for r in records}
    assert by_path[str(photos / "cat.jpg")] == {"path": str(photos / "cat.jpg"), "status": "embedded",
                                                "reason": None, "output": str(out / "cat.jpg.npy")}
    assert by_path[str(photos / "random.png")]["status"] == "failed"

    # Another pooling into the same folder would mix two kinds of vector: refused before any work.
    other = run_cli("embed", str(photos), "--model", str(tiny_model_dir), "-o", f"{out}/")
    assert other.returncode == 2
    assert other.stderr.strip() == (f"Error: output folder {out} holds embeddings made with another setup: pool "
                                    "'map' (this run: 'none'): use another output folder, or delete this one "
                                    "first")
    again = run_cli("embed", str(photos), "--model", str(tiny_model_dir), "-o", f"{out}/", "--max-pixels", "200000",
                    "--report", str(report), "--pool", "map")
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == "0 embedded, 6 skipped (output exists), 6 failed"
    assert {json.loads(line)["status"] for line in report.read_text().splitlines()} == {"skipped", "failed"}


def test_exit_codes_and_fail_fast(photos, tiny_model_dir, tmp_path):
    good = run_cli("embed", str(photos / "cat.jpg"), str(photos / "logo.png"), "--model", str(tiny_model_dir),
                   "-o", f"{tmp_path / 'g'}/")
    assert good.returncode == 0, good.stderr
    ff = run_cli("embed", str(photos / "cat.jpg"), str(photos / "random.png"), str(photos / "logo.png"),
                 "--model", str(tiny_model_dir), "-o", f"{tmp_path / 'f'}/", "--fail-fast", "--batch-size", "1")
    assert ff.returncode == 1
    assert ff.stderr.strip().splitlines()[-1] == \
        f"Error: {photos / 'random.png'}: not an image Pillow can read (stopped by --fail-fast)"
    assert not (tmp_path / "f" / "logo.png.npy").exists()
    usage = run_cli("embed", str(photos), "--random-init", "-o", f"{tmp_path}/u/", "--shard", "3/3")
    assert usage.returncode == 2 and "Error: --shard '3/3'" in usage.stderr


def test_stacked_output_equals_per_file_output_and_streams_float16(photos, tiny_model_dir, tmp_path):
    args = [str(photos), "--model", str(tiny_model_dir), "--max-pixels", "200000"]
    assert run_cli("embed", *args, "-o", f"{tmp_path / 'per'}/").returncode == 1
    proc = run_cli("embed", *args, "-o", str(tmp_path / "all.safetensors"), "--batch-size", "4")
    assert proc.returncode == 1
    stacked, meta = read_embeddings(tmp_path / "all.safetensors")
    assert stacked.shape == (6, 16, 32) and len(meta["sources"]) == 6
    for row, source in zip(stacked, meta["sources"]):
        rel = Path(source).relative_to(photos)
        assert np.abs(row - np.load(tmp_path / "per" / f"{rel}.npy")).max() <= 1e-5
    half = run_cli("embed", *args, "-o", str(tmp_path / "half.npy"), "--out-dtype", "float16")
    arr = np.load(tmp_path / "half.npy")
    assert half.returncode == 1 and arr.dtype == np.float16 and arr.shape == (6, 16, 32)
    assert np.abs(arr.astype(np.float32) - stacked).max() < 1e-2
    assert json.loads((tmp_path / "half.npy.json").read_text())["dtype"] == "float16"


def test_shards_split_a_folder_with_no_overlap(photos, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    seen = []
    for k in range(3):
        report = tmp_path / f"r{k}.jsonl"
        run_cli("embed", str(photos), "--model", str(tiny_model_dir), "-o", f"{out}/", "--shard", f"{k}/3",
                "--report", str(report), "--max-pixels", "200000")
        seen += [json.loads(line)["path"] for line in report.read_text().splitlines()]
    assert len(seen) == len(set(seen)) == 12
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.npy")) == sorted(f"{g}.npy" for g in GOOD)


def test_outputs_never_leave_the_output_folder(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    shutil.copy(PHOTOS[0], tmp_path / "in" / "a.jpg")
    shutil.copy(PHOTOS[1], tmp_path / "in" / "b.jpg")
    (tmp_path / "list.txt").write_text(f"in/../in/a.jpg\n{tmp_path / 'in' / 'b.jpg'}\n{tmp_path / 'in' / 'a.jpg'}\n")
    out = tmp_path / "out"
    proc = run_cli("embed", "--files-from", "list.txt", "--model", str(tiny_model_dir), "-o", "out/", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.npy"))
    # The third line names the first file again: embedded once.
    assert written == sorted(["in/__/in/a.jpg.npy", f"{str(tmp_path / 'in' / 'b.jpg').lstrip('/')}.npy"])
    # A symlink inside the output tree that points outside it is refused, and nothing is written there.
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out2").mkdir()
    os.symlink(outside, tmp_path / "out2" / "in")
    proc = run_cli("embed", "--files-from", "list.txt", "--model", str(tiny_model_dir), "-o", "out2/", cwd=tmp_path)
    assert proc.returncode == 1
    assert "would leave out2 through a symlink" in proc.stderr
    assert list(outside.iterdir()) == []


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.load(p) for p in sorted(folder.rglob("*.npy"))}


def test_a_killed_run_resumes_to_the_same_files_and_never_leaves_a_partial_one(tmp_path):
    src = tmp_path / "many"
    for i in range(24):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(PHOTOS[i % 3], src / f"d{i % 3}" / f"img{i:02d}.jpg")
    args = [sys.executable, "-m", "siglip_cli", "embed", str(src), "--random-init", "--batch-size", "1",
            "--workers", "1", "-o"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, f"{killed}/"], stderr=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and len(list(killed.rglob("*.npy"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _outputs(killed)  # every file there loads completely
    assert 5 <= len(done_before) < 24
    rerun = subprocess.run([*args, f"{killed}/"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{24 - len(done_before)} embedded, {len(done_before)} skipped" in rerun.stderr
    clean = tmp_path / "clean"
    assert subprocess.run([*args, f"{clean}/"], capture_output=True).returncode == 0
    final, expected = _outputs(killed), _outputs(clean)
    assert sorted(final) == sorted(expected) and len(final) == 24
    for name in expected:
        assert np.array_equal(final[name], expected[name]), name
    leftovers = [p.name for p in killed.rglob("*") if p.is_file() and not p.name.endswith(".npy")]
    assert leftovers == [".siglip.json"]


def test_python_api_streams_with_flat_memory(tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    for i in range(300):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(folder / f"{i:03d}.png")
    model = SiglipVisionModel.random_init(SiglipVisionConfig(**TINY))
    emb = Embedder(model, imagenet_preprocessing(96), device="cpu")  # 144 patches: 18 KB per row
    paths = sorted(folder.iterdir())

    def peak(n: int) -> int:
        # float16 rows are NumPy copies, which tracemalloc sees (torch's own buffers it does not).
        tracemalloc.start()
        summary = embed_to(emb, paths[:n], tmp_path / f"s{n}.npy", batch_size=8, workers=2, out_dtype="float16")
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert summary.embedded == n
        return top

    peak(20)  # warm-up: first-call allocations
    # The decoded pixels in flight (NumPy arrays, which tracemalloc sees) vary with thread timing by up to a
    # window of them: the median of three runs each.
    small, large = (sorted(peak(n) for _ in range(3))[1] for n in (50, 300))
    row_bytes = 144 * 32 * 2
    assert np.load(tmp_path / "s300.npy").shape == (300, 144, 32)
    # Holding the rows would add 250 * 9 KB = 2.3 MB; per-input bookkeeping (paths, report lines) is ~1 KB.
    assert large - small < 250 * row_bytes / 4, (small, large)


def test_progress_bar_on_a_terminal_and_silence_when_piped(photos, tiny_model_dir, tmp_path):
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    args = ["embed", str(photos), "--model", str(tiny_model_dir), "--max-pixels", "200000", "--batch-size", "1"]
    code, text, stdout = run_on_terminal([*args, "-o", f"{tmp_path / 'tty'}/"], env)
    assert code == 1
    assert "embedding" in text and "img/s" in text and "failed" in text and "/12" in text
    assert stdout == ""
    piped = run_cli(*args, "-o", f"{tmp_path / 'piped'}/")
    assert "img/s" not in piped.stderr and "\x1b[" not in piped.stderr
    assert len(piped.stderr.strip().splitlines()) == 6 + 1  # one line per failure, then the summary
    quiet = run_cli(*args, "-o", f"{tmp_path / 'quiet'}/", "--quiet")
    assert len(quiet.stderr.strip().splitlines()) == 6  # failures only


def test_several_folders_keep_their_names_and_outputs_never_collide(tmp_path, tiny_model_dir):
    for folder in ("p", "q"):
        (tmp_path / folder).mkdir()
        shutil.copy(PHOTOS[0], tmp_path / folder / "a.jpg")
    proc = run_cli("embed", "p", "q", "--model", str(tiny_model_dir), "-o", "out/", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.npy")) == \
        ["p/a.jpg.npy", "q/a.jpg.npy"]
    proc = run_cli("embed", "p/a.jpg", "q/a.jpg", "--model", str(tiny_model_dir), "-o", "flat/", cwd=tmp_path)
    assert proc.returncode == 1
    assert "q/a.jpg: its output flat/a.jpg.npy would overwrite that of p/a.jpg" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == [".siglip.json", "a.jpg.npy"]


def test_odd_inputs_are_handled(tmp_path, tiny_model_dir):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copy(PHOTOS[0], src / "sub" / "a.jpg")
    os.symlink("..", src / "sub" / "loop")  # a symlink loop for ** to run around
    os.mkfifo(src / "pipe.jpg")  # would block a reader forever
    loop = run_cli("embed", f"{src}/**/*.jpg", "--model", str(tiny_model_dir), "-o", str(tmp_path / "g.npy"))
    assert loop.returncode == 0, loop.stderr
    assert np.load(tmp_path / "g.npy").shape == (1, 16, 32)  # one real file, once; a folder's one image stacks
    assert json.loads((tmp_path / "g.npy.json").read_text())["sources"] == [f"{src}/sub/a.jpg"]
    walk = run_cli("embed", str(src), "--model", str(tiny_model_dir), "-o", f"{tmp_path / 'w'}/")
    assert walk.returncode == 0 and "pipe" not in walk.stderr
    named = run_cli("embed", str(src / "pipe.jpg"), str(src / "sub" / "a.jpg"), "--model", str(tiny_model_dir),
                    "-o", str(tmp_path / "n.npy"))
    assert named.returncode == 1 and "pipe.jpg: not a regular file" in named.stderr
    empty = run_cli("embed", str(src), "--model", str(tiny_model_dir), "-o", f"{tmp_path / 'e'}/", "--shard", "3/4")
    assert empty.returncode == 0 and "shard 3/4: nothing to do (1 inputs in all" in empty.stderr
    report = run_cli("embed", str(src), "--model", str(tiny_model_dir), "-o", f"{tmp_path / 'r'}/",
                     "--report", str(tmp_path / "no" / "such" / "dir" / "r.jsonl"))
    report2 = run_cli("embed", str(src), "--model", str(tiny_model_dir), "-o", f"{tmp_path / 'r'}/",
                      "--report", "/proc/r.jsonl")
    assert report.returncode == 0  # the report's folder is created
    assert report2.returncode == 2 and "Error: cannot write to output folder '/proc'" in report2.stderr
    assert not (tmp_path / "r" / "sub" / "a.jpg.npy").exists() or report.returncode == 0


def test_sigterm_removes_the_partial_stacked_file(tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        shutil.copy(PHOTOS[i % 3], src / f"img{i:02d}.jpg")
    proc = subprocess.Popen([sys.executable, "-m", "siglip_cli", "embed", str(src), "--random-init", "--batch-size",
                             "1", "--workers", "1", "-o", str(tmp_path / "all.npy"), "--report",
                             str(tmp_path / "r.jsonl")], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".all.npy.*.siglip-tmp")):
        time.sleep(0.05)
    temp = next(tmp_path.glob(".all.npy.*.siglip-tmp"))
    start = temp.stat().st_size
    while time.time() < deadline and temp.stat().st_size == start:  # the first row is in: an input was reached
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many", "r.jsonl"]
    assert 0 < len((tmp_path / "r.jsonl").read_text().splitlines()) < 40


def test_resume_decides_every_input_in_order_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"{i:02d}.png").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    for i in range(0, 40, 3):
        (out / f"{i:02d}.png.npy").write_bytes(b"done")  # done by an earlier run
    (out / "07.png.npy").mkdir()  # a folder where an output file goes
    os.symlink(out / "00.png.npy", out / "08.png.npy")
    items = [*collect([str(src)]), *collect([str(tmp_path / "missing.jpg")])]
    before = sorted(os.listdir(out))
    steps = list(resume(items, out, ".npy", workers=4, window=5))
    assert [s.item for s in steps] == items and sorted(os.listdir(out)) == before
    status = {s.item.path.name: (s.status, s.reason) for s in steps}
    assert status["00.png"] == ("skipped", None) and steps[0].output == out / "00.png.npy"
    assert status["01.png"] == ("embed", None)
    assert status["07.png"][0] == "failed" and "is a folder, which siglip never replaces" in status["07.png"][1]
    assert status["08.png"][0] == "failed" and "is a symlink" in status["08.png"][1]
    assert status["missing.jpg"] == ("failed", "no such file")
    assert [s.status for s in steps].count("skipped") == 14  # 0, 3 ... 39
    again = list(resume(items, out, ".npy", overwrite=True))  # --overwrite: nothing looked up
    assert [s.status for s in again] == ["embed"] * 40 + ["failed"]
    assert [s.status for s in resume(items, None)] == ["embed"] * 40 + ["failed"]  # a file output


def test_same_names_from_another_input_folder_fail_rather_than_pass_as_done(tiny_model_dir, tmp_path):
    for year in ("y2023", "y2024"):
        (tmp_path / year).mkdir()
    shutil.copy(PHOTOS[0], tmp_path / "y2023" / "IMG_1.jpg")
    shutil.copy(PHOTOS[2], tmp_path / "y2024" / "IMG_1.jpg")
    shutil.copy(PHOTOS[1], tmp_path / "y2024" / "IMG_2.jpg")
    assert run_cli("embed", "y2023", "-m", str(tiny_model_dir), "-o", "emb/", cwd=tmp_path).returncode == 0
    proc = run_cli("embed", "y2024", "-m", str(tiny_model_dir), "-o", "emb/", cwd=tmp_path)
    assert proc.returncode == 1
    assert (f"{Path('y2024/IMG_1.jpg')}: its output {Path('emb/IMG_1.jpg.npy')} holds the embedding of "
            f"{tmp_path / 'y2023' / 'IMG_1.jpg'}, from an earlier run: embed this folder into another output folder"
            in proc.stderr)
    assert proc.stderr.strip().endswith("1 embedded, 0 skipped (output exists), 1 failed")
    # the same images moved to a new folder: done already, skipped
    assert run_cli("embed", "y2023", "-m", str(tiny_model_dir), "-o", "emb2/", cwd=tmp_path).returncode == 0
    (tmp_path / "y2023").rename(tmp_path / "moved")
    proc = run_cli("embed", "moved", "-m", str(tiny_model_dir), "-o", "emb2/", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr.strip().endswith("0 embedded, 1 skipped (output exists), 0 failed")
