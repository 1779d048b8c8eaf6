"""The device JPEG decode (gpu_decode.py), run on the CPU: torchvision's decode_jpeg takes the same list of
files there, so everything but nvjpeg itself is the code a CUDA GPU runs. Pixels are compared with the
Pillow path (Decoder with exact_decode=True) in 8-bit levels; failures must end as the CPU path ends."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from siglip_cli import gpu_decode
from siglip_cli.config import SiglipVisionConfig
from siglip_cli.decode import _TRANSPOSE
from siglip_cli.embed import Embedder
from siglip_cli.gpu_decode import DeviceDecoder, JpegJob, plain_jpeg, turn, use_device_decode
from siglip_cli.model import SiglipVisionModel
from siglip_cli.preprocess import Decoder, checkpoint_preprocessing, imagenet_preprocessing
from siglip_cli.writers import SPACE_KEYS

from conftest import DATA, SAMPLES, TINY

JPEGS = [SAMPLES / n for n in ("cat.jpg", "coffee.jpg", "rocket.jpg")]
# Most levels (of 255) a device-decoded pixel is off from Pillow's: measured 1 on these JPEGs and on 4032x3024 ones,
# 2 on a JPEG of logo.png. Rounding once instead of after each resize pass is off by up to 7 (mean 0.06-0.19).
MAX_LEVELS = 2


def siglip(size: int):
    return checkpoint_preprocessing({"size": {"height": size, "width": size}}, None)  # bicubic, mean = std = 0.5


def levels(a: torch.Tensor, b: torch.Tensor, prep) -> torch.Tensor:
    """|a - b| in 8-bit levels of the input (undoing the normalisation)."""
    return (a - b).abs() * torch.tensor(prep.std).view(3, 1, 1) / prep.rescale_factor


def on_cpu(prep, **kw) -> tuple[DeviceDecoder, Decoder]:
    exact = Decoder(prep, exact_decode=True, **kw)
    return DeviceDecoder(exact, "cpu", least_side=0), exact


def device_pixels(dev: DeviceDecoder, path) -> torch.Tensor:
    job = dev.read(path)
    assert isinstance(job, JpegJob), path
    (pixels,) = dev.decode([job])
    assert pixels is not None and pixels.dtype == torch.float32
    return pixels


def save_jpeg(path, image: Image.Image, orientation: int | None = None, **kw):
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(path, quality=92, exif=exif, **kw)
    return path


@pytest.fixture(scope="module")
def camera_4032(tmp_path_factory):
    """A 4032x3024 camera-size JPEG made from a real photo (upscaled)."""
    path = tmp_path_factory.mktemp("camera") / "camera.jpg"
    return save_jpeg(path, Image.open(JPEGS[0]).convert("RGB").resize((4032, 3024), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SiglipVisionModel.random_init(SiglipVisionConfig(**TINY))


@pytest.mark.parametrize("photo", JPEGS, ids=lambda p: p.name)
@pytest.mark.parametrize("prep", [siglip(224), siglip(384), siglip(32), imagenet_preprocessing(224)],
                         ids=["bicubic224", "bicubic384", "bicubic32", "bilinear224"])
def test_device_pixels_match_the_pillow_path(photo, prep):
    dev, exact = on_cpu(prep)
    got, ref = device_pixels(dev, photo), torch.from_numpy(exact(photo))
    assert got.shape == ref.shape == (3, prep.image_size, prep.image_size)
    diff = levels(got, ref, prep)
    assert diff.max().item() <= MAX_LEVELS + 1e-4  # where the float resize rounds the other way
    # Measured: mean <= 0.003 (bicubic), <= 0.029 (bilinear); rounding once: 0.07-0.19.
    assert diff.mean().item() < (0.05 if prep.resample == "bilinear" else 0.01)


@pytest.mark.parametrize("prep", [siglip(224), siglip(384), imagenet_preprocessing(224)],
                         ids=["bicubic224", "bicubic384", "bilinear224"])
def test_a_camera_size_jpeg_is_decoded_whole_and_matches_the_exact_decode(camera_4032, prep):
    dev, exact = on_cpu(prep)
    job = dev.read(camera_4032)
    assert (job.width, job.height, job.orientation) == (4032, 3024, 1)
    got, ref = device_pixels(dev, camera_4032), torch.from_numpy(exact(camera_4032))
    diff = levels(got, ref, prep)
    assert diff.max().item() <= MAX_LEVELS + 1e-4
    assert diff.mean().item() < 0.005  # measured: <= 0.0007; rounding once: 0.05-0.07
    # The default CPU path drafts this JPEG (1/4 scale); the device decode is closer to the exact one.
    drafted = torch.from_numpy(Decoder(prep)(camera_4032))
    assert levels(drafted, ref, prep).mean().item() > diff.mean().item()


def test_levels_table_is_the_arithmetic_of_preprocessing_array():
    for prep in (siglip(32), imagenet_preprocessing(32)):
        table = prep.levels()  # (256, 3)
        flat = Image.fromarray(np.full((32, 32, 3), 77, dtype=np.uint8))
        assert table.shape == (256, 3) and table.dtype == np.float32
        assert np.array_equal(prep.array(flat)[:, 0, 0], table[77])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_applies_it(tmp_path, orientation):
    photo = Image.open(JPEGS[0]).convert("RGB").crop((0, 0, 240, 120))  # 2:1, so a quarter turn shows
    path = save_jpeg(tmp_path / "turned.jpg", photo, orientation)
    prep = siglip(64)
    dev, exact = on_cpu(prep)
    job = dev.read(path)
    assert job.orientation == orientation and (job.width, job.height) == (240, 120)
    ref = torch.from_numpy(exact(path))
    assert levels(device_pixels(dev, path), ref, prep).max().item() <= MAX_LEVELS + 1e-4
    unturned = dev.pixels(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1),
                          JpegJob(job.data, 240, 120, 1))
    assert (levels(unturned, ref, prep).mean().item() > 5) == (orientation != 1)


def test_turn_equals_pillows_transpose_for_every_orientation():
    x = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    for orientation, method in _TRANSPOSE.items():
        want = np.asarray(Image.fromarray(x).transpose(method))
        got = turn(torch.from_numpy(x).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
        assert got.shape == want.shape and np.array_equal(got, want), orientation


def test_pillows_orientation_6_sample():
    prep = siglip(48)
    dev, exact = on_cpu(prep)
    path = DATA / "hopper_orientation_6.jpg"
    assert dev.read(path).orientation == 6
    assert levels(device_pixels(dev, path), torch.from_numpy(exact(path)), prep).max().item() <= MAX_LEVELS + 1e-4


@pytest.mark.parametrize("name", ["camera.png", "hopper_bad_exif.jpg"])  # the second: a corrupt EXIF block too
def test_greyscale_jpeg(tmp_path, name):
    path = DATA / name if name.endswith(".jpg") else save_jpeg(tmp_path / "grey.jpg", Image.open(SAMPLES / name))
    assert Image.open(path).mode == "L"
    prep = siglip(96)
    dev, exact = on_cpu(prep)
    got = device_pixels(dev, path)
    assert torch.equal(got[0], got[1]) and torch.equal(got[1], got[2])
    assert levels(got, torch.from_numpy(exact(path)), prep).max().item() <= MAX_LEVELS + 1e-4


def test_progressive_jpeg(tmp_path):
    path = save_jpeg(tmp_path / "progressive.jpg", Image.open(JPEGS[1]), progressive=True)
    assert Image.open(path).info.get("progressive") == 1
    prep = siglip(64)
    dev, exact = on_cpu(prep)
    assert levels(device_pixels(dev, path), torch.from_numpy(exact(path)), prep).max().item() <= MAX_LEVELS + 1e-4


def test_what_the_cpu_path_decodes(tmp_path):
    dev, _ = on_cpu(siglip(32))
    png_named_jpg = tmp_path / "png.jpg"
    png_named_jpg.write_bytes((SAMPLES / "camera.png").read_bytes())
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(JPEGS[0].read_bytes()[:5000])
    for path in (SAMPLES / "camera.png", SAMPLES / "logo.png", png_named_jpg, DATA / "pil_sample_cmyk.jpg",
                 DATA / "truncated_jpeg.jpg", truncated, tmp_path / "missing.jpg", tmp_path):
        assert dev.read(path) is None, path
    assert isinstance(dev.read(JPEGS[0]), JpegJob)


def test_plain_jpeg_takes_only_8_bit_huffman_ycbcr_jpegs_that_end():
    data = JPEGS[0].read_bytes()
    assert plain_jpeg(data)
    sof = data.index(b"\xff\xc0")
    assert not plain_jpeg(data[:sof + 1] + b"\xc9" + data[sof + 2:])  # arithmetic coding
    assert not plain_jpeg(data[:sof + 1] + b"\xc1" + data[sof + 2:])  # extended sequential
    assert plain_jpeg(data[:sof + 1] + b"\xc2" + data[sof + 2:])  # progressive (by its header)
    assert not plain_jpeg(data[:sof + 4] + b"\x0c" + data[sof + 5:])  # 12-bit samples
    assert not plain_jpeg(data[:sof + 10] + b"R\x11\x00G\x11\x00B" + data[sof + 17:])  # stored as RGB
    assert not plain_jpeg(data[:-2])  # no end marker: Pillow says truncated
    assert not plain_jpeg(b"\x89PNG\r\n\x1a\n" + data)


def test_max_pixels_is_refused_before_any_decode(tmp_path, monkeypatch, tiny, camera_4032):
    calls = []
    monkeypatch.setattr(gpu_decode, "torchvision_decode_jpeg", lambda: calls.append(1))
    emb = Embedder(tiny, siglip(32), device="cpu", max_pixels=4032 * 3024 - 1)
    emb.device_decoder = DeviceDecoder(emb.decoder, "cpu", least_side=0)
    assert emb.device_decoder.read(camera_4032) is None
    (r,) = emb.embed_iter([camera_4032], workers=0)
    assert r.embedding is None and r.error == emb.prepare(camera_4032).error
    assert r.error == "too many pixels (4032x3024 = 12,192,768 > --max-pixels 12,192,767)"
    assert calls == []


def test_a_broken_file_fails_alone_with_the_cpu_paths_error_in_input_order(tmp_path, tiny):
    data = JPEGS[0].read_bytes()
    dht = data.index(b"\xff\xc4")  # a Huffman table of zeros: the header reads, the decode fails
    bogus = tmp_path / "bogus_huffman.jpg"
    bogus.write_bytes(data[:dht + 5] + b"\x00" * 16 + data[dht + 21:])
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    inputs = [JPEGS[0], DATA / "truncated_jpeg.jpg", JPEGS[1], bogus, SAMPLES / "camera.png", noise, JPEGS[2]]
    emb = Embedder(tiny, siglip(32), device="cpu", pool="mean")
    emb.device_decoder = DeviceDecoder(emb.decoder, "cpu", least_side=0)
    assert isinstance(emb.device_decoder.read(bogus), JpegJob)  # it reaches the device, which fails on it
    results = list(emb.embed_iter(inputs, batch_size=3, workers=2))
    assert [r.source for r in results] == [str(p) for p in inputs]
    for path, r in zip(inputs, results):
        cpu = emb.prepare(path)
        assert r.error == cpu.error, path
        assert (r.embedding is None) == (cpu.error is not None), path
    assert [r.error is None for r in results] == [True, False, True, False, True, False, True]
    assert results[1].error.startswith("cannot decode image (image file is truncated")
    assert results[5].error == "not an image Pillow can read"
    assert all(r.embedding.shape == (32,) for r in results if r.error is None)


def test_a_failing_batch_is_decoded_one_by_one_and_a_file_the_device_refuses_is_embedded_on_the_cpu(
        monkeypatch, tmp_path):
    real = gpu_decode.torchvision_decode_jpeg()
    refused = JPEGS[1].read_bytes()
    calls = []

    def device(batch, **kw):  # a device that cannot decode coffee.jpg (as nvjpeg some JPEG variant)
        calls.append(len(batch))
        if any(bytes(t.numpy()) == refused for t in batch):
            raise RuntimeError("nvjpeg: unsupported")
        return real(batch, **kw)

    monkeypatch.setattr(gpu_decode, "torchvision_decode_jpeg", lambda: device)
    prep = siglip(32)
    dev, exact = on_cpu(prep)
    pixels = dev.decode([dev.read(p) for p in JPEGS])
    assert calls == [3, 1, 1, 1]
    assert pixels[1] is None and all(p is not None for p in (pixels[0], pixels[2]))

    class Result:  # what finish() needs of embed.Result
        def __init__(self, item):
            self.item, self.embedding, self.error = item, dev.read(item), None

    results = [Result(p) for p in JPEGS]
    fallbacks = []

    def fallback(item):
        fallbacks.append(item)
        r = Result(item)
        r.embedding = torch.from_numpy(exact(item))
        return r

    dev.finish(results, fallback)
    assert fallbacks == [JPEGS[1]]
    assert torch.equal(results[1].embedding, torch.from_numpy(exact(JPEGS[1])))
    for r, path in zip(results, JPEGS):
        assert levels(r.embedding, torch.from_numpy(exact(path)), prep).max() <= MAX_LEVELS + 1e-4


def test_decode_calls_are_capped_by_decoded_pixels(monkeypatch):
    real = gpu_decode.torchvision_decode_jpeg()
    calls = []
    monkeypatch.setattr(gpu_decode, "torchvision_decode_jpeg",
                        lambda: lambda batch, **kw: calls.append(len(batch)) or real(batch, **kw))
    exact = Decoder(siglip(32), exact_decode=True)
    jobs = [DeviceDecoder(exact, "cpu", least_side=0).read(p) for p in JPEGS * 2]  # ~98,000 pixels each
    whole = DeviceDecoder(exact, "cpu", least_side=0).decode(jobs)
    assert calls == [6]
    split = DeviceDecoder(exact, "cpu", batch_pixels=200_000, least_side=0).decode(jobs)
    assert calls == [6, 2, 2, 2]
    assert all(torch.equal(a, b) for a, b in zip(whole, split))


def test_the_selection_rule(monkeypatch):
    assert use_device_decode("cuda", exact_decode=False)
    assert use_device_decode(torch.device("cuda", 1), exact_decode=False, resample="bilinear")
    assert not use_device_decode("cuda", exact_decode=True)  # --exact-decode: Pillow's decode
    assert not use_device_decode("cpu", exact_decode=False)
    assert not use_device_decode("mps", exact_decode=False)
    assert not use_device_decode("cuda", exact_decode=False, resample="lanczos")  # no such interpolate
    monkeypatch.setitem(sys.modules, "torchvision.io", None)  # torchvision not installed
    assert gpu_decode.torchvision_decode_jpeg() is None
    assert not use_device_decode("cuda", exact_decode=False)
    monkeypatch.setitem(sys.modules, "torchvision.io", types.ModuleType("torchvision.io"))  # decode_jpeg removed
    assert not use_device_decode("cuda", exact_decode=False)


def test_metadata_says_which_decode_ran_and_it_does_not_block_resuming(tiny):
    emb = Embedder(tiny, siglip(32), device="cpu")
    assert emb.device_decoder is None and emb.metadata()["decode"] == "jpeg-draft>=96px"
    emb.device_decoder = DeviceDecoder(emb.decoder, "cpu", least_side=0)
    assert emb.metadata()["decode"] == "gpu-jpeg"
    assert "decode" not in SPACE_KEYS
    with pytest.raises(ValueError, match="no device resize for 'lanczos'"):
        DeviceDecoder(Decoder(checkpoint_preprocessing({"size": 32, "resample": 1}, None)), "cpu")


def test_embed_iter_on_the_device_decode_matches_the_cpu_path(tmp_path, tiny, camera_4032):
    grey = save_jpeg(tmp_path / "grey.jpg", Image.open(SAMPLES / "camera.png").convert("L"), 6)
    inputs = [*JPEGS, SAMPLES / "camera.png", grey, camera_4032, SAMPLES / "logo.png", Image.open(JPEGS[2])]
    cpu = Embedder(tiny, siglip(32), device="cpu", pool="none", exact_decode=True)
    gpu = Embedder(tiny, siglip(32), device="cpu", pool="none", exact_decode=True)
    gpu.device_decoder = DeviceDecoder(gpu.decoder, "cpu", least_side=0)
    want = list(cpu.embed_iter(inputs, batch_size=4, workers=2))
    got = list(gpu.embed_iter(inputs, batch_size=4, workers=2))
    assert [r.source for r in got] == [r.source for r in want]
    assert all(r.error is None for r in got)
    a, b = np.stack([r.embedding for r in got]), np.stack([r.embedding for r in want])
    assert a.shape == (8, 16, 32)
    diff = np.abs(a - b).max(axis=(1, 2))
    assert diff.max() < 0.005  # measured 0.0009 (bicubic; 0.0019 bilinear), on values up to ~3
    assert diff[[3, 6, 7]].max() == 0  # PNGs and a PIL image take the same CPU path
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.99999  # measured >= 0.9999996


def test_only_jpegs_large_enough_for_draft_decoding_go_to_the_device(tmp_path):
    """By default a JPEG goes to the device only when the CPU default would draft-decode it (a DCT scale of
    2 or more dividing both sides, each still >= 3x the model input), where that default is approximate
    anyway; the others stay on the CPU, exact."""
    from siglip_cli.decode import DRAFT_GAP, draft_scale

    prep = siglip(32)
    dev = DeviceDecoder(Decoder(prep), "cpu")
    assert dev.least_side == DRAFT_GAP * 32 == 96
    src = Image.open(SAMPLES / "cat.jpg").convert("RGB")
    for size, to_device in (((192, 192), True), ((400, 200), True), ((191, 300), False), ((96, 96), False),
                            ((190, 400), False), ((64, 48), False)):
        assert (draft_scale(size, 96) >= 2) is to_device, size  # the CPU default drafts exactly these
        path = tmp_path / f"{size[0]}x{size[1]}.jpg"
        src.resize(size).save(path, quality=90)
        assert isinstance(dev.read(path), JpegJob) is to_device, size
