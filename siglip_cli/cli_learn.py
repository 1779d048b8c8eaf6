"""The learning and diagnostic commands, `siglip inspect-shapes`, `siglip visualize` and `siglip doctor` (cli.py
registers them under its one error boundary): options, one library call (shapes.py, visualize.py, hardware.py),
rendering.
"""

from __future__ import annotations

import json

import typer

from . import options as opt
from .console import err_line
from .errors import UsageError


def inspect_shapes(
    model: opt.ConfigModel = None,
    preset: opt.Preset = None,
    tower: opt.Tower = "vision",
    image: opt.ShapesImage = None,
    batch_size: opt.ShapesBatch = 1,
    layer: opt.Layer = 0,
    image_size: opt.ImageSize = None,
    as_json: opt.ShapesJson = False,
    offline: opt.Offline = False,
    cache_dir: opt.CacheDir = None,
    debug: opt.Debug = False,
) -> None:
    """Show how tensor shapes change through SigLIP's vision tower (or text tower), attention in detail.

    The shapes come from a real forward pass of the model on PyTorch's meta device (shapes without
    data), through the step-by-step attention path: patchify, flatten, transpose, position
    embeddings; one encoder layer opened up (q, k, v, split into heads, scores, softmax, weighted
    sum, merge, MLP); the other layers; the attention-pooling head. With FLOPs and parameter counts.
    --tower text: token and position embeddings, the same layers, the last token's vector and the head,
    then how a batch of images is scored against a batch of texts (cosine, scale, bias, sigmoid).

    Examples:

      siglip inspect-shapes

      siglip inspect-shapes --preset so400m --layer 5

      siglip inspect-shapes --tower text --batch-size 3

      siglip inspect-shapes --model google/siglip-base-patch16-384 --image photo.jpg --json
    """
    from .shapes import MODEL_OR_PRESET, describe

    if model and preset:
        raise UsageError(MODEL_OR_PRESET)
    folder = None
    if model:
        from .hub import config_folder

        folder = config_folder(model, offline=offline, cache_dir=cache_dir)  # config.json only: no weights
    report = describe(folder, preset, image, batch_size, layer, image_size, tower=tower)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    from rich.console import Console

    from .shapes import render

    render(report, Console(highlight=False))


def visualize(
    image: opt.Image,
    output: opt.Png,
    model: opt.Model = None,
    random_init: opt.RandomInit = False,
    compare_random: opt.CompareRandom = False,
    norm: opt.NormPreset = "auto",
    image_size: opt.ImageSize = None,
    offline: opt.Offline = False,
    cache_dir: opt.CacheDir = None,
    debug: opt.Debug = False,
) -> None:
    """Draw one PNG of what the model does with an image.

    Panels: the input as the model sees it, with its patch grid; the patch embeddings projected to
    three colours by PCA; the pooling head's attention over the patches; the last layer's attention,
    mean over heads and per head.

    Examples:

      siglip visualize photo.jpg -o photo.png

      siglip visualize photo.jpg -o compare.png --model google/siglip-base-patch16-224 --compare-random
    """
    if output.suffix.lower() != ".png":
        raise UsageError(f"output {str(output)!r} must end in .png")
    if compare_random and random_init:
        raise UsageError("--compare-random puts the untrained model beside a checkpoint: use it with --model, "
                         "not with --random-init")
    from .decode import load_image
    from .embed import Embedder
    from .model import SiglipVisionModel
    from .visualize import png_bytes, render
    from .writers import atomic_write_bytes, check_writable

    check_writable(output)
    picture = load_image(image)
    emb = Embedder.load(model, random_init=random_init, offline=offline, cache_dir=cache_dir, note=err_line,
                        norm=norm, image_size=image_size, device="cpu")
    title = f"{emb.model.name_or_path} - {image.name}"
    if random_init:
        title += "  (UNTRAINED: random weights, the patterns mean nothing)"
        err_line("Warning: --random-init: untrained random weights; the picture shows an untrained model.")
    compare = SiglipVisionModel.random_init(emb.model.config) if compare_random else None
    result = render(picture, emb.preprocessing, emb.model, title, compare)
    atomic_write_bytes(output, png_bytes(result))
    err_line(f"wrote {output} ({result.width}x{result.height})")


def doctor(
    as_json: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """What this machine offers SigLIP, and which precision is fastest on it.

    The CPU's model and the features the fast paths use (AVX2, AVX-512, its bfloat16 and VNNI
    instructions, AMX), the kernels torch was built for, a CUDA GPU if torch sees one, and the
    precision to choose here (--dtype bfloat16, --quantize int8 or float32), with why and where
    that was measured.

    Examples:

      siglip doctor

      siglip doctor --json
    """
    from .hardware import render, report

    info = report(probe_torch=True)
    typer.echo(json.dumps(info, indent=2) if as_json else "\n".join(render(info)))


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
    app.command("inspect-shapes")(inspect_shapes)
    app.command("visualize", no_args_is_help=True)(visualize)
