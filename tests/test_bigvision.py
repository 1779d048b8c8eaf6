"""big_vision `.npz` checkpoints (bigvision.py): names, sizes, numbers and hostile files, all offline.

The vision tower is written by inverting timm's `_load_weights`, and the writer is checked by loading its file
back with timm's own loader; the text tower, `t` and `b` by inverting the names of transformers'
convert_siglip_to_hf.py (tests/npz_files.py). Then our model from the file must compute what timm and
transformers compute from the same weights.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from siglip_cli import bigvision
from siglip_cli.bigvision import NpzTensors, config_from, convert, preprocessor_from
from siglip_cli.checkpoint import ModelSource
from siglip_cli.config import SiglipTextConfig, SiglipVisionConfig
from siglip_cli.errors import CheckpointError
from siglip_cli.layouts import Lazy, for_model
from siglip_cli.model import SiglipVisionModel
from siglip_cli.preprocess import checkpoint_preprocessing
from siglip_cli.text_model import SiglipModel
from siglip_cli.weights import check_shapes, expected_shapes, load_model

from conftest import TINY, TINY_TEXT
from npz_files import randomize, text_arrays, timm_model, timm_state_from_transformers, vision_arrays, write_npz

# (scanned, root): per-layer `encoderblock_{i}` or one scanned `encoderblock`; keys under `img/` or `params/img/`.
LAYOUTS = [pytest.param(scanned, root, id=f"{'scanned' if scanned else 'per-layer'}-{root or 'bare'}")
           for scanned in (False, True) for root in ("", "params/")]


@pytest.fixture(scope="module")
def timm_ref():
    pytest.importorskip("timm")
    return timm_model()


def vision_npz(path: Path, model, scanned: bool = False, root: str = "", heads: int = 4, **kw) -> Path:
    return write_npz(path, vision_arrays(model.state_dict(), heads, root + "img/", scanned), **kw)


def load_ours(path: Path, cls: type = SiglipVisionModel):
    """What the loader does with an .npz: sizes from the shapes, convert, the strict check (headers only), read,
    then torch's own strict load."""
    tensors = NpzTensors(path)
    config = config_from(tensors).part(cls.config_class)
    expected = expected_shapes(cls, config)
    state = for_model(convert(tensors, config), expected)
    check_shapes({k: v.shape for k, v in state.items()}, expected, str(path))
    model = cls(config)
    model.load_state_dict({k: v.read() for k, v in state.items()}, strict=True)
    return model.eval()


def one_line_error(path: Path, load=load_ours) -> str:
    with pytest.raises(CheckpointError) as e:
        load(path)
    message = str(e.value)
    assert "\n" not in message and str(path) in message, message
    return message


def pixels(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7))


# --- the writer, checked by timm; our numbers against timm's -------------------------------------------------

@pytest.mark.parametrize("scanned,root", LAYOUTS)
def test_writer_round_trips_through_timm(tmp_path, timm_ref, scanned, root):
    from timm.models.vision_transformer import _load_weights

    path = vision_npz(tmp_path / "w.npz", timm_ref, scanned, root)
    fresh = timm_model(seed=1)
    assert not torch.equal(fresh.pos_embed, timm_ref.pos_embed)
    _load_weights(fresh, str(path), prefix="" if root else "img/")  # timm finds `params/img/` by itself only
    want = timm_ref.state_dict()
    assert fresh.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("scanned,root", LAYOUTS)
def test_vision_tower_equals_timm(tmp_path, timm_ref, scanned, root):
    ours = load_ours(vision_npz(tmp_path / "v.npz", timm_ref, scanned, root, compressed=scanned))
    x = pixels()
    with torch.no_grad():
        features = timm_ref.forward_features(x)
        torch.testing.assert_close(ours(x), features, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.embed(x, pool="map"), timm_ref.forward_head(features, pre_logits=True),
                                   atol=1e-5, rtol=0)


def test_sizes_and_preprocessing_from_the_shapes(tmp_path, timm_ref):
    tensors = NpzTensors(vision_npz(tmp_path / "v.npz", timm_ref))
    config = config_from(tensors)
    assert config.vision_config == SiglipVisionConfig(**TINY)  # incl. eps 1e-6, gelu_pytorch_tanh, the head
    assert config.text_config is None
    pre = checkpoint_preprocessing(preprocessor_from(tensors), None, "npz")
    assert (pre.image_size, pre.resample, pre.mean, pre.std) == (32, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert pre.rescale_factor == pytest.approx(1 / 255)


def test_patch14_three_heads_no_head(tmp_path):
    """Heads from the (D, h, Dh) kernel (3 here, not a default); image size = grid x patch; no MAPHead_0, no head."""
    pytest.importorskip("timm")
    ref = timm_model(seed=3, img_size=42, patch_size=14, embed_dim=48, num_heads=3, global_pool="avg",
                    fc_norm=False)  # as timm's siglip _gap_ variants
    path = vision_npz(tmp_path / "p14.npz", ref, heads=3)
    config = config_from(NpzTensors(path)).vision_config
    assert (config.num_attention_heads, config.hidden_size, config.patch_size, config.image_size,
            config.vision_use_head) == (3, 48, 14, 42, False)
    x = pixels(size=42)
    with torch.no_grad():
        torch.testing.assert_close(load_ours(path)(x), ref.forward_features(x), atol=1e-5, rtol=0)


def _shapes_only(shapes: dict[str, tuple[int, ...]]) -> dict[str, Lazy]:
    def unread():
        raise AssertionError("read")
    return {k: Lazy(lambda s=s: torch.empty(s, device="meta"), unread) for k, s in shapes.items()}


def test_released_so400m_384_keeps_its_resolution():
    """so400m/14 at 384 px has a 27 x 27 grid (378 px): the released size, as transformers' and timm's configs."""
    d, m = 1152, 4304
    shapes = {"img/embedding/kernel": (14, 14, 3, d), "img/pos_embedding": (1, 27 * 27, d),
              "img/Transformer/encoderblock/LayerNorm_0/scale": (27, d),
              "img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel": (27, d, m),
              "img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel": (27, d, 16, 72)}
    config = config_from(_shapes_only(shapes)).vision_config
    assert (config.image_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) \
        == (384, 27, 16, m)
    shapes["img/pos_embedding"] = (1, 16 * 16, d)
    assert config_from(_shapes_only(shapes)).vision_config.image_size == 224


def test_through_load_model(tmp_path, timm_ref):
    path = vision_npz(tmp_path / "v.npz", timm_ref, scanned=True, root="params/")
    model = load_model(SiglipVisionModel, ModelSource(path, str(path)))
    assert model.preprocessor_config == preprocessor_from(NpzTensors(path))
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x, pool="map"), timm_ref(x), atol=1e-5, rtol=0)


# --- the text tower and the scores, against transformers ---------------------------------------------------

def full_npz(path: Path, scanned: bool = False, root: str = "", head: bool = True):
    """A random transformers SiglipModel (every parameter random) and its big_vision file."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    ref = transformers.SiglipModel(transformers.SiglipConfig(vision_config=TINY, text_config=TINY_TEXT)).eval()
    randomize(ref, 0)
    sd = ref.state_dict()
    arrays = {**vision_arrays(timm_state_from_transformers(sd), 4, root + "img/", scanned),
              **text_arrays(sd, 4, root, scanned)}
    if not head:  # a text tower without a head, and t, b stored as scalars
        arrays = {k: v for k, v in arrays.items() if "txt/head/" not in k}
        arrays[root + "t"], arrays[root + "b"] = arrays[root + "t"].reshape(()), arrays[root + "b"].reshape(())
    return write_npz(path, arrays), ref


def _text_features(ref, ids):
    out = ref.get_text_features(input_ids=ids)
    return getattr(out, "pooler_output", out)


@pytest.mark.parametrize("scanned,root", LAYOUTS)
def test_full_model_equals_transformers(tmp_path, scanned, root):
    path, ref = full_npz(tmp_path / "full.npz", scanned, root)
    config = config_from(NpzTensors(path))
    assert config.text_config == SiglipTextConfig(**{**TINY_TEXT, "bos_token_id": 49406, "eos_token_id": 49407,
                                                     "pad_token_id": 1})  # the npz has no token ids: defaults
    ours = load_ours(path, SiglipModel) if scanned else load_model(SiglipModel, ModelSource(path, str(path)))
    ids = torch.randint(0, TINY_TEXT["vocab_size"], (3, TINY_TEXT["max_position_embeddings"]),
                        generator=torch.Generator().manual_seed(1))
    x = pixels()
    with torch.no_grad():
        want = ref(input_ids=ids, pixel_values=x)
        torch.testing.assert_close(ours.text_embeds(ids), _text_features(ref, ids), atol=1e-5, rtol=0)
        logits, _ = ours(x, ids)
        torch.testing.assert_close(logits, want.logits_per_image, atol=1e-5, rtol=0)
    assert ours.logit_scale.item() == pytest.approx(ref.logit_scale.item())  # t is the log temperature
    assert ours.logit_bias.item() == pytest.approx(ref.logit_bias.item())


def test_text_tower_without_head_is_the_identity(tmp_path):
    """siglip-base-patch16-256-i18n has no txt/head: the text embedding is the last token after the final norm."""
    path, ref = full_npz(tmp_path / "nohead.npz", head=False)
    ours = load_ours(path, SiglipModel)
    ids = torch.randint(0, TINY_TEXT["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref.text_model(input_ids=ids).last_hidden_state[:, -1]
        torch.testing.assert_close(ours.text_embeds(ids), want, atol=1e-5, rtol=0)
    assert ours.logit_scale.shape == (1,) and ours.logit_scale.item() == pytest.approx(ref.logit_scale.item())


# --- laziness: headers until read, each array read once, each tensor its own storage --------------------------

@pytest.mark.parametrize("scanned", [False, True])
def test_headers_only_until_read_then_each_array_once(tmp_path, monkeypatch, scanned):
    path, _ = full_npz(tmp_path / "full.npz", scanned)
    reads = []
    real = NpzTensors._read
    monkeypatch.setattr(NpzTensors, "_read", lambda self, name: reads.append(name) or real(self, name))
    tensors = NpzTensors(path)
    state = convert(tensors, config_from(tensors))
    shapes = {k: v.shape for k, v in state.items()}
    assert reads == [] and "text_model.encoder.layers.1.self_attn.q_proj.weight" in shapes
    values = {k: v.read() for k, v in state.items()}
    assert sorted(reads) == sorted(tensors)  # a scanned array once for all its layers, q/k/v once each
    assert {k: tuple(v.shape) for k, v in values.items()} == shapes
    assert len({v.untyped_storage().data_ptr() for v in values.values()}) == len(values)  # no shared storage
    reads.clear()
    load_ours(path, SiglipVisionModel)
    assert reads and not [n for n in reads if n.startswith(("txt/", "t", "b"))]  # the vision load skips the text


def test_stored_dtypes_read_exactly(tmp_path):
    """float16/64 as stored; big-endian and Fortran-order float32; JAX's bfloat16 (2-byte void)."""
    base = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    bf16 = torch.from_numpy(base).to(torch.bfloat16)
    arrays = {"f16": base.astype(np.float16), "f64": base.astype(np.float64), "big": base.astype(">f4"),
              "fortran": np.asfortranarray(base), "bf16": bf16.view(torch.int16).numpy().view("V2")}
    tensors = NpzTensors(write_npz(tmp_path / "d.npz", arrays))
    f32 = torch.from_numpy(base)
    want = {"f16": (torch.float16, f32.half()), "f64": (torch.float64, f32.double()), "big": (torch.float32, f32),
            "fortran": (torch.float32, f32), "bf16": (torch.bfloat16, bf16)}
    for name, (dtype, value) in want.items():
        assert tensors[name].meta.dtype == dtype and tensors[name].shape == (3, 4)
        assert torch.equal(tensors[name].read(), value), name


# --- hostile files: one line naming the file, nothing executed ----------------------------------------------

class _Payload:
    """Unpickling this creates `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("key", ["img/embedding/kernel", "img/notes"])
@pytest.mark.parametrize("loader", ["ours", "load_model"])
def test_pickled_object_array_is_refused_and_never_run(tmp_path, timm_ref, key, loader):
    marker = tmp_path / "pwned"
    arrays = vision_arrays(timm_ref.state_dict(), 4)
    arrays[key] = np.array([_Payload(marker)], dtype=object)
    path = write_npz(tmp_path / "evil.npz", arrays)  # np.savez pickles object arrays (allow_pickle=True)
    load = load_ours if loader == "ours" else (lambda p: load_model(SiglipVisionModel, p))
    assert "Python objects" in one_line_error(path, load)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as unsafe:  # the payload is live: unpickling it does run
        unsafe[key]
    assert marker.exists()


def _zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("case", ["random", "empty", "npy", "not-npz", "truncated-1", "truncated-100", "half"])
def test_not_an_npz_or_cut_short(tmp_path, timm_ref, case):
    good = vision_npz(tmp_path / "good.npz", timm_ref).read_bytes()
    path = tmp_path / "x.npz"
    if case == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "npy":
        np.save(tmp_path / "a.npy", np.zeros(3, np.float32))
        path.write_bytes((tmp_path / "a.npy").read_bytes())
    elif case == "not-npz":
        _zip_of(path, {"README.txt": b"hello", "img/embedding/kernel.npy": b"\x93NUMPY"})
    else:
        cut = {"truncated-1": 1, "truncated-100": 100, "half": len(good) // 2}[case]
        path.write_bytes(good[:-cut])
    message = one_line_error(path, NpzTensors)
    assert {"random": "not a zip", "empty": "not a zip", "npy": "single .npy", "not-npz": "README.txt"}.get(
        case, "truncated or corrupt") in message


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_corrupt_or_short_member_data(tmp_path, timm_ref):
    arrays = vision_arrays(timm_ref.state_dict(), 4)
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    name = "img/Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel.npy"
    members[name] = members[name][:-40]  # the header promises more bytes than follow
    assert "truncated or corrupt" in one_line_error(_zip_of(tmp_path / "short.npz", members))
    compressed = bytearray(vision_npz(tmp_path / "c.npz", timm_ref, compressed=True).read_bytes())
    middle = len(compressed) // 2
    compressed[middle:middle + 64] = bytes(64)  # deflated data zeroed: a zlib or CRC error when read
    (tmp_path / "c.npz").write_bytes(compressed)
    assert "corrupt" in one_line_error(tmp_path / "c.npz")


@pytest.mark.parametrize("edit,missing,unexpected", [
    ("block", "vision_model.encoder.layers.1.layer_norm1.bias", None),
    ("mlp", "vision_model.encoder.layers.0.mlp.fc2.weight", None),
    ("head-key", "vision_model.head.attention.in_proj_weight", "img/MAPHead_0/MultiHeadDotProductAttention_0/query/"),
    ("extra", None, "img/head/kernel"),
])
def test_missing_or_extra_arrays_are_named(tmp_path, edit, missing, unexpected):
    pytest.importorskip("timm")
    arrays = vision_arrays(timm_model(depth=3).state_dict(), 4)
    if edit == "block":  # a middle layer gone: the depth (3) comes from the highest layer
        arrays = {k: v for k, v in arrays.items() if "encoderblock_1/" not in k}
    elif edit == "mlp":
        del arrays["img/Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel"]
    elif edit == "head-key":
        del arrays["img/MAPHead_0/MultiHeadDotProductAttention_0/key/kernel"]
    else:
        arrays["img/head/kernel"] = np.zeros((32, 10), np.float32)
    path = write_npz(tmp_path / "m.npz", arrays)
    for load in (load_ours, lambda p: load_model(SiglipVisionModel, p)):
        message = one_line_error(path, load)
        assert ("missing keys: " in message) == (missing is not None), message
        assert ("unexpected keys: " in message) == (unexpected is not None), message
        assert all(name in message for name in (missing, unexpected) if name), message


@pytest.mark.parametrize("name,array,expected", [
    ("img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", np.ones((32, 37), np.int32), "stored as <i4"),
    ("img/Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel", np.ones((32, 37), np.int64), "stored as <i8"),
    ("img/notes", np.array(["hello"]), "stored as <U5"),
    ("img/Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel", np.ones((32, 32), np.float32),
     "expected 3 dimensions"),
    ("img/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel", np.ones((32, 32), np.float32),
     "not 3 dimensions"),
    ("img/pos_embedding", np.ones((1, 15, 32), np.float32), "not a square grid"),
    ("img/embedding/kernel", np.ones((8, 8, 3), np.float32), "not 4 dimensions"),
])
def test_wrong_dtype_or_shape_is_one_line(tmp_path, timm_ref, name, array, expected):
    arrays = vision_arrays(timm_ref.state_dict(), 4)
    arrays[name] = array
    assert expected in one_line_error(write_npz(tmp_path / "bad.npz", arrays))


def test_layout_is_recognised_by_its_names():
    assert bigvision.matches(["img/embedding/kernel", "t"]) and bigvision.matches(["params/img/embedding/kernel"])
    assert not bigvision.matches(["vision_model.embeddings.patch_embedding.weight", "embedding/kernel"])
    assert bigvision.LAYOUT.name == "big_vision" and bigvision.LAYOUT.convert is convert
