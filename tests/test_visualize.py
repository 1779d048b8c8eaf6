"""siglip visualize: the PNG, its documented layout, and attention that follows the image."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from siglip_cli.cli import app
from siglip_cli.visualize import LABEL, PAD, PANEL, TILE, TILE_LABEL, TITLE, colormap, layout_size

from conftest import PHOTOS, TINY, build_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("vis")
    build_checkpoint(path, TINY, seed=5)
    return path


def draw(ckpt, photo, out, *extra):
    result = CliRunner().invoke(app, ["visualize", str(photo), "--model", str(ckpt), "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def head_tile(picture: np.ndarray, head: int) -> np.ndarray:
    top = TITLE + LABEL + PANEL + PAD + LABEL + TILE_LABEL
    x = PAD + head * (TILE + PAD)
    return picture[top:top + TILE, x:x + TILE]


def test_layout_size_is_the_documented_one(ckpt, tmp_path):
    # 4 panels of 224 in a row (8 apart), 24-px title, 18-px labels; 4 head tiles of 96 on one row.
    assert layout_size(4, 4) == (8 + 4 * 232, 24 + 18 + 224 + 8 + 18 + 118) == (936, 410)
    assert layout_size(5, 12) == (1168, 24 + 18 + 224 + 8 + 18 + 2 * 118)
    picture = draw(ckpt, PHOTOS[0], tmp_path / "a.png")
    assert picture.shape == (410, 936, 3)
    wide = draw(ckpt, PHOTOS[0], tmp_path / "c.png", "--compare-random")
    assert wide.shape == (410, 1168, 3)


def test_attention_panels_follow_the_image(ckpt, tmp_path):
    cat = draw(ckpt, PHOTOS[0], tmp_path / "cat.png")
    again = draw(ckpt, PHOTOS[0], tmp_path / "cat2.png")
    coffee = draw(ckpt, PHOTOS[1], tmp_path / "coffee.png")
    assert np.array_equal(cat, again)  # deterministic
    for head in range(4):
        assert np.abs(head_tile(cat, head) - head_tile(coffee, head)).mean() > 5, head
    # The tiles are attention maps drawn with the colour ramp, not blank.
    assert len(np.unique(head_tile(cat, 0).reshape(-1, 3), axis=0)) > 3


def test_random_init_says_so_and_bad_options_are_errors(tmp_path):
    result = CliRunner().invoke(app, ["visualize", str(PHOTOS[0]), "--random-init", "-o", str(tmp_path / "r.png")])
    assert result.exit_code == 0 and "untrained" in result.output
    assert Image.open(tmp_path / "r.png").size == layout_size(4, 12)
    bad = CliRunner().invoke(app, ["visualize", str(PHOTOS[0]), "--random-init", "-o", str(tmp_path / "r.jpg")])
    assert bad.exit_code == 2 and "must end in .png" in bad.output
    both = CliRunner().invoke(app, ["visualize", str(PHOTOS[0]), "--random-init", "--compare-random",
                                    "-o", str(tmp_path / "x.png")])
    assert both.exit_code == 2 and "--compare-random" in both.output


def test_colormap_runs_dark_to_bright():
    ramp = colormap(np.array([0.0, 0.5, 1.0]))
    assert ramp[0].tolist() == [68, 1, 84] and ramp[2].tolist() == [253, 231, 37]
    assert ramp.sum(1)[0] < ramp.sum(1)[1] < ramp.sum(1)[2]


def test_a_single_patch_still_draws(ckpt, tmp_path):
    picture = draw(ckpt, PHOTOS[4], tmp_path / "one.png", "--image-size", "8")  # RGBA logo, 1x1 patch grid
    assert picture.shape == (410, 936, 3)
