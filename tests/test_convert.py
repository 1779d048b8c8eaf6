"""siglip convert: any layout siglip reads -> a transformers folder that transformers itself loads, equal outputs."""

import json

import numpy as np
import pytest
import torch

from siglip_cli.model import SiglipVisionModel
from siglip_cli.text_model import SiglipModel

from conftest import TINY, TINY_TEXT, build_checkpoint, run_cli


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_a_full_checkpoint_round_trips_through_transformers(tmp_path):
    import transformers

    src = tmp_path / "src"
    build_checkpoint(src, TINY, layout="full", text={**TINY_TEXT, "vocab_size": 600}, tokenizer="siglip")
    proc = run_cli("convert", str(src), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json",
                                                     "spiece.model", "tokenizer_config.json"]
    assert proc.stderr.strip() == f"wrote {out}: " + ", ".join(sorted(p.name for p in out.iterdir()))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["SiglipModel"]
    ref = transformers.SiglipModel.from_pretrained(src).eval()
    theirs = transformers.SiglipModel.from_pretrained(out).eval()
    ids = torch.randint(0, 600, (2, TINY_TEXT["max_position_embeddings"]), generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(ref(input_ids=ids, pixel_values=pixels).logits_per_image,
                                   theirs(input_ids=ids, pixel_values=pixels).logits_per_image, atol=0, rtol=0)
    ours = SiglipModel.from_pretrained(str(out))
    with torch.inference_mode():
        torch.testing.assert_close(ours(pixels, ids)[0], ref(input_ids=ids, pixel_values=pixels).logits_per_image,
                                   atol=1e-4, rtol=1e-4)
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert list(processor.image_mean) == [0.5] * 3 and processor.size == {"height": 32, "width": 32}


def test_a_vision_only_checkpoint_converts_to_siglip_vision_model(tmp_path):
    import transformers

    ref = build_checkpoint(tmp_path / "src", TINY, layout="vision4")
    proc = run_cli("convert", str(tmp_path / "src"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    theirs = transformers.SiglipVisionModel.from_pretrained(tmp_path / "out").eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        np.testing.assert_array_equal(_features(theirs(pixel_values=pixels)).numpy(),
                                      _features(ref(pixel_values=pixels)).numpy())
    assert SiglipVisionModel.from_pretrained(str(tmp_path / "out")).config.hidden_size == 32


def test_convert_never_writes_over_a_folder_with_files(tmp_path, tiny_ckpt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("convert", str(tiny_ckpt), "-o", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"Error: output {out} already exists and is not an empty folder: choose a new folder"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left behind


@pytest.mark.parametrize("spec", ["missing-folder/", "./nothing.npz"])
def test_convert_names_a_missing_source(tmp_path, spec):
    proc = run_cli("convert", spec, "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no such directory" in proc.stderr


def test_a_timm_folder_converts_to_what_transformers_loads_with_timms_numbers(tmp_path):
    pytest.importorskip("timm")
    from test_layouts import save_timm, timm_model, timm_outputs

    import transformers

    model = timm_model()
    save_timm(model, tmp_path / "timm")
    proc = run_cli("convert", str(tmp_path / "timm"), "-o", str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    theirs = transformers.SiglipVisionModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    features, pooled = timm_outputs(model, x)
    with torch.inference_mode():
        out = theirs(pixel_values=x)
    torch.testing.assert_close(out.last_hidden_state, features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output, pooled, atol=1e-5, rtol=1e-5)
    prep = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert prep["image_mean"] == [0.5] * 3 and prep["resample"] == 3  # SigLIP's, from timm's pretrained_cfg


def test_a_big_vision_npz_converts_to_a_full_transformers_siglip(tmp_path):
    pytest.importorskip("timm")
    from test_bigvision import full_npz

    import transformers

    path, ref = full_npz(tmp_path / "bv.npz")
    proc = run_cli("convert", str(path), "-o", str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    theirs = transformers.SiglipModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, TINY_TEXT["vocab_size"], (2, TINY_TEXT["max_position_embeddings"]),
                        generator=torch.Generator().manual_seed(4))
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(theirs(input_ids=ids, pixel_values=pixels).logits_per_image,
                                   ref(input_ids=ids, pixel_values=pixels).logits_per_image, atol=1e-5, rtol=1e-5)
