"""The real `siglip` command: files written, shapes, exit codes and message text."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from siglip_cli import __version__
from siglip_cli.cli import app
from siglip_cli.writers import read_embeddings

from conftest import PHOTOS, TINY, build_checkpoint, read_json, run_cli


def test_single_image_to_npy(tiny_ckpt, tmp_path):
    out = tmp_path / "cat.npy"
    proc = run_cli("embed", str(PHOTOS[0]), "--model", str(tiny_ckpt), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert np.load(out).shape == (16, 32) and np.load(out).dtype == np.float32
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"wrote {out} [16, 32] float32: 1 embedded, 0 skipped (output exists), 0 failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.npy"]


def test_single_image_to_safetensors_records_metadata(tiny_ckpt, tmp_path):
    out = tmp_path / "cat.safetensors"
    proc = run_cli("embed", str(PHOTOS[0]), "--model", str(tiny_ckpt), "--pool", "map", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    array, meta = read_embeddings(out)
    assert array.shape == (32,)
    from siglip_cli.model import SiglipVisionModel

    fingerprint = SiglipVisionModel.from_pretrained(str(tiny_ckpt)).fingerprint
    assert meta == {"model": str(tiny_ckpt), "revision": "", "model_fingerprint": fingerprint,
                    "pool": "map", "norm": "checkpoint",
                    "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": "bicubic",
                    "rescale_factor": 1 / 255, "image_size": 32, "dtype": "float32",
                    "compute_dtype": "float32", "quantize": "none", "decode": "jpeg-draft>=96px",
                    "siglip_cli_version": __version__, "source": str(PHOTOS[0])}


def test_several_images_stack_in_input_order(tiny_ckpt, tmp_path):
    photos = [str(p) for p in reversed(PHOTOS)]
    proc = run_cli("embed", *photos, "--model", str(tiny_ckpt), "-o", str(tmp_path / "all.npy"),
                   "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    stacked = np.load(tmp_path / "all.npy")
    assert stacked.shape == (5, 16, 32)
    side = read_json(tmp_path / "all.npy.json")
    assert side["sources"] == photos and side["shape"] == [5, 16, 32] and side["norm"] == "checkpoint"
    proc = run_cli("embed", *photos, "--model", str(tiny_ckpt), "-o", str(tmp_path / "all.safetensors"))
    assert proc.returncode == 0, proc.stderr
    array, meta = read_embeddings(tmp_path / "all.safetensors")
    assert meta["sources"] == photos
    assert np.array_equal(array, stacked)  # batching does not change the numbers
    one = tmp_path / "one.npy"
    assert CliRunner().invoke(app, ["embed", photos[2], "--model", str(tiny_ckpt), "-o", str(one)]).exit_code == 0
    assert np.abs(np.load(one) - stacked[2]).max() <= 1e-5


def test_a_bad_image_among_several_is_named_and_the_rest_are_written(tiny_ckpt, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not an image")
    out = tmp_path / "out.safetensors"
    proc = run_cli("embed", str(PHOTOS[0]), str(notes), str(PHOTOS[1]), "--model", str(tiny_ckpt), "-o", str(out))
    assert proc.returncode == 1
    assert proc.stderr.count(str(notes)) == 1
    assert f"{notes}: not an image Pillow can read\n" in proc.stderr
    assert proc.stderr.strip().endswith(f"wrote {out} [2, 16, 32] float32: 2 embedded, 0 skipped (output exists), "
                                        "1 failed")
    assert "Traceback" not in proc.stderr
    array, meta = read_embeddings(out)
    assert array.shape == (2, 16, 32) and meta["sources"] == [str(PHOTOS[0]), str(PHOTOS[1])]


def test_random_init_warns_and_uses_the_seeds_preset(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    first = run_cli("embed", str(PHOTOS[0]), "--random-init", "-o", str(a))
    second = run_cli("embed", str(PHOTOS[0]), "--random-init", "-o", str(b))
    assert first.returncode == second.returncode == 0, first.stderr
    assert first.stderr.startswith("Warning: --random-init: untrained random weights (seed 0); "
                                   "these embeddings mean nothing.")
    x, meta = read_embeddings(a)
    assert x.shape == (196, 768) and meta["norm"] == "imagenet" and meta["model"] == "random-init (seed 0)"
    assert np.array_equal(x, read_embeddings(b)[0])


def _error_cases(tiny_ckpt: Path, nohead: Path, tmp: Path):
    (tmp / "notes.txt").write_text("hello")
    (tmp / "afile").write_text("x")
    shutil.copy(PHOTOS[0], tmp / "pic.npy")  # an image that happens to be named like an output
    photo = str(PHOTOS[0])
    return {
        "missing file": ([str(tmp / "missing.jpg"), "--model", str(tiny_ckpt)], 1,
                         f"Error: {tmp / 'missing.jpg'}: no such file"),
        "not an image": ([str(tmp / "notes.txt"), "--model", str(tiny_ckpt)], 1,
                         f"Error: {tmp / 'notes.txt'}: not an image Pillow can read"),
        "truncated jpeg": ([str(Path(__file__).parent / "data" / "truncated_jpeg.jpg"), "--model", str(tiny_ckpt)],
                           1, "cannot decode image (image file is truncated"),
        "unknown model": ([photo, "--model", "acme/no-such-model"], 2,
                          "Error: model acme/no-such-model is not in the Hugging Face cache and downloads are off "
                          "(HF_HUB_OFFLINE=1): run `siglip download-weights acme/no-such-model` first, or use "
                          "--random-init"),
        "default model not cached": ([photo], 2,
                                     "Error: model google/siglip-base-patch16-224 is not in the Hugging Face cache "
                                     "and downloads are off (HF_HUB_OFFLINE=1): run `siglip download-weights "
                                     "google/siglip-base-patch16-224` first, or use --random-init for an untrained "
                                     "model"),
        "bad local path": ([photo, "--model", "./nowhere/ckpt"], 2,
                           "Error: model './nowhere/ckpt': no such directory, and not a Hugging Face model id"),
        "unwritable output": ([photo, "--random-init", "-o", str(tmp / "afile" / "x.npy")], 2,
                              f"Error: cannot create output folder '{tmp / 'afile'}'"),
        "output on a virtual filesystem": ([photo, "--random-init", "-o", "/proc/x.npy"], 2,
                                           "Error: cannot write to output folder '/proc'"),
        "output is an input": ([str(tmp / "pic.npy"), photo, "--random-init", "-o", str(tmp / "pic.npy")], 2,
                               f"Error: output '{tmp / 'pic.npy'}' is also an input"),
        "bad option value": ([photo, "--random-init", "--pool", "max"], 2,
                             "Error: Invalid value for '--pool'"),
        "bad model id": ([photo, "--model", "acme/x--y"], 2, "Error: model 'acme/x--y': no such directory"),
        "bad suffix": ([photo, "--random-init", "-o", str(tmp / "x.txt")], 2,
                       "must end in .npy or .safetensors (the suffix picks the format)"),
        "image size": ([photo, "--model", str(tiny_ckpt), "--image-size", "36"], 2,
                       "Error: image size 36 is not a multiple of the patch size 8: use e.g. 32 or 40"),
        "no head": ([photo, "--model", str(nohead), "--pool", "map"], 2,
                    "Error: this checkpoint has no attention-pooling head (vision_use_head: false): use --pool mean"),
        "model and random init": ([photo, "--model", str(tiny_ckpt), "--random-init"], 2,
                                  "Error: use either --model or --random-init, not both"),
        "norm checkpoint without one": ([photo, "--random-init", "--norm", "checkpoint"], 2,
                                        "has no preprocessor_config.json, so --norm checkpoint has nothing to follow"),
    }


@pytest.fixture(scope="module")
def nohead_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("nohead")
    build_checkpoint(path, TINY, head=False)
    return path


ERROR_CASES = ["missing file", "not an image", "truncated jpeg", "unknown model", "default model not cached",
               "bad local path", "unwritable output", "output on a virtual filesystem", "output is an input",
               "bad option value", "bad model id", "bad suffix", "image size", "no head", "model and random init",
               "norm checkpoint without one"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_with_exit_code_and_no_output(case, tiny_ckpt, nohead_ckpt, tmp_path):
    cases = _error_cases(tiny_ckpt, nohead_ckpt, tmp_path)
    assert sorted(cases) == sorted(ERROR_CASES)
    args, code, message = cases[case]
    if "-o" not in args:
        args = [*args, "-o", str(tmp_path / "out.npy")]
    empty_cache = {"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    proc = run_cli("embed", *args, env=empty_cache)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0])
    assert not (tmp_path / "out.npy").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".siglip-tmp")]
    if case == "output is an input":
        assert (tmp_path / "pic.npy").read_bytes() == PHOTOS[0].read_bytes()


def test_debug_shows_the_traceback(tmp_path):
    for env, args in (({}, ["--debug"]), ({"SIGLIP_DEBUG": "1"}, [])):
        proc = run_cli("embed", str(tmp_path / "missing.jpg"), "--random-init", "-o", str(tmp_path / "o.npy"),
                       *args, env=env)
        assert proc.returncode != 0
        assert "Traceback" in proc.stderr and "ImageError: " in proc.stderr


def test_help_has_examples_and_imports_nothing_heavy():
    # What makes help slow (benchmarks/bench_startup.py): torch ~2 s, numpy, Pillow, and pydantic,
    # which typer 0.29 imports to build an adapter per option (hence typer<0.29 in pyproject.toml).
    heavy = ("torch", "numpy", "PIL", "safetensors", "huggingface_hub", "pydantic")
    code = ("import sys\nfrom siglip_cli.cli import main\nsys.argv = ['siglip', 'embed', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print('IMPORTED:', [m for m in {heavy!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"NO_COLOR": "1", "COLUMNS": "100", "PATH": ""})
    assert proc.stdout.strip().endswith("IMPORTED: []")
    assert "siglip embed photo.jpg -o photo.npy" in proc.stdout
    assert "Exit codes: 0 all inputs embedded; 1 some input failed; 2 usage or model error." in proc.stdout


def test_console_script_and_module_entry_points():
    script = Path(sys.executable).parent / "siglip"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True).stdout
    assert version == f"siglip {__version__}\n"
    proc = run_cli("--help")
    assert proc.returncode == 0 and "embed" in proc.stdout


def test_dtype_and_quantize_are_recorded_and_change_the_numbers_a_little(tiny_ckpt, tmp_path):
    outputs = {}
    for name, extra in (("exact", []), ("bf16", ["--dtype", "bfloat16", "--device", "cpu"]),
                        ("int8", ["--quantize", "int8"])):
        out = tmp_path / f"{name}.safetensors"
        result = CliRunner().invoke(app, ["embed", *map(str, PHOTOS[:3]), "--model", str(tiny_ckpt), "--pool",
                                          "map", "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = read_embeddings(out)
    exact, meta = outputs["exact"]
    assert (meta["compute_dtype"], meta["quantize"]) == ("float32", "none")
    assert (outputs["bf16"][1]["compute_dtype"], outputs["int8"][1]["quantize"]) == ("bfloat16", "int8")
    for name in ("bf16", "int8"):
        approx, meta = outputs[name]
        assert approx.shape == exact.shape == (3, 32) and approx.dtype == np.float32 and meta["dtype"] == "float32"
        cos = (approx * exact).sum(1) / np.linalg.norm(approx, axis=1) / np.linalg.norm(exact, axis=1)
        assert cos.min() > 0.98, name
        assert not np.array_equal(approx, exact), name


def test_quantize_with_half_precision_is_a_usage_error(tmp_path):
    proc = run_cli("embed", str(PHOTOS[0]), "--random-init", "--quantize", "int8", "--dtype", "float16",
                   "-o", str(tmp_path / "o.npy"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        "Error: --quantize int8 and --dtype bfloat16/float16 do not combine: choose one"
    assert not (tmp_path / "o.npy").exists()


def test_quantize_on_a_gpu_is_refused_before_any_model_is_looked_up(tmp_path):
    proc = run_cli("embed", str(PHOTOS[0]), "--model", "nobody/no-such-model", "--offline", "--quantize", "int8",
                   "--device", "cuda", "-o", str(tmp_path / "o.npy"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("Error: --quantize int8 runs on the CPU only, not cuda: add "
                                                     "--device cpu, or use --dtype bfloat16 on a GPU")


def test_doctor_reports_this_machines_cpu_and_advice():
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    flags = set(open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()) \
        if os.path.exists("/proc/cpuinfo") else set()
    assert info["cores"] == os.cpu_count() and info["features"].get("avx2", False) == ("avx2" in flags)
    assert info["advice"]["option"] in ("--dtype float32 (the default)", "--dtype bfloat16", "--dtype float16",
                                        "--quantize int8")
    text = run_cli("doctor").stdout
    assert text.startswith("cpu:") and "fastest:" in text
