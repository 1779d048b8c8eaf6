import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.embed import Embedder
from siglip_cli.errors import UsageError
from siglip_cli.model import LayerNorm, SiglipEncoderLayer, SiglipMLP
from siglip_cli.precision import (FastMLP, FusedEncoderLayer, TanhGELU, fused_cpu_bf16, quantize_int8, set_precision,
                                  to_dtype, use_fast_gelu)

from conftest import SAMPLES, TINY

PHOTOS = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
needs_bf16_kernels = pytest.mark.skipif(not fused_cpu_bf16(), reason="this CPU's oneDNN has no bf16 matmul")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


@pytest.mark.parametrize("shape", [(2, 196, 3072), (5, 37), (3, 1), (7,), (5, 0), (0,)])
def test_fast_tanh_gelu_equals_torch_gelu(shape):
    x = torch.randn(shape) * 4
    with torch.inference_mode():
        fast = TanhGELU()(x)
    assert fast.shape == x.shape
    torch.testing.assert_close(fast, F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-6)
    if x.numel():
        assert not torch.equal(fast, F.gelu(x))  # it is the tanh approximation, not erf


def test_fast_gelu_leaves_its_input_alone_and_handles_views():
    x = torch.randn(4, 6)
    before = x.clone()
    with torch.inference_mode():
        y = TanhGELU()(x.t())  # non-contiguous view
    assert torch.equal(x, before)
    torch.testing.assert_close(y, F.gelu(x.t(), approximate="tanh"), atol=1e-6, rtol=1e-6)


def test_gelu_with_autograd_still_has_gradients():
    x = torch.randn(3, 5, requires_grad=True)
    TanhGELU()(x).sum().backward()
    ref = x.detach().clone().requires_grad_()
    F.gelu(ref, approximate="tanh").sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_bfloat16_keeps_layernorm_in_float32_and_stays_close():
    cfg = SiglipVisionConfig(**TINY)
    exact = SiglipVisionModel.random_init(cfg, seed=1)
    half = to_dtype(SiglipVisionModel.random_init(cfg, seed=1), "bfloat16")
    norms = [m for m in half.modules() if isinstance(m, LayerNorm)]
    assert len(norms) == 2 * cfg.num_hidden_layers + 2  # two per layer, post_layernorm, the head's
    assert all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    linears = [m for m in half.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert half.vision_model.head.probe.dtype == torch.bfloat16
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        a, b = exact.embed(x, "map"), half.embed(x, "map")
        patches = half(x)
    assert b.dtype == torch.bfloat16 and patches.dtype == torch.bfloat16
    assert F.cosine_similarity(a, b.float()).min() > 0.99
    assert not torch.equal(a, b.float())


def test_layernorm_in_half_precision_is_computed_in_float32():
    ln = LayerNorm(64, eps=1e-6)
    x = (torch.randn(4, 64) * 300 + 1000).to(torch.float16)  # fp16 sums of squares would overflow
    y = ln(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), F.layer_norm(x.float(), (64,), eps=1e-6), atol=2e-3, rtol=2e-3)


def test_int8_replaces_every_linear_and_is_close_on_real_photos(tmp_path):
    cfg = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                             num_hidden_layers=2, image_size=224, patch_size=16)
    model = SiglipVisionModel.random_init(cfg)
    exact = Embedder(model, Embedder.load(random_init=True).preprocessing, pool="none", device="cpu")
    a = exact.embed(PHOTOS)
    q = quantize_int8(SiglipVisionModel.random_init(cfg))
    assert not any(type(m) is nn.Linear for m in q.vision_model.encoder.modules())
    assert q.vision_model.encoder.layers[0].self_attn.q_proj.weight().dtype == torch.qint8
    b = Embedder(q, exact.preprocessing, pool="none", device="cpu").embed(PHOTOS)
    assert a.shape == b.shape == (len(PHOTOS), 196, 768)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() >= 0.995
    assert np.abs(a - b).max() > 1e-4  # approximate, and really quantized


def test_precision_combinations_that_cannot_work_are_usage_errors():
    model = SiglipVisionModel.random_init(SiglipVisionConfig(**TINY))
    with pytest.raises(UsageError, match="--quantize int8 runs on the CPU only, not cuda"):
        set_precision(model, "float32", "int8", torch.device("cuda"))
    with pytest.raises(UsageError, match="do not combine"):
        set_precision(model, "bfloat16", "int8", torch.device("cpu"))
    with pytest.raises(UsageError, match="unknown --dtype 'float8'"):
        set_precision(model, "float8", "none", torch.device("cpu"))
    with pytest.raises(UsageError, match="unknown --quantize 'int4'"):
        set_precision(model, "float32", "int4", torch.device("cpu"))


def test_in_place_gelu_never_overwrites_a_traced_tensor():
    cfg = SiglipVisionConfig(**TINY)
    model = use_fast_gelu(SiglipVisionModel.random_init(cfg))
    trace: dict = {}
    with torch.inference_mode():
        model.vision_model(torch.randn(1, 3, 32, 32), trace=trace)
        untraced = model.vision_model(torch.randn(1, 3, 32, 32))
    assert untraced.shape == (1, 16, 32)
    torch.testing.assert_close(trace["gelu"], F.gelu(trace["fc1"], approximate="tanh"), atol=1e-6, rtol=1e-6)
    assert not torch.equal(trace["gelu"], trace["fc1"])


def test_forward_hooks_on_fc1_see_fc1s_output_not_the_gelu():
    model = use_fast_gelu(SiglipVisionModel.random_init(SiglipVisionConfig(**TINY)))
    mlp = model.vision_model.encoder.layers[0].mlp
    seen = {}
    mlp.fc1.register_forward_hook(lambda module, args, out: seen.update(fc1_in=args[0], fc1_out=out))
    with torch.inference_mode():
        model(torch.randn(1, 3, 32, 32))
        expected = F.linear(seen["fc1_in"], mlp.fc1.weight, mlp.fc1.bias)
    torch.testing.assert_close(seen["fc1_out"], expected)


@pytest.mark.parametrize("dtype, quantize", [("float32", "none"), ("bfloat16", "none"), ("float32", "int8")])
def test_set_precision_swaps_in_the_fast_gelu_keeping_the_weights(dtype, quantize):
    cfg = SiglipVisionConfig(**TINY)
    plain = SiglipVisionModel.random_init(cfg)
    fast = set_precision(SiglipVisionModel.random_init(cfg), dtype, quantize, torch.device("cpu"))
    mlps = [m for m in fast.modules() if isinstance(m, SiglipMLP)]
    assert len(mlps) == cfg.num_hidden_layers + 1  # one per layer, the head's
    assert all(type(m) is FastMLP and type(m.activation_fn) is TanhGELU for m in mlps)
    if quantize == "none" and dtype == "float32":
        assert list(fast.state_dict()) == list(plain.state_dict())
        x = torch.randn(2, 3, 32, 32)
        with torch.inference_mode():
            a, b = plain.embed(x, "map"), fast.embed(x, "map")
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    erf = SiglipVisionModel.random_init(SiglipVisionConfig(**TINY, hidden_act="gelu"))
    assert not any(isinstance(m, FastMLP) for m in use_fast_gelu(erf).modules())  # exact GELU is left alone


def test_layernorm_reads_bfloat16_directly_on_cpu_and_computes_in_float32():
    ln = LayerNorm(768, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = (torch.randn(8, 196, 768) * 3 + 50).to(torch.bfloat16)  # the mean dominates: bf16 sums would lose x
    y = ln(x)
    assert y.dtype == torch.bfloat16
    ref = F.layer_norm(x.float(), (768,), ln.weight, ln.bias, 1e-6)
    assert (y.float() - ref).abs().max() <= ref.abs().max() * 2 ** -8  # one bf16 rounding of the float32 result
    torch.testing.assert_close(y, ref.to(torch.bfloat16), atol=0.02, rtol=2 ** -7)


@pytest.mark.parametrize("dtype, patch, pooled", [("bfloat16", 0.999, 0.999), ("float16", 0.9999, 0.9999)])
def test_half_precision_is_close_to_float32_on_real_photos(dtype, patch, pooled):
    # Measured here (random tiny weights): bf16 >= 0.99997 patch, 0.99998 pooled; fp16 ~1.0. Base-size
    # random weights: bf16 0.99995 / 0.99997. The bounds leave room for other CPUs' kernels.
    cfg = SiglipVisionConfig(**TINY)
    prep = Embedder.load(random_init=True).preprocessing
    prep = type(prep)(**{**prep.__dict__, "image_size": cfg.image_size})
    for pool, bound in (("none", patch), ("map", pooled)):
        a = Embedder(SiglipVisionModel.random_init(cfg), prep, pool=pool, device="cpu").embed(PHOTOS)
        b = Embedder(SiglipVisionModel.random_init(cfg), prep, pool=pool, device="cpu", dtype=dtype).embed(PHOTOS)
        assert a.shape == b.shape and b.dtype == np.float32
        assert min_cosine(a, b) >= bound, (pool, min_cosine(a, b))
        assert not np.array_equal(a, b)  # really computed in half precision


def _plain_bf16(cfg, seed):
    model = to_dtype(SiglipVisionModel.random_init(cfg, seed=seed), "bfloat16")
    for layer in model.vision_model.encoder.layers:
        layer.__class__ = SiglipEncoderLayer
    return model


@needs_bf16_kernels
def test_bfloat16_layers_run_fused_on_cpu_and_are_at_least_as_close_to_float32():
    cfg = SiglipVisionConfig(**TINY)
    fused = to_dtype(SiglipVisionModel.random_init(cfg, seed=3), "bfloat16")
    plain = _plain_bf16(cfg, seed=3)
    layers = fused.vision_model.encoder.layers
    assert all(type(layer) is FusedEncoderLayer for layer in layers)
    assert list(fused.state_dict()) == list(plain.state_dict())  # no packed copy in the checkpoint's keys
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        exact = SiglipVisionModel.random_init(cfg, seed=3)(x)
        a, b = fused(x), plain(x)
    assert all(layer._packed is not None for layer in layers)  # the fused path ran
    assert a.dtype == torch.bfloat16 and not torch.equal(a, b)
    assert F.cosine_similarity(a.float(), b.float(), dim=-1).min() > 0.9999
    err_fused, err_plain = (a.float() - exact).abs().mean(), (b.float() - exact).abs().mean()
    assert err_fused <= err_plain * 1.02  # one rounding per matmul instead of three: measured 3-8% less


@needs_bf16_kernels
def test_fused_layers_repack_when_a_weight_changes():
    cfg = SiglipVisionConfig(**TINY)
    model = to_dtype(SiglipVisionModel.random_init(cfg, seed=4), "bfloat16")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        before = model(x)
    with torch.no_grad():
        model.vision_model.encoder.layers[1].mlp.fc2.weight.mul_(2)  # in place: same storage, new version
        model.vision_model.encoder.layers[0].self_attn.k_proj.weight.data = \
            model.vision_model.encoder.layers[0].self_attn.k_proj.weight.data.flip(0).contiguous()  # new storage
    fresh = to_dtype(SiglipVisionModel.random_init(cfg, seed=4), "bfloat16")
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        after, expected = model(x), fresh(x)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, expected, atol=0, rtol=0)


@needs_bf16_kernels
def test_a_model_that_ran_fused_still_copies_and_pickles():
    model = to_dtype(SiglipVisionModel.random_init(SiglipVisionConfig(**TINY), seed=6), "bfloat16")
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
    assert model.vision_model.encoder.layers[0]._packed is not None
    buffer = io.BytesIO()
    torch.save(model, buffer)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)),
                 torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
        assert twin.vision_model.encoder.layers[0]._packed is None
        with torch.inference_mode():
            assert torch.equal(twin(x), expected)


@needs_bf16_kernels
def test_fused_layers_step_aside_for_traces_hooks_autograd_and_float32():
    cfg = SiglipVisionConfig(**TINY)
    model = to_dtype(SiglipVisionModel.random_init(cfg, seed=5), "bfloat16")
    layer = model.vision_model.encoder.layers[0]
    x = torch.randn(1, 3, 32, 32)
    trace: dict = {}
    with torch.inference_mode():
        model.vision_model(x, trace=trace)
    assert {"q_states", "scores", "fc1", "gelu", "residual_add2"} <= set(trace)
    assert layer._packed is None  # layer 0 was traced; nothing fused ran there
    seen = {}
    handle = layer.mlp.fc1.register_forward_hook(lambda module, args, out: seen.update(out=out))
    with torch.inference_mode():
        model(x)
    handle.remove()
    assert seen["out"].shape == (1, 16, cfg.intermediate_size) and layer._packed is None
    model(x).float().sum().backward()  # autograd: the unfused layers, with gradients
    assert layer.mlp.fc1.weight.grad is not None
    model.float()
    plain = use_fast_gelu(SiglipVisionModel.random_init(cfg))
    plain.load_state_dict(model.state_dict())
    with torch.inference_mode():
        assert torch.equal(model(x), plain(x))  # float32 through a FusedEncoderLayer is SiglipEncoderLayer's
