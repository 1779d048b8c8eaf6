"""Our embeddings equal transformers' SiglipVisionModel for the same checkpoint, through the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from siglip_cli.cli import app
from siglip_cli.writers import read_embeddings

from conftest import PATCH14, PHOTOS, TINY, build_checkpoint, run_cli

TOL = 1e-4


def reference(ref, photos, size, pool):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    proc = SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pixels = proc([Image.open(p) for p in photos], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = ref(pixel_values=pixels, interpolate_pos_encoding=size != ref.config.image_size)
    return (out.pooler_output if pool == "map" else out.last_hidden_state).numpy()


def embed_cli(ckpt, photos, out, *extra):
    # --exact-decode: these models' inputs are so small (16-64 px) that every photo would be draft-decoded.
    result = CliRunner().invoke(app, ["embed", *map(str, photos), "--model", str(ckpt), "-o", str(out),
                                      "--exact-decode", *extra])
    assert result.exit_code == 0, result.output
    return read_embeddings(out)[0]


CASES = {
    "full-sharded-patch14": dict(vision=PATCH14, layout="full", shard_size="20KB"),
    "vision4-tiny": dict(vision=TINY, layout="vision4"),
    "vision5-tiny": dict(vision=TINY, layout="vision5"),
    "vision5-patch14-nohead": dict(vision=PATCH14, layout="vision5", head=False),
    "full-tiny-nohead": dict(vision=TINY, layout="full", head=False),
}


@pytest.mark.parametrize("case", CASES)
def test_patch_and_pooled_embeddings_match_transformers(case, tmp_path):
    spec = CASES[case]
    ckpt = tmp_path / "ckpt"
    ref = build_checkpoint(ckpt, **spec, seed=7)
    size = spec["vision"]["image_size"]
    patches = embed_cli(ckpt, PHOTOS, tmp_path / "p.npy")
    expected = reference(ref, PHOTOS, size, "none")
    assert patches.shape == expected.shape == (len(PHOTOS), (size // spec["vision"]["patch_size"]) ** 2,
                                               spec["vision"]["hidden_size"])
    assert np.abs(patches - expected).max() <= TOL
    if spec.get("head", True):
        pooled = embed_cli(ckpt, PHOTOS, tmp_path / "m.safetensors", "--pool", "map")
        expected = reference(ref, PHOTOS, size, "map")
        assert pooled.shape == (len(PHOTOS), spec["vision"]["hidden_size"])
        assert np.abs(pooled - expected).max() <= TOL
    mean = embed_cli(ckpt, PHOTOS[:2], tmp_path / "mean.npy", "--pool", "mean")
    assert np.abs(mean - reference(ref, PHOTOS[:2], size, "none").mean(1)).max() <= TOL


@pytest.mark.parametrize("vision, size", [(TINY, 64), (TINY, 16), (PATCH14, 56)])
def test_other_resolutions_match_interpolate_pos_encoding(vision, size, tmp_path):
    ref = build_checkpoint(tmp_path / "ckpt", vision, seed=3)
    got = embed_cli(tmp_path / "ckpt", PHOTOS[:2], tmp_path / "o.npy", "--image-size", str(size), "--pool", "map")
    assert np.abs(got - reference(ref, PHOTOS[:2], size, "map")).max() <= TOL
    patches = embed_cli(tmp_path / "ckpt", PHOTOS[:1], tmp_path / "p.npy", "--image-size", str(size))
    assert patches.shape == ((size // vision["patch_size"]) ** 2, vision["hidden_size"])
    assert np.abs(patches - reference(ref, PHOTOS[:1], size, "none")[0]).max() <= TOL


def test_base_config_matches_transformers_through_a_real_subprocess(base_ckpt, tmp_path):
    ckpt, ref = base_ckpt
    photos = PHOTOS[:2]  # 384 px: under 3 x 224, so the default decode is the exact one
    for pool, out in (("none", tmp_path / "patches.npy"), ("map", tmp_path / "pooled.npy")):
        proc = run_cli("embed", *map(str, photos), "--model", str(ckpt), "--pool", pool, "-o", str(out))
        assert proc.returncode == 0, proc.stderr
        got = np.load(out)
        expected = reference(ref, photos, 224, pool)
        assert got.shape == ((2, 196, 768) if pool == "none" else (2, 768))
        assert np.abs(got - expected).max() <= TOL
