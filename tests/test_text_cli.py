"""embed-text, classify and search through the CLI, on real files: rankings, refusals, patch files pooled."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from siglip_cli.text import Siglip, prompts
from siglip_cli.writers import StackedWriter, read_embeddings

from conftest import PHOTOS, TINY, TINY_TEXT, build_checkpoint, run_cli

TEXT = {**TINY_TEXT, "vocab_size": 300}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    path = tmp_path_factory.mktemp("full-text")
    build_checkpoint(path, TINY, layout="full", text=TEXT, tokenizer="siglip")
    return path


@pytest.fixture(scope="module")
def siglip(full):
    return Siglip.load(full, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for p in PHOTOS:
        shutil.copy(p, folder / p.name)
    return folder


def test_embed_text_writes_rows_in_order_with_the_texts_recorded(full, siglip, tmp_path):
    (tmp_path / "more.txt").write_text("a red car\n\nthe sea at night\n")
    out = tmp_path / "text.safetensors"
    proc = run_cli("embed-text", "a photo of a cat", "Two dogs!", "--from-file", str(tmp_path / "more.txt"),
                   "--model", str(full), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    texts = ["a photo of a cat", "Two dogs!", "a red car", "the sea at night"]
    assert proc.stderr.strip().endswith(f"wrote {out} [4, 32] float32: 4 texts")
    array, meta = read_embeddings(out)
    np.testing.assert_allclose(array, siglip.embed_texts(texts), atol=1e-6)
    assert meta["sources"] == texts
    assert meta["model"] == str(full) and meta["model_fingerprint"] == siglip.identity()["model_fingerprint"]
    assert meta["tokenizer"] == "siglip" and meta["max_length"] == TEXT["max_position_embeddings"]


def test_classify_equals_transformers_and_writes_table_json_and_csv(full, siglip, photos, tmp_path):
    import transformers

    bad = photos / "zz-broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    labels = ["cat", "cup of coffee", "rocket"]
    base = ["classify", str(photos), "--labels", ",".join(labels), "--model", str(full)]
    proc = run_cli(*base, "--json")
    assert proc.returncode == 1, proc.stderr  # one image failed, the others are classified
    assert f"{bad}: " in proc.stderr and "5 classified, 1 failed" in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows] == sorted(str(photos / p.name) for p in PHOTOS)

    ref = transformers.SiglipModel.from_pretrained(full).eval()
    ids = transformers.SiglipTokenizer(vocab_file=str(full / "spiece.model"))(
        prompts(labels), padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    pixels = torch.from_numpy(np.stack([siglip.embedder().decoder(r["path"]) for r in rows]))
    with torch.inference_mode():
        probs = ref(input_ids=ids, pixel_values=pixels).logits_per_image.sigmoid().numpy()
    for r, p in zip(rows, probs):
        order = np.argsort(-p, kind="stable")
        assert [x["label"] for x in r["labels"]] == [labels[i] for i in order]  # best first
        np.testing.assert_allclose([x["probability"] for x in r["labels"]], p[order], atol=1e-5)

    proc = run_cli(*base, "--csv")
    table = list(csv.reader(io.StringIO(proc.stdout)))
    assert table[0] == ["path", *labels] and len(table) == 6
    np.testing.assert_allclose(np.array([row[1:] for row in table[1:]], float), probs, atol=1e-5)

    proc = run_cli("classify", str(photos / "cat.jpg"), "--labels", ",".join(labels), "--model", str(full),
                   "--top", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(photos / "cat.jpg") and len(lines) == 3
    i = rows[[r["path"] for r in rows].index(str(photos / "cat.jpg"))]["labels"][0]
    assert lines[1] == f"  {i['probability']:7.2%}  {i['label']}"
    bad.unlink()


def _search(*args):
    proc = run_cli("search", *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_search_ranks_a_hand_made_file_by_sigmoid_probability(full, siglip, tmp_path):
    t = siglip.embed_texts(["a red car"])[0]
    rng = np.random.default_rng(0)
    other = rng.standard_normal(32).astype(np.float32)
    other -= other @ t / (t @ t) * t  # orthogonal to the query: cosine 0
    rows = {"exact.jpg": t * 3, "opposite.jpg": -t, "near.jpg": t + 0.3 * other / np.linalg.norm(other)
            * np.linalg.norm(t), "unrelated.jpg": other}
    out = tmp_path / "hand.safetensors"
    w = StackedWriter(out, 4, {**siglip.identity(), "pool": "map", "norm": "checkpoint", "image_size": 32})
    for name, row in rows.items():
        w.add(row.astype(np.float32), name)
    w.finish()
    hits = _search("a red car", str(out), "--json")
    assert [h["path"] for h in hits] == ["exact.jpg", "near.jpg", "unrelated.jpg", "opposite.jpg"]
    np.testing.assert_allclose([h["cosine"] for h in hits], [1, 1 / np.sqrt(1.09), 0, -1], atol=1e-5)
    scale, bias = siglip.model.logit_scale.item(), siglip.model.logit_bias.item()
    expected = 1 / (1 + np.exp(-(np.array([h["cosine"] for h in hits]) * np.exp(scale) + bias)))
    np.testing.assert_allclose([h["probability"] for h in hits], expected, atol=1e-6)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    # top-k, a probability threshold, and paths alone for piping
    keep = expected[1] - 1e-4
    proc = run_cli("search", "a red car", str(out), "--threshold", str(keep), "--paths", "--top", "3")
    assert proc.stdout.splitlines() == ["exact.jpg", "near.jpg"]


def test_patch_files_are_pooled_through_the_head_like_map_files(full, photos, tmp_path):
    for pool, out in (("map", f"{tmp_path}/map/"), ("none", str(tmp_path / "patches.safetensors"))):
        proc = run_cli("embed", str(photos), "--model", str(full), "--pool", pool, "-o", out)
        assert proc.returncode == 0, proc.stderr
    a = _search("a photo of a cat", str(tmp_path / "map"), "--json")
    b = _search("a photo of a cat", str(tmp_path / "patches.safetensors"), "--json")
    assert [h["path"] for h in a] == [h["path"] for h in b] == \
        [h["path"] for h in sorted(a, key=lambda h: -h["probability"])]
    assert sorted(h["path"] for h in a) == sorted(str(photos / p.name) for p in PHOTOS)
    np.testing.assert_allclose([h["probability"] for h in a], [h["probability"] for h in b], atol=1e-5)
    # an image query: the image itself comes first, cosine 1
    hits = _search("--image", str(photos / "rocket.jpg"), str(tmp_path / "map"), "--json", "--top", "2")
    assert hits[0]["path"] == str(photos / "rocket.jpg") and hits[0]["cosine"] == pytest.approx(1, abs=1e-5)
    assert hits[0]["probability"] is None


def test_search_refuses_another_models_embeddings_in_one_line(full, tiny_ckpt, photos, tmp_path):
    proc = run_cli("embed", str(photos), "--model", str(tiny_ckpt), "--pool", "map", "-o", f"{tmp_path}/v/")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("search", "a cat", str(tmp_path / "v"), "--model", str(full))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'v'}: embedded with {tiny_ckpt}, not {full} (the model of the query): vectors of "
        f"different models cannot be compared; search with --model {tiny_ckpt}, or embed these images again with "
        f"{full}"]
    # with no --model, the files' own model is used: a vision-only one cannot read a text
    proc = run_cli("search", "a cat", str(tmp_path / "v"))
    assert proc.returncode == 2 and "this checkpoint has no text tower" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_inspect_shapes_traces_the_text_tower_and_the_sigmoid_scores(full, tiny_ckpt):
    proc = run_cli("inspect-shapes", "--tower", "text", "--batch-size", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = {s["name"]: s for s in json.loads(proc.stdout)["stages"]}
    assert stages["input_ids"]["shape"] == [3, 64] and stages["last_token"]["shape"] == [3, 768]
    assert stages["pooled"]["shape"] == [3, 768] and stages["probabilities"]["shape"] == [2, 3]
    proc = run_cli("inspect-shapes", "--tower", "text", "--model", str(full))
    assert proc.returncode == 0, proc.stderr
    assert "sigmoid" in proc.stdout and "do not sum to 1" in proc.stdout
    proc = run_cli("inspect-shapes", "--tower", "text", "--model", str(tiny_ckpt))
    assert proc.returncode == 2 and "has no text tower" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_review_cases_text_files_sidecars_raw_paths_and_spellings(full, photos, tmp_path):
    # embed-text output is refused by search: texts are not images
    run_cli("embed-text", "a cat", "--model", str(full), "-o", str(tmp_path / "t.npy"))
    proc = run_cli("search", "a cat", str(tmp_path / "t.npy"), "--model", str(full))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"Error: {tmp_path / 't.npy'}: holds text embeddings (written by `siglip embed-text`), not images: search "
        "what `siglip embed` wrote")
    # a user's own FILE.npy.json is never taken over as the sidecar
    (tmp_path / "caps.npy.json").write_text("a cat\na dog\n")
    proc = run_cli("embed-text", "--from-file", str(tmp_path / "caps.npy.json"), "--model", str(full),
                   "-o", str(tmp_path / "caps.npy"))
    assert proc.returncode == 2 and "which is not a siglip sidecar" in proc.stderr
    assert (tmp_path / "caps.npy.json").read_text() == "a cat\na dog\n" and not (tmp_path / "caps.npy").exists()
    # a relative --model is recorded absolute, and the same weights by another spelling share a folder
    odd = tmp_path / "odd"
    odd.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(PHOTOS[0], odd / name)
    rel = os.path.relpath(full, tmp_path)
    assert run_cli("embed", "odd", "--model", rel, "--pool", "map", "-o", "e/", cwd=tmp_path).returncode == 0
    proc = run_cli("embed", "odd", "--model", str(full) + "/", "--pool", "map", "-o", "e/", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "siglip_cli", "search", "a cat", str(tmp_path / "e"), "--paths"],
                          capture_output=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == os.fsencode(odd / name) + b"\n"  # the real bytes, for xargs


def test_a_closed_pipe_is_not_a_failed_image(full, photos, tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(f"label {i}" for i in range(3000)))  # output >> a pipe's 64 KB
    proc = subprocess.run(f"{sys.executable} -m siglip_cli classify {photos} --labels-file {tmp_path / 'labels.txt'} "
                          f"--json --model {full} | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True)
    assert proc.stdout.strip() == "141", proc.stderr  # as `cat` does; 1 would say an image failed
    assert proc.stderr == ""
