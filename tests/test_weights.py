import json
from pathlib import Path
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.errors import CheckpointError, ModelNotFoundError
from siglip_cli.hub import resolve_model
from siglip_cli.layouts import convert_transformers, for_model

from conftest import TINY, build_checkpoint


@pytest.mark.parametrize("name, key", [
    ("vision_model.encoder.layers.0.mlp.fc1.weight", "vision_model.encoder.layers.0.mlp.fc1.weight"),
    ("encoder.layers.0.mlp.fc1.weight", "vision_model.encoder.layers.0.mlp.fc1.weight"),
    ("head.probe", "vision_model.head.probe"),
    ("text_model.embeddings.token_embedding.weight", None),
    ("logit_scale", None),
    ("logit_bias", None),
    ("vision_model.embeddings.position_ids", None),
    ("something.else", "something.else"),
])
def test_map_checkpoint_key(name, key):
    # One name through the whole-dict conversion, then only the parts a vision model has.
    vision_keys = SiglipVisionModel(SiglipVisionConfig(**TINY)).state_dict()
    assert list(for_model(convert_transformers({name: 0}), vision_keys)) == ([key] if key else [])


def map_checkpoint_key(name: str) -> str | None:
    """A transformers name -> the vision model's key (None: not the vision tower's), as test_map_checkpoint_key
    shows the conversion does it."""
    return next(iter(for_model(convert_transformers({name: 0}), ["vision_model.x"])), None)


def _assert_same_weights(model: SiglipVisionModel, ref: torch.nn.Module):
    ref_state = {f"vision_model.{k}": v for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
    ours = model.state_dict()
    assert set(ours) == set(ref_state)
    for k, v in ref_state.items():
        assert torch.equal(ours[k], v), k


@pytest.mark.parametrize("layout", ["full", "vision4", "vision5"])
@pytest.mark.parametrize("head", [True, False])
def test_every_layout_loads_exactly(tmp_path, layout, head):
    ref = build_checkpoint(tmp_path, TINY, layout=layout, head=head)
    model = SiglipVisionModel.from_pretrained(str(tmp_path))
    _assert_same_weights(model, ref)
    assert model.has_head is head
    assert model.preprocessor_config["resample"] == 3
    assert model.name_or_path == str(tmp_path) and not model.training


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_weights_are_memory_mapped_from_the_file_not_copied(tmp_path):
    build_checkpoint(tmp_path / "ckpt", TINY, layout="vision5")
    model = SiglipVisionModel.from_pretrained(str(tmp_path / "ckpt"))
    weights_file = str((tmp_path / "ckpt" / "model.safetensors").resolve())
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == weights_file:
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            regions.append((lo, hi))
    assert regions, "model.safetensors is not mapped into memory"
    params = dict(model.named_parameters())
    inside = [name for name, p in params.items() if any(lo <= p.data_ptr() < hi for lo, hi in regions)]
    assert sorted(inside) == sorted(params)


def test_text_tower_is_never_read_from_a_single_file(tmp_path, monkeypatch):
    build_checkpoint(tmp_path, TINY, layout="full")
    from safetensors import safe_open as real_safe_open

    read = []

    class Recording:
        def __init__(self, *a, **k):
            self._f = real_safe_open(*a, **k)

        def __enter__(self):
            self._inner = self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def keys(self):
            return self._inner.keys()

        def get_tensor(self, name):
            read.append(name)
            return self._inner.get_tensor(name)

        def get_slice(self, name):  # the header's dtype and shape, no data
            read.append(name)
            return self._inner.get_slice(name)

    monkeypatch.setattr("safetensors.safe_open", Recording)
    SiglipVisionModel.from_pretrained(str(tmp_path))
    all_names = load_file(tmp_path / "model.safetensors").keys()
    assert any(n.startswith("text_model.") for n in all_names)
    assert read and all(n.startswith("vision_model.") for n in read)


def test_text_only_shards_are_never_opened(patch14_full_ckpt, tmp_path):
    src, ref = patch14_full_ckpt
    ckpt = tmp_path / "ckpt"
    shutil.copytree(src, ckpt)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    shards = {}
    for name, shard in index.items():
        shards.setdefault(shard, set()).add(name.split(".")[0])
    text_only = [s for s, roots in shards.items() if roots <= {"text_model", "logit_scale", "logit_bias"}]
    assert text_only, "the fixture should put some text tensors in shards of their own"
    for s in text_only:
        (ckpt / s).unlink()
    _assert_same_weights(SiglipVisionModel.from_pretrained(str(ckpt)), ref)


def _rewrite(path, edit):
    state = load_file(path / "model.safetensors")
    edit(state)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_keys_are_named(tmp_path):
    build_checkpoint(tmp_path, TINY)
    _rewrite(tmp_path, lambda s: s.pop("post_layernorm.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys: vision_model\.post_layernorm\.weight$"):
        SiglipVisionModel.from_pretrained(str(tmp_path))


def test_unexpected_keys_are_named(tmp_path):
    build_checkpoint(tmp_path, TINY)
    _rewrite(tmp_path, lambda s: s.update({"encoder.layers.7.extra": torch.zeros(2), "mystery": torch.zeros(1)}))
    with pytest.raises(CheckpointError,
                       match=r"unexpected keys: mystery, vision_model\.encoder\.layers\.7\.extra$"):
        SiglipVisionModel.from_pretrained(str(tmp_path))


def test_shapes_that_do_not_fit_the_config_are_named(tmp_path):
    build_checkpoint(tmp_path, TINY)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch: vision_model\.encoder\.layers\.0\.mlp\.fc1\.bias "
                                              r"\[37\] \(config wants \[40\]\)"):
        SiglipVisionModel.from_pretrained(str(tmp_path))


def test_pickle_weights_are_never_loaded(tmp_path):
    build_checkpoint(tmp_path, TINY)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model\.bin\), which siglip never loads"):
        SiglipVisionModel.from_pretrained(str(tmp_path))


def test_truncated_safetensors_names_the_file(tmp_path):
    build_checkpoint(tmp_path, TINY)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated or corrupt safetensors file"):
        SiglipVisionModel.from_pretrained(str(tmp_path))


def test_naflex_checkpoint_is_refused(tmp_path):
    build_checkpoint(tmp_path, TINY)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2", "vision_config": {}}))
    with pytest.raises(CheckpointError, match="NaFlex"):
        SiglipVisionModel.from_pretrained(str(tmp_path))


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json: not a Hugging Face checkpoint directory"):
        SiglipVisionModel.from_pretrained(str(tmp_path))


def test_unknown_model_names(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError, match=r"no such directory, and not a Hugging Face model id"):
        resolve_model("./not/here")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(None, offline=True)
    msg = str(e.value)
    assert "google/siglip-base-patch16-224 is not in the Hugging Face cache and downloads are off (--offline)" in msg
    assert "siglip download-weights google/siglip-base-patch16-224" in msg and "--random-init" in msg


def test_hub_id_in_the_cache_resolves_to_its_snapshot(tmp_path, monkeypatch):
    """The documented cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-siglip"
    snapshot = repo / "snapshots" / commit
    ref = build_checkpoint(snapshot, TINY)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = resolve_model("acme/tiny-siglip")
    assert (source.path, source.name, source.revision) == (snapshot, "acme/tiny-siglip", commit)
    assert resolve_model(f"acme/tiny-siglip@{commit}").path == snapshot
    model = SiglipVisionModel.from_pretrained("acme/tiny-siglip")
    assert model.revision == commit
    _assert_same_weights(model, ref)
    with pytest.raises(ModelNotFoundError, match=r"acme/tiny-siglip@v2 is not in the Hugging Face cache and "
                                                 r"downloads are off \(--offline\): run "
                                                 r"`siglip download-weights acme/tiny-siglip --revision v2`"):
        resolve_model("acme/tiny-siglip@v2", offline=True)


SIZES = {  # the released vision towers' config.json values (vision_config)
    "base-224": dict(),
    "base-512": dict(image_size=512),
    "large-256": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                      image_size=256),
    "so400m-384": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27,
                       image_size=384, patch_size=14),
    "so400m-224-nohead": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                              num_hidden_layers=27, image_size=224, patch_size=14, vision_use_head=False),
    "siglip2-giant-384": dict(hidden_size=1536, intermediate_size=6144, num_attention_heads=16,
                              num_hidden_layers=40, image_size=384, patch_size=16),
}


@pytest.mark.parametrize("size", SIZES)
def test_every_siglip_size_has_transformers_names_and_shapes(size):
    import transformers

    from siglip_cli import SiglipVisionConfig

    with torch.device("meta"):
        ref = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIZES[size]))
        ours = SiglipVisionModel(SiglipVisionConfig.from_hf_dict({"model_type": "siglip_vision_model",
                                                                   **SIZES[size]}))
    expected = {map_checkpoint_key(k): tuple(v.shape) for k, v in ref.state_dict().items()}
    expected.pop(None, None)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected


def test_half_and_double_precision_weights_load_as_float32(tmp_path):
    build_checkpoint(tmp_path, TINY)
    state = load_file(tmp_path / "model.safetensors")
    dtypes = [torch.float16, torch.bfloat16, torch.float64]
    stored = {k: v.to(dtypes[i % 3]) for i, (k, v) in enumerate(sorted(state.items()))}
    save_file(stored, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = SiglipVisionModel.from_pretrained(str(tmp_path))
    ours = model.state_dict()
    assert {v.dtype for v in ours.values()} == {torch.float32}
    for k, v in stored.items():
        assert torch.equal(ours[f"vision_model.{k}"], v.float()), k


def test_shards_in_the_hf_cache_are_symlinks_out_of_the_folder_and_load(patch14_full_ckpt, tmp_path):
    # The cache keeps each file in blobs/ and links snapshots/<commit>/<name> to ../../blobs/<hash>: the shard
    # names are checked lexically (inside the folder), not where the links lead.
    src, ref = patch14_full_ckpt
    snapshot, blobs = tmp_path / "snapshots" / "abc", tmp_path / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(src.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snapshot / f.name).symlink_to(f"../../blobs/blob{i}")
    _assert_same_weights(SiglipVisionModel.from_pretrained(str(snapshot)), ref)
    # A shard in a subfolder is inside the checkpoint too.
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    (snapshot / "sub").mkdir()
    for shard in set(index["weight_map"].values()):
        blob = (snapshot / shard).readlink()
        (snapshot / shard).unlink()
        (snapshot / "sub" / shard).symlink_to(".." / blob)
    index["weight_map"] = {k: f"sub/{v}" for k, v in index["weight_map"].items()}
    (snapshot / "model.safetensors.index.json").unlink()
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    _assert_same_weights(SiglipVisionModel.from_pretrained(str(snapshot)), ref)


def test_full_checkpoint_config_keeps_the_text_tower(tmp_path):
    from conftest import TINY_TEXT
    from siglip_cli.checkpoint import read_config

    build_checkpoint(tmp_path, TINY, layout="full")
    text = read_config(tmp_path).text_config
    assert {k: getattr(text, k) for k in TINY_TEXT} == TINY_TEXT
    assert text.projection_size == TINY_TEXT["hidden_size"]


def test_a_foreign_config_is_refused_before_any_weight_is_read(tmp_path):
    build_checkpoint(tmp_path, TINY)
    # (A timm config.json, whose `architecture` names the model, is timm's layout: tests/test_layouts.py.)
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "resnet50", "num_classes": 0}))
    with pytest.raises(CheckpointError, match=r"config.json: not a SigLIP config: none of its keys \(model_name, "
                                              r"num_classes\) is a SigLIP one"):
        SiglipVisionModel.from_pretrained(str(tmp_path))


def test_loading_and_checks_take_the_model_class(tmp_path):
    """The target model's own keys decide what is read: a class holding only the patch embedding gets those
    tensors, and the strict check names the rest of the checkpoint as unexpected."""
    from torch import nn

    from siglip_cli.model import SiglipVisionEmbeddings
    from siglip_cli.weights import check_checkpoint, load_model

    class PatchEmbedding(nn.Module):
        config_class = SiglipVisionModel.config_class

        def __init__(self, config):
            super().__init__()
            self.vision_model = nn.Module()
            self.vision_model.embeddings = SiglipVisionEmbeddings(config)

    ref = build_checkpoint(tmp_path, TINY, layout="full")
    with pytest.raises(CheckpointError, match=r"unexpected keys: vision_model\.encoder\.layers\.0\."):
        check_checkpoint(tmp_path, PatchEmbedding)
    assert check_checkpoint(tmp_path, SiglipVisionModel) == SiglipVisionConfig(**TINY)
    model = load_model(SiglipVisionModel, tmp_path)
    _assert_same_weights(model, ref)


def test_a_conversion_can_transform_tensors_and_nothing_is_read_until_needed():
    from siglip_cli.layouts import Lazy, derive

    reads = []
    qkv = Lazy(lambda: torch.empty(6, 4, device="meta"), lambda: reads.append("qkv") or torch.arange(24.0).view(6, 4))
    q, k, v = (derive(lambda t, i=i: t.chunk(3)[i], qkv) for i in range(3))  # a fused qkv, split
    kernel = derive(lambda t: t.t(), k)  # and a transposed kernel
    assert (q.shape, kernel.shape) == ((2, 4), (4, 2)) and reads == []  # shapes from the header alone
    assert torch.equal(kernel.read(), torch.arange(8.0, 16.0).view(2, 4).t()) and reads == ["qkv"]


def test_embedder_load_resolves_names_with_the_hub_options(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from siglip_cli import Embedder

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError, match=r"acme/none is not in the Hugging Face cache and downloads are off"):
        Embedder.load("acme/none", offline=True)
    build_checkpoint(tmp_path / "ckpt", TINY)
    assert Embedder.load(tmp_path / "ckpt", offline=True).model.name_or_path == str(tmp_path / "ckpt")
