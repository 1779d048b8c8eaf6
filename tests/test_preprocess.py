import csv
import multiprocessing
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from siglip_cli.errors import CheckpointError, ImageError, UsageError
from siglip_cli.preprocess import (IMAGENET_MEAN, IMAGENET_STD, Decoder, checkpoint_preprocessing,
                                   choose_preprocessing, imagenet_preprocessing, load_image, DRAFT_GAP, draft_scale)

from conftest import DATA, PHOTOS

SIGLIP_PREPROCESSOR = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                       "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5],
                       "processor_class": "SiglipProcessor", "resample": 3,
                       "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}}
MANIFEST = list(csv.DictReader((DATA / "manifest.tsv").open(), delimiter="\t"))


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda p: p.name)
@pytest.mark.parametrize("size", [224, 384, 45])
def test_checkpoint_preset_equals_transformers_pil_processor(photo, size):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    config = {**SIGLIP_PREPROCESSOR, "size": {"height": size, "width": size}}
    ours = checkpoint_preprocessing(config, None)(load_image(photo))
    # transformers gets the file as Pillow opens it (L, RGBA ...) and converts it itself.
    ref = SiglipImageProcessorPil(**{k: v for k, v in config.items() if not k.endswith("_class")
                                     and k != "image_processor_type"})
    expected = torch.from_numpy(ref(Image.open(photo), return_tensors="np")["pixel_values"][0])
    assert ours.shape == expected.shape == (3, size, size)
    assert (ours - expected).abs().max().item() <= 1e-6
    assert ours.min() >= -1.0 and ours.max() <= 1.0


def test_missing_keys_take_the_siglip_processors_defaults():
    # transformers' SiglipImageProcessor: mean = std = 0.5 (IMAGENET_STANDARD_*), bicubic, 1/255.
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    config = {"size": {"height": 45, "width": 45}}
    prep = checkpoint_preprocessing(config, None)
    assert (prep.mean, prep.std, prep.resample, prep.rescale_factor) == ((0.5,) * 3, (0.5,) * 3, "bicubic", 1 / 255)
    expected = torch.from_numpy(SiglipImageProcessorPil(**config)(Image.open(PHOTOS[0]), return_tensors="np")
                                ["pixel_values"][0])
    assert (prep(load_image(PHOTOS[0])) - expected).abs().max().item() <= 1e-6
    one_number = checkpoint_preprocessing({**config, "image_mean": 0.25, "image_std": 2}, None)
    assert (one_number.mean, one_number.std) == ((0.25,) * 3, (2.0,) * 3)


@pytest.mark.parametrize("photo", PHOTOS[:3], ids=lambda p: p.name)
def test_imagenet_preset_equals_the_seeds_torchvision_pipeline(photo):
    from torchvision import transforms

    seeds = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    image = Image.open(photo).convert("RGB")
    ours = imagenet_preprocessing(224)(load_image(photo))
    expected = seeds(image)
    assert ours.shape == (3, 224, 224)
    assert (ours - expected).abs().max().item() <= 1e-6


def test_choose_preprocessing():
    auto_ckpt = choose_preprocessing("auto", SIGLIP_PREPROCESSOR, 224)
    assert (auto_ckpt.preset, auto_ckpt.resample, auto_ckpt.mean, auto_ckpt.image_size) == \
        ("checkpoint", "bicubic", (0.5, 0.5, 0.5), 224)
    auto_none = choose_preprocessing("auto", None, 224)
    assert (auto_none.preset, auto_none.resample, auto_none.mean, auto_none.std) == \
        ("imagenet", "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    assert choose_preprocessing("imagenet", SIGLIP_PREPROCESSOR, 224, image_size=384).image_size == 384
    assert choose_preprocessing("checkpoint", SIGLIP_PREPROCESSOR, 224, image_size=448).image_size == 448
    with pytest.raises(UsageError, match="no preprocessor_config.json, so --norm checkpoint has nothing to follow"):
        choose_preprocessing("checkpoint", None, 224, where="ckpt")
    with pytest.raises(CheckpointError, match="not square"):
        checkpoint_preprocessing({**SIGLIP_PREPROCESSOR, "size": {"height": 224, "width": 256}}, None)


DECODES = [r for r in MANIFEST if r["expected"] == "decodes"]
RAISES = [r for r in MANIFEST if r["expected"] == "raises"]


@pytest.mark.parametrize("row", DECODES, ids=lambda r: r["file"])
def test_odd_files_that_pillow_decodes_become_finite_rgb(row):
    image = load_image(DATA / row["file"])
    assert image.mode == "RGB"
    x = imagenet_preprocessing(32)(image)
    assert x.shape == (3, 32, 32) and torch.isfinite(x).all()


@pytest.mark.parametrize("row", RAISES, ids=lambda r: r["file"])
def test_broken_files_raise_image_error_with_a_reason(row):
    path = DATA / row["file"]
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert e.value.path == str(path)
    assert e.value.reason and "\n" not in str(e.value)


def test_reasons_name_what_went_wrong(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = {tmp_path / "missing.jpg": "no such file", tmp_path / "notes.txt": "not an image Pillow can read",
             tmp_path / "empty.jpg": "not an image Pillow can read", tmp_path: "is a directory",
             DATA / "truncated_jpeg.jpg": "cannot decode image (image file is truncated",
             DATA / "decompression_bomb.gif": "too many pixels"}
    for path, reason in cases.items():
        with pytest.raises(ImageError) as e:
            load_image(path)
        assert e.value.reason.startswith(reason), (path, e.value.reason)


def test_exif_orientation_is_applied():
    assert load_image(DATA / "orientation_rectangle.jpg").size == (1, 2)  # stored 2x1, Orientation=8
    rotated = np.asarray(load_image(DATA / "hopper_orientation_6.jpg"), dtype=float)
    raw = np.asarray(Image.open(DATA / "hopper_orientation_6.jpg").convert("RGB"), dtype=float)
    assert np.abs(rotated - np.rot90(raw, k=-1)).mean() < 3  # Orientation=6: rotate 90 degrees clockwise


def test_high_bit_depth_images_are_stretched_not_clipped():
    sixteen = np.asarray(load_image(DATA / "16bit.cropped.tif"))  # values 291..694: convert() gives all white
    assert sixteen.min() == 0 and sixteen.max() == 255
    floats = np.asarray(load_image(DATA / "10ct_32bit_128.tiff"))  # -3.14..3.14: convert() gives ~black
    assert floats.min() == 0 and floats.max() == 255


def test_transparency_is_composited_on_white():
    la = Image.new("LA", (4, 4), (0, 0))  # black, fully transparent
    from siglip_cli.preprocess import to_rgb

    assert np.asarray(to_rgb(la)).min() == 255
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 0, 0]


def test_cmyk_and_animated_images():
    assert load_image(DATA / "pil_sample_cmyk.jpg").mode == "RGB"
    first = Image.open(DATA / "chi.gif").convert("RGB")
    assert np.array_equal(np.asarray(load_image(DATA / "chi.gif")), np.asarray(first))
    # APNG: frame 0 is the red default image, not the green animation.
    r, g, b = np.asarray(load_image(DATA / "apng_single_frame_default.png")).reshape(-1, 3).mean(0)
    assert r > 200 and g < 50


@pytest.fixture(scope="module")
def camera_jpeg(tmp_path_factory):
    """A 2400x1800 JPEG from a real photo, rotated by EXIF (orientation 6: the stored image is 1800x2400)."""
    path = tmp_path_factory.mktemp("camera") / "camera.jpg"
    image = Image.open(PHOTOS[0]).convert("RGB").resize((1800, 2400), Image.Resampling.LANCZOS)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, quality=92, exif=exif)
    return path


def test_draft_decodes_a_large_jpeg_at_reduced_scale_never_below_the_gap(camera_jpeg):
    exact = load_image(camera_jpeg)
    assert exact.size == (2400, 1800)  # EXIF rotation applied
    # 3 x 224 = 672: 1/2 scale keeps 900 >= 672 on the short side, 1/4 (450) would not.
    assert load_image(camera_jpeg, draft=DRAFT_GAP * 224).size == (1200, 900)
    assert load_image(camera_jpeg, draft=DRAFT_GAP * 64).size == (300, 225)  # 1/8: 225 >= 192
    assert load_image(camera_jpeg, draft=2000).size == (2400, 1800)  # no scale keeps 2000: whole
    # Small JPEGs and other formats decode whole.
    assert load_image(PHOTOS[0], draft=DRAFT_GAP * 224).size == Image.open(PHOTOS[0]).size
    assert load_image(PHOTOS[3], draft=3).size == Image.open(PHOTOS[3]).size  # PNG


@pytest.mark.parametrize("size", [224, 96, 384])
def test_draft_decode_is_within_a_few_levels_of_the_exact_decode(camera_jpeg, size):
    prep = checkpoint_preprocessing({**SIGLIP_PREPROCESSOR, "size": {"height": size, "width": size}}, None)
    exact = prep(load_image(camera_jpeg))
    drafted = prep(load_image(camera_jpeg, draft=DRAFT_GAP * size))
    levels = (drafted - exact).abs() * 127.5  # mean = std = 0.5: one level in 255 is 2/255 here
    if size == 384:  # 3 x 384 > 1800: no reduced scale is allowed, the decode is the exact one
        assert levels.max().item() == 0
        return
    assert 0 < levels.max().item() <= 3
    assert levels.mean().item() <= 0.3


def test_embedder_drafts_by_default_and_not_with_exact_decode(camera_jpeg):
    from siglip_cli.embed import Embedder

    fast = Embedder.load(random_init=True)
    exact = Embedder.load(random_init=True, exact_decode=True)
    assert fast.draft == 672 and exact.draft is None
    assert fast.metadata()["decode"] == "jpeg-draft>=672px" and exact.metadata()["decode"] == "exact"
    a, b = fast.prepare(camera_jpeg).embedding, exact.prepare(camera_jpeg).embedding
    torch.testing.assert_close(b, imagenet_preprocessing(224)(load_image(camera_jpeg)), atol=0, rtol=0)
    assert 0 < (a - b).abs().max().item() < 0.1


def test_draft_scale_only_divides_exactly():
    assert draft_scale((4032, 3024), 672) == 4  # 1008 x 756
    assert draft_scale((4032, 3024), 224) == 8
    assert draft_scale((4032, 3024), 1600) == 1  # 1/2 would leave 1512 < 1600
    assert draft_scale((2698, 2022), 672) == 2  # even but not a multiple of 4
    assert draft_scale((2695, 2023), 672) == 1  # odd: any scale would leave a partial block


@pytest.mark.parametrize("size, decoded", [((2698, 2022), (1349, 1011)), ((2695, 2023), (2695, 2023))])
def test_draft_of_sides_that_are_not_multiples_of_8_never_stretches(tmp_path, size, decoded):
    path = tmp_path / "odd.jpg"
    Image.open(PHOTOS[1]).convert("RGB").resize(size, Image.Resampling.LANCZOS).save(path, quality=92)
    prep = checkpoint_preprocessing(SIGLIP_PREPROCESSOR, None)
    drafted = load_image(path, draft=DRAFT_GAP * 224)
    assert drafted.size == decoded
    levels = (prep(drafted) - prep(load_image(path))).abs() * 127.5
    assert levels.max().item() <= 3 and levels.mean().item() <= 0.3


def test_a_decoder_pickles_and_decodes_the_same_pixels_elsewhere(camera_jpeg):
    prep = checkpoint_preprocessing(SIGLIP_PREPROCESSOR, None)
    decoder = Decoder(prep, max_pixels=50_000_000, decode_memory=1 << 30)
    here = decoder(camera_jpeg)
    assert here.dtype == np.float32 and here.shape == (3, 224, 224)
    assert np.array_equal(here, prep(load_image(camera_jpeg, draft=DRAFT_GAP * 224)).numpy())
    copy = pickle.loads(pickle.dumps(decoder))
    assert (copy.max_pixels, copy.draft, copy.budget.limit, copy.budget.used) == (50_000_000, 672, 1 << 30, 0)
    assert copy.budget is not decoder.budget  # a budget (and its lock) per copy
    assert np.array_equal(copy(camera_jpeg), here)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # as a worker pool
        assert np.array_equal(pool.submit(decoder, camera_jpeg).result(), here)
    # Another process needs neither torch nor a model to decode.
    code = ("import pickle, sys\nd = pickle.loads(sys.stdin.buffer.read())\nx = d(sys.argv[1])\n"
            "print(x.shape, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(camera_jpeg)], input=pickle.dumps(decoder),
                          capture_output=True)
    assert proc.stdout.decode().strip() == "(3, 224, 224) False", proc.stderr.decode()
    with pytest.raises(ImageError, match="no such file"):
        copy(camera_jpeg.with_name("missing.jpg"))
