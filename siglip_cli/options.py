"""The `siglip` options, each an Annotated alias defined once with its help (cli.py's commands use them).

Choice options take the library's own tuples (choices.py, config.PRESETS) as a Literal: typer lists the
values in the help, matches them case-insensitively, and passes the library's spelling on. Torch-free,
like everything `siglip --help` imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from .choices import DEVICES, DTYPES, ENGINES, FORMATS, NORMS, OUT_DTYPES, POOLS, QUANTIZE
from .config import DEFAULT_MODEL_ID, PRESETS

DEBUG = "siglip.debug"  # the context's meta key: --debug was given


def _set_debug(ctx: typer.Context, value: bool) -> bool:
    if value:
        ctx.meta[DEBUG] = True
    return value


def _choice(values: tuple[str, ...], *names: str, help: str):
    return Annotated[Literal[values], typer.Option(*names, case_sensitive=False, help=help)]


# Shared by several commands.
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors (or set SIGLIP_DEBUG=1).",
                                     callback=_set_debug, is_eager=True)]
Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", show_default=False,
    help="Checkpoint folder, or hub id (id@revision too), from the cache or downloaded. "
         f"Default: the base model ({DEFAULT_MODEL_ID}).")]
CacheDir = Annotated[Optional[Path], typer.Option(
    "--cache-dir", show_default=False,
    help="Hugging Face cache folder (default: HF_HUB_CACHE, or ~/.cache/huggingface/hub).")]
Offline = Annotated[bool, typer.Option(
    "--offline", help="Never download: use only local directories and the cache (as HF_HUB_OFFLINE=1).")]
RandomInit = Annotated[bool, typer.Option(
    "--random-init", help="Use the seeded, untrained base model (offline smoke runs, learning): its numbers mean "
                          "nothing.")]
ImageSize = Annotated[Optional[int], typer.Option(
    "--image-size", show_default=False,
    help="Run at S x S pixels instead of the checkpoint's size (a multiple of the patch size); the position "
         "embeddings are interpolated.")]
Device = _choice(DEVICES, "--device", help="Where the model runs.")
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ModelLayouts = Annotated[bool, typer.Option("--layouts", help="Where each model is in timm's and open_clip's "
                                                              "layouts (hub ids).")]

# siglip embed
Inputs = Annotated[Optional[list[str]], typer.Argument(
    help="Image files, folders (recursive), or glob patterns.", show_default=False)]
Output = Annotated[str, typer.Option(
    "--output", "-o", show_default=False,
    help="A file (.npy or .safetensors: one array, stacked [B, ...] for several images) or a folder "
         "(DIR/ or an existing one: one file per image, mirroring the input tree).")]
Pool = _choice(POOLS, "--pool", help="none: patch embeddings [N, D]; map: SigLIP's attention-pooled image "
                                     "embedding [D]; mean: mean of the patch embeddings [D].")
Norm = _choice(NORMS, "--norm", help="Preprocessing. checkpoint: what its preprocessor_config.json says (SigLIP: "
                                     "bicubic, mean=std=0.5); imagenet: the seed documents' pipeline (bilinear, "
                                     "ImageNet mean/std); auto: checkpoint when there is one, else imagenet.")
Dtype = _choice(DTYPES, "--dtype", help="Compute precision. bfloat16: GPUs and CPUs with native bf16 (AVX-512 BF16, "
                                        "AMX; `siglip doctor` says which is fastest here); float16: GPUs (on CPUs "
                                        "~10x slower); LayerNorm and softmax kept in float32; float32: the "
                                        "checkpoint's own numbers.")
Quantize = _choice(QUANTIZE, "--quantize", help="int8: dynamic int8 Linear layers on the CPU, 1.6x (AVX2) to 2.6x "
                                                "(AVX-512 VNNI) faster and approximate (cosine ~0.999 to float32).")
ExactDecode = Annotated[bool, typer.Option(
    "--exact-decode", help="Decode every JPEG at full size. By default a large JPEG decodes at 1/2 to 1/8 "
                           "scale while each side keeps >= 3x the model's input: several times faster, "
                           "within a few levels in 255 of the full decode. On CUDA it also keeps JPEGs off the "
                           "GPU decoder: every image decoded by Pillow on the CPU.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", min=0, show_default=False,
    help="Threads decoding images ahead of the model (default: one per CPU core, up to 8; 0: none).")]
Format = _choice(FORMATS, "--format", help="File format in folder mode.")
OutDtype = _choice(OUT_DTYPES, "--out-dtype", help="What is stored (compute is unchanged).")
FilesFrom = Annotated[Optional[str], typer.Option(
    "--files-from", show_default=False, help="Also embed the paths listed in this file, one a line (- : stdin).")]
Glob = Annotated[Optional[list[str]], typer.Option(
    "--glob", show_default=False, help="In folders, only files matching this pattern (repeatable), e.g. '*.jpg'.")]
Ext = Annotated[Optional[list[str]], typer.Option(
    "--ext", show_default=False, help="In folders, only files with this suffix (repeatable), e.g. jpg.")]
Hidden = Annotated[bool, typer.Option("--hidden", help="Include hidden files and folders in folder walks.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Folder mode: re-embed images whose output exists "
                                                             "(default: skip them, so a rerun resumes).")]
FailFast = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first image that cannot be read.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", min=1,
                                        help="Refuse images with more pixels (decompression bombs).")]
DecodeMemory = Annotated[Optional[float], typer.Option(
    "--decode-memory", min=0.1, show_default=False,
    help="GB of decoded images in flight on all threads together; an image that alone needs more is "
         "refused (default: a quarter of the memory, 2-8 GB).")]
Report = Annotated[Optional[Path], typer.Option(
    "--report", show_default=False, help="Write one JSON line per input: path, status, reason, output.")]
Shard = Annotated[Optional[str], typer.Option(
    "--shard", show_default=False, help="K/N: embed only every N-th input starting at K (0-based), so N "
                                        "processes split a corpus with no overlap.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary; failures are still "
                                                           "reported.")]
Engine = _choice(ENGINES, "--engine", help="local: this machine. ray: actors on a Ray cluster (folder outputs; "
                                           'pip install "siglip-cli[ray]"), same files and resume.')
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", show_default=False, rich_help_panel="Ray (--engine ray)",
    help="The cluster to join (default: RAY_ADDRESS, else a local cluster started for the run).")]
RayWorkers = Annotated[int, typer.Option("--ray-workers", min=1, rich_help_panel="Ray (--engine ray)",
                                         help="Actors, each loading the model once (one per GPU on a GPU cluster).")]
RayGpus = Annotated[Optional[float], typer.Option(
    "--ray-gpus-per-worker", min=0, show_default=False, rich_help_panel="Ray (--engine ray)",
    help="GPUs each actor reserves (default: 1 where the cluster has a GPU per actor and the run is not --device "
         "cpu or int8, else 0).")]
RayCpus = Annotated[Optional[float], typer.Option(
    "--ray-cpus-per-worker", min=0, show_default=False, rich_help_panel="Ray (--engine ray)",
    help="CPUs each actor reserves (default: 1; on a local cluster, fewer, so Ray Data keeps a CPU for itself).")]

# siglip download-weights
ModelId = Annotated[str, typer.Argument(help="Hub id, optionally id@revision.")]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit (default: main).",
                                                 show_default=False)]
LocalDir = Annotated[Optional[Path], typer.Option("--local-dir", help="Download into this folder instead of the "
                                                                      "cache.", show_default=False)]
Verify = Annotated[bool, typer.Option("--verify", help="Re-check an already downloaded model (sha256 and tensor "
                                                       "shapes) without downloading.")]

# siglip inspect-shapes
ConfigModel = Annotated[Optional[str], typer.Option(
    "--model", "-m", show_default=False,
    help="Checkpoint folder or hub id: only its config.json is read (no weights needed).")]
Preset = Annotated[Optional[Literal[tuple(PRESETS)]], typer.Option(
    "--preset", show_default=False, help="A named size at its resolution: base 224, large 256, so400m 384 "
                                         "(patch 14), giant 256. Default: base.")]
ShapesImage = Annotated[Optional[Path], typer.Option(
    "--image", show_default=False, help="Show the shapes of this image's decoding and preprocessing too.")]
ShapesBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Batch size B.")]
Layer = Annotated[int, typer.Option("--layer", min=0, help="Which encoder layer to open in detail.")]
Tower = Annotated[Literal["vision", "text"], typer.Option(
    "--tower", case_sensitive=False, help="Which tower to trace: the vision tower, or the text tower and the "
                                          "image-text scoring (sigmoid) step.")]
ShapesJson = Annotated[bool, typer.Option("--json", help="Print the same stages as JSON.")]

# siglip visualize
Image = Annotated[Path, typer.Argument(help="The image to look at.", show_default=False)]
Png = Annotated[Path, typer.Option("--output", "-o", help="The PNG to write.", show_default=False)]
CompareRandom = Annotated[bool, typer.Option(
    "--compare-random", help="Put the untrained model's PCA beside the checkpoint's, as seed 000 does.")]
NormPreset = _choice(NORMS, "--norm", help="Preprocessing preset.")

# siglip embed-text, classify, search
Texts = Annotated[Optional[list[str]], typer.Argument(help="Texts to embed (quote each one).", show_default=False)]
TextsFrom = Annotated[Optional[str], typer.Option(
    "--from-file", show_default=False, help="Also embed the texts in this file, one a line (- : stdin).")]
TextOutput = Annotated[Path, typer.Option(
    "--output", "-o", show_default=False, help="The file to write, .npy or .safetensors: [T, D], one row a text.")]
Images = Annotated[Optional[list[str]], typer.Argument(
    help="Image files, folders (recursive), or glob patterns.", show_default=False)]
Labels = Annotated[Optional[str], typer.Option(
    "--labels", "-l", show_default=False, help="Comma-separated labels, e.g. 'cat,dog,red car' (a label with a comma: "
                                               "--labels-file).")]
LabelsFile = Annotated[Optional[Path], typer.Option(
    "--labels-file", show_default=False, help="Labels, one a line (blank lines and # comments skipped).")]
Template = Annotated[str, typer.Option(
    "--template", help="The sentence each label is put in ({} marks where); '{}' for the label alone.")]
TopLabels = Annotated[Optional[int], typer.Option(
    "--top", "-k", min=1, show_default=False, help="Show only the K most probable labels per image (default: all).")]
ClassifyJson = Annotated[bool, typer.Option(
    "--json", help="One JSON object a line: path, and labels best first with probability and logit.")]
Csv = Annotated[bool, typer.Option("--csv", help="CSV: path, then one column per label (its probability).")]
SearchArgs = Annotated[Optional[list[str]], typer.Argument(
    help="The text to search for, then the embedding files and folders (with --image: only these).",
    show_default=False)]
QueryImage = Annotated[Optional[Path], typer.Option(
    "--image", show_default=False, help="Search with this image instead of a text (images that look like it).")]
TopHits = Annotated[int, typer.Option("--top", "-k", min=1, help="How many results.")]
Threshold = Annotated[Optional[float], typer.Option(
    "--threshold", show_default=False, help="Only results above this: a probability (0-1) for a text, a cosine "
                                            "(-1-1) with --image.")]
SearchJson = Annotated[bool, typer.Option("--json", help="One JSON object a line: rank, path, probability, "
                                                         "cosine, embeddings file, row.")]
PathsOnly = Annotated[bool, typer.Option("--paths", help="Only the image paths, one a line (for xargs).")]

# siglip convert
ConvertSource = Annotated[str, typer.Argument(
    help="A checkpoint folder (transformers, timm, open_clip), a big_vision .npz file, or a hub id.",
    show_default=False)]
ConvertOutput = Annotated[Path, typer.Option(
    "--output", "-o", show_default=False, help="The folder to write (new, or empty).")]
