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


def test_convert_output_is_readable_by_others_and_says_what_it_leaves_out(tmp_path, tiny_ckpt):
    import os
    import stat

    from siglip_cli.convert import convert

    convert(tiny_ckpt, tmp_path / "out")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~mask
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()} == {0o666 & ~mask}
    # a full checkpoint without its tokenizer: converted, and said so
    build_checkpoint(tmp_path / "full", TINY, layout="full", text={**TINY_TEXT, "vocab_size": 600})
    notes = []
    names = convert(tmp_path / "full", tmp_path / "full-out", note=notes.append)
    assert "spiece.model" not in names and len(notes) == 1 and notes[0].startswith("Warning: no tokenizer written")


def test_an_npz_finds_its_tokenizer_beside_it_and_a_hostile_shape_is_one_line(tmp_path):
    pytest.importorskip("timm")
    from spm_files import write_siglip_tokenizer
    from test_bigvision import full_npz

    from siglip_cli.errors import CheckpointError
    from siglip_cli.text import Siglip

    path, _ = full_npz(tmp_path / "bv.npz")
    with pytest.raises(CheckpointError, match="put the checkpoint's tokenizer file beside it"):
        Siglip.load(path, device="cpu")
    # TINY_TEXT's 99 tokens are fewer than the trained tokenizer's: refused as a tokenizer of another model
    write_siglip_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match=r"spiece.model: \d+ tokens, more than the text tower's 99"):
        Siglip.load(path, device="cpu")
    import io
    import zipfile

    member = io.BytesIO()  # an .npy whose header declares a negative size (numpy writes what it is given)
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (-1, 2)})
    bad = tmp_path / "neg.npz"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("img/embedding/kernel.npy", member.getvalue() + bytes(16))
    proc = run_cli("convert", str(bad), "-o", str(tmp_path / "x"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "declares shape [-1, 2]" in proc.stderr
