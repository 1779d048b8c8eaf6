"""The text half through the Python API (text.py): text embeddings and zero-shot scores equal transformers',
end to end from the tokenizer files, for a SigLIP checkpoint and a SigLIP 2 fixed-resolution one."""

import json

import numpy as np
import pytest
import torch

from siglip_cli.errors import CheckpointError, UsageError
from siglip_cli.text import Siglip, prompts

from conftest import PHOTOS, TINY, TINY_TEXT, build_checkpoint
from spm_files import TRICKY_TEXTS

TEXT = {**TINY_TEXT, "vocab_size": 600}  # room for the trained tokenizers' pieces (Gemma's: 500, bytes included)
# SigLIP 2 style: a text width (48) other than the image embedding's (32), so the head projects.
TEXT2 = {**TEXT, "hidden_size": 48, "num_attention_heads": 3, "projection_size": 32}


def _features(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    import transformers

    path = tmp_path_factory.mktemp("siglip1")
    build_checkpoint(path, TINY, layout="full", text=TEXT, tokenizer="siglip")
    return path, transformers.SiglipModel.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    import transformers

    path = tmp_path_factory.mktemp("siglip2")
    build_checkpoint(path, TINY, layout="full", text=TEXT2, tokenizer="gemma")
    return path, transformers.SiglipModel.from_pretrained(path).eval()


def test_text_embeddings_equal_transformers_from_its_own_tokenizer(v1):
    import transformers

    path, ref = v1
    texts = [t for t in TRICKY_TEXTS] + ["a photo of a cat", "A Photo Of A Cat!"]
    ours = Siglip.load(path, device="cpu").embed_texts(texts)
    tok = transformers.SiglipTokenizer(vocab_file=str(path / "spiece.model"))
    ids = tok(texts, padding="max_length", max_length=TEXT["max_position_embeddings"], truncation=True,
              return_tensors="pt").input_ids
    with torch.inference_mode():
        theirs = _features(ref.get_text_features(input_ids=ids)).numpy()
    assert ours.shape == (len(texts), 32) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    # canonicalisation: case and punctuation do not change a SigLIP 1 embedding
    np.testing.assert_allclose(ours[-1], ours[-2], atol=1e-6)


def test_siglip2_text_embeddings_and_scores_equal_transformers(v2):
    path, ref = v2
    s = Siglip.load(path, device="cpu")
    assert s.tokenizer.kind == "gemma" and s.tokenizer.pad_id == 0
    texts = ["a photo of a cat", "A PHOTO of a CAT", "东京 🐱", ""]
    ids = torch.from_numpy(s.tokenizer(texts))
    ours = s.embed_texts(texts)
    pixels = np.stack([s.embedder().decoder(p) for p in PHOTOS[:3]])
    with torch.inference_mode():
        theirs = _features(ref.get_text_features(input_ids=ids)).numpy()
        out = ref(input_ids=ids, pixel_values=torch.from_numpy(pixels))
    assert ours.shape == (4, 32)  # the head projects the 48-wide text tower to the image embedding's 32
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours[0], ours[1], atol=1e-6)  # SigLIP 2 lowercases
    logits, probs = s.scores(s.embedder().embed_pixels(pixels), ours)
    np.testing.assert_allclose(logits, out.logits_per_image.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(probs, out.logits_per_image.sigmoid().numpy(), atol=1e-5)


def test_classify_embeds_the_labels_once_and_ranks_by_sigmoid(v1, tmp_path):
    path, ref = v1
    s = Siglip.load(path, device="cpu")
    calls = []
    s.model.text_model.register_forward_hook(lambda m, a, out: calls.append(a[0].shape))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    labels = ["cat", "dog", "red car"]
    rows = list(s.classify([*PHOTOS, bad], labels, batch_size=2))
    assert calls == [(3, TEXT["max_position_embeddings"])]  # one pass of 3 prompts for 6 images
    assert [r.source for r in rows] == [str(p) for p in [*PHOTOS, bad]]
    assert rows[-1].error and rows[-1].probabilities is None
    texts = s.embed_texts(prompts(labels))
    images = s.embedder().embed(PHOTOS)
    logits, probs = s.scores(images, texts)
    for r, p, lg in zip(rows, probs, logits):
        np.testing.assert_allclose(r.probabilities, p, atol=1e-6)
        np.testing.assert_allclose(r.probabilities, 1 / (1 + np.exp(-lg)), atol=1e-6)
        ranked = r.ranked()
        assert [label for label, _ in ranked] == [labels[i] for i in np.argsort(-p, kind="stable")]
        assert all(a[1] >= b[1] for a, b in zip(ranked, ranked[1:]))
    # independent sigmoid probabilities: nothing makes them sum to 1
    assert not np.allclose(probs.sum(axis=1), 1)


def test_prompts_are_checked():
    assert prompts(["cat", "red car"]) == ["a photo of a cat.", "a photo of a red car."]
    assert prompts(["{x}"], "{}") == ["{x}"]
    for labels, template, message in [([], "{}", "no labels"), (["a", "a"], "{}", "given twice"),
                                      (["a", " "], "{}", "an empty label"), (["a"], "a photo", "must contain {}"),
                                      (["a"], "{} {}", "must contain {} once")]:
        with pytest.raises(UsageError, match=message):
            prompts(labels, template)


def test_vision_only_checkpoint_does_images_and_refuses_text_in_one_line(tiny_ckpt):
    s = Siglip.load(tiny_ckpt, device="cpu")
    assert s.model is None and s.embedder().embed(PHOTOS[:1]).shape == (1, 32)
    with pytest.raises(CheckpointError, match="this checkpoint has no text tower") as e:
        s.embed_texts(["a cat"])
    assert "\n" not in str(e.value)


def test_a_tokenizer_larger_than_the_text_tower_is_refused(tmp_path):
    build_checkpoint(tmp_path, TINY, layout="full", tokenizer="siglip")  # TINY_TEXT: 99 tokens
    with pytest.raises(CheckpointError, match=r"more than the text tower's 99 \(config.json vocab_size\)"):
        Siglip.load(tmp_path, device="cpu")


def test_a_full_checkpoint_without_tokenizer_files_names_them(tmp_path):
    build_checkpoint(tmp_path, TINY, layout="full", text=TEXT)
    with pytest.raises(CheckpointError, match=r"no tokenizer \(spiece.model, or SigLIP 2's tokenizer.model\) for "
                                              r".*: put the checkpoint's tokenizer file beside it"):
        Siglip.load(tmp_path, device="cpu")
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["vocab_size"] == 600


def test_the_fingerprint_tells_a_fine_tune_from_its_base_and_not_a_copy(tmp_path):
    import shutil
    import struct

    from siglip_cli.model import SiglipVisionModel

    def fingerprint(folder):
        return SiglipVisionModel.from_pretrained(str(folder)).fingerprint

    base, copy, tuned = tmp_path / "base", tmp_path / "copy", tmp_path / "tuned"
    build_checkpoint(base, {**TINY, "num_hidden_layers": 6})  # big enough for tensors past the first/last 64 KiB
    shutil.copytree(base, copy)
    shutil.copytree(base, tuned)
    weights = tuned / "model.safetensors"
    data = bytearray(weights.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    # a vision tensor wholly inside the file's middle, changed in place (the header stays byte for byte), as a
    # merged LoRA
    name, (start, end) = next((k, v["data_offsets"]) for k, v in header.items() if k != "__metadata__"
                              and 8 + n + v["data_offsets"][0] > 1 << 16
                              and 8 + n + v["data_offsets"][1] < len(data) - (1 << 16) and "weight" in k)
    view = np.frombuffer(data, np.float32, (end - start) // 4, 8 + n + start).copy() * 0.5
    data[8 + n + start:8 + n + end] = view.tobytes()
    weights.write_bytes(bytes(data))
    assert fingerprint(copy) == fingerprint(base) != fingerprint(tuned), name
