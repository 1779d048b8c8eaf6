import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from siglip_cli import SiglipVisionConfig, SiglipVisionModel
from siglip_cli.embed import Embedder
from siglip_cli.errors import UsageError
from siglip_cli.model import LayerNorm, SiglipMLP
from siglip_cli.precision import FastMLP, TanhGELU, quantize_int8, set_precision, to_dtype, use_fast_gelu

from conftest import SAMPLES, TINY

PHOTOS = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))


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
