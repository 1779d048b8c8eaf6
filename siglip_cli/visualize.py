"""siglip visualize: one PNG that shows what the model does with an image, drawn with Pillow.

Layout (all sizes in pixels): a title band of 24; then a row of panels of 224 x 224, each under an
18-px label, 8 apart: the input as the model sees it with its patch grid; the patch embeddings
projected to RGB by PCA (and, with --compare-random, the untrained model's beside it); the pooling
head's attention over the patches; the last layer's attention (mean over heads). Below, under an
18-px label, the last layer's attention for each head, as 96-px tiles with 14-px labels, as many per
row as fit. `layout_size()` gives the exact size.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .model import SiglipVisionModel
from .preprocess import Preprocessing

PANEL, PAD, TITLE, LABEL, TILE, TILE_LABEL = 224, 8, 24, 18, 96, 14
# A perceptually ordered dark-blue -> green -> yellow ramp (viridis' anchor colours).
_RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)


def layout_size(panels: int, heads: int) -> tuple[int, int]:
    """(width, height) of the picture for `panels` panels in the top row and `heads` head tiles."""
    width = PAD + panels * (PANEL + PAD)
    cols = max(1, (width - PAD) // (TILE + PAD))
    rows = math.ceil(heads / cols)
    height = TITLE + LABEL + PANEL + PAD + LABEL + rows * (TILE_LABEL + TILE + PAD)
    return width, height


def colormap(values: np.ndarray) -> np.ndarray:
    """Values scaled to 0..1 -> RGB uint8 along the ramp."""
    v = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return ((1 - t) * _RAMP[lo] + t * _RAMP[lo + 1]).astype(np.uint8)


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _grid_image(values: np.ndarray, grid: tuple[int, int], size: int) -> Image.Image:
    """N values (or N x 3 colours) on the patch grid, scaled up without smoothing."""
    rgb = values if values.ndim == 2 else colormap(_normalise(values))
    return Image.fromarray(rgb.reshape(*grid, 3).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)


def pca_rgb(patches: torch.Tensor) -> np.ndarray:
    """(N, D) patch embeddings -> (N, 3) colours: the first three principal components, each scaled to 0..255."""
    x = patches.double() - patches.double().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = (x @ v[:3].T).numpy()
    channels = [_normalise(proj[:, i]) * 255 for i in range(proj.shape[1])]
    channels += [np.zeros(len(proj))] * (3 - len(channels))  # fewer than 3 patches: fewer components
    return np.stack(channels, axis=1)


def seen_image(pixels: torch.Tensor, prep: Preprocessing) -> Image.Image:
    """The preprocessed pixels turned back into a picture: what the model actually receives."""
    mean = torch.tensor(prep.mean).view(3, 1, 1)
    std = torch.tensor(prep.std).view(3, 1, 1)
    x = ((pixels * std + mean) / (prep.rescale_factor * 255)).clamp(0, 1)
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@torch.inference_mode()
def analyse(model: SiglipVisionModel, pixels: torch.Tensor) -> dict:
    """Patch embeddings, last-layer attention (heads, N, N) and the pooling head's attention (heads, N)."""
    vm = model.vision_model
    last = len(vm.encoder.layers) - 1
    trace: dict = {}
    patches = vm(pixels[None], trace=trace, trace_layer=last)
    out = {"patches": patches[0].float(), "last_attention": trace["softmax"][0].float(),
           "grid": tuple(trace["patch_embedding"].shape[-2:])}
    if model.has_head:
        head_trace: dict = {}
        vm.head(patches, trace=head_trace)
        out["pool_attention"] = head_trace["attention_weights"][0, :, 0].float()
    return out


def _overlay(base: Image.Image, values: np.ndarray, grid: tuple[int, int]) -> Image.Image:
    heat = _grid_image(values, grid, PANEL).resize((PANEL, PANEL), Image.Resampling.BILINEAR)
    return Image.blend(base.convert("RGB"), heat, 0.6)


def render(image: Image.Image, prep: Preprocessing, model: SiglipVisionModel, title: str,
           compare: SiglipVisionModel | None = None) -> Image.Image:
    pixels = prep(image)
    a = analyse(model, pixels)
    grid, heads = a["grid"], a["last_attention"].shape[0]
    seen = seen_image(pixels, prep).resize((PANEL, PANEL), Image.Resampling.BILINEAR)
    with_grid = seen.copy()
    draw = ImageDraw.Draw(with_grid)
    for i in range(1, grid[0]):
        y = round(i * PANEL / grid[0])
        draw.line([(0, y), (PANEL, y)], fill=(255, 255, 255), width=1)
    for j in range(1, grid[1]):
        x = round(j * PANEL / grid[1])
        draw.line([(x, 0), (x, PANEL)], fill=(255, 255, 255), width=1)
    panels = [(f"input as the model sees it ({grid[0]}x{grid[1]} patches)", with_grid),
              ("patch embeddings, PCA -> RGB", _grid_image(pca_rgb(a["patches"]), grid, PANEL))]
    if compare is not None:
        panels.append(("untrained model, PCA -> RGB",
                       _grid_image(pca_rgb(analyse(compare, pixels)["patches"]), grid, PANEL)))
    if "pool_attention" in a:
        panels.append(("pooling head attention", _overlay(seen, a["pool_attention"].mean(0).numpy(), grid)))
    else:
        panels.append(("no pooling head in this model", Image.new("RGB", (PANEL, PANEL), (40, 40, 40))))
    received = a["last_attention"].mean(1)  # (heads, N): attention each patch receives, over all queries
    panels.append(("last layer attention, mean of heads", _overlay(seen, received.mean(0).numpy(), grid)))

    width, height = layout_size(len(panels), heads)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((PAD, 6), title, fill=(0, 0, 0), font=font)
    for i, (label, panel) in enumerate(panels):
        x = PAD + i * (PANEL + PAD)
        draw.text((x, TITLE + 3), label, fill=(40, 40, 40), font=font)
        canvas.paste(panel, (x, TITLE + LABEL))
    top = TITLE + LABEL + PANEL + PAD
    draw.text((PAD, top + 3), "last layer attention received by each patch, per head", fill=(40, 40, 40),
              font=font)
    cols = max(1, (width - PAD) // (TILE + PAD))
    for h in range(heads):
        x = PAD + (h % cols) * (TILE + PAD)
        y = top + LABEL + (h // cols) * (TILE_LABEL + TILE + PAD)
        draw.text((x, y + 1), f"head {h}", fill=(40, 40, 40), font=font)
        canvas.paste(_grid_image(received[h].numpy(), grid, TILE), (x, y + TILE_LABEL))
    return canvas


def png_bytes(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
