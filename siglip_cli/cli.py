"""The `siglip` command line: options, rendering, and the one error boundary. No tensor code here.

torch and friends are imported inside command bodies, so `siglip --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .console import err_line, fill_standard_fds, mute
from .errors import EXIT_FAILED, ImageError, SiglipError, SiglipWarning, UsageError

_DEBUG = "siglip.debug"
# Typer vendors click; its UsageError (bad option values, unknown options) is BadParameter's base.
_ClickUsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

EXIT_CODES_HELP = "Exit codes: 0 all inputs embedded; 1 some input failed; 2 usage or model error."
HUB_EXIT_CODES_HELP = "Exit codes: 0 done; 2 any error (not found, gated, offline, corrupt, disk full ...)."


def _debug_on(ctx: typer.Context) -> bool:
    return bool(ctx.meta.get(_DEBUG)) or os.environ.get("SIGLIP_DEBUG", "") not in ("", "0")


def _err(message: str) -> None:
    err_line(message)


class _ErrorBoundary(TyperGroup):
    """The single place where a SiglipError becomes `Error: ...` on stderr and an exit code.

    Any other exception is a bug and keeps its traceback; --debug (or SIGLIP_DEBUG=1) shows the
    traceback for SiglipErrors too.
    """

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except SiglipError as e:
            if _debug_on(ctx):
                raise
            _err(f"Error: {e}")
            raise typer.Exit(e.exit_code) from None
        except _ClickUsageError as e:
            # The parser's own errors, also one line: what is wrong, and where the help is.
            where = e.ctx.command_path if e.ctx is not None else "siglip"
            _err(f"Error: {e.format_message()} (see `{where} --help`)")
            raise typer.Exit(2) from None


def _set_debug(ctx: typer.Context, value: bool) -> bool:
    if value:
        ctx.meta[_DEBUG] = True
    return value


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"siglip {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=_ErrorBoundary,
    help="SigLIP vision-transformer embeddings for images, from a from-scratch PyTorch model.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Pool(str, Enum):
    none = "none"
    map = "map"
    mean = "mean"


class Norm(str, Enum):
    auto = "auto"
    imagenet = "imagenet"
    checkpoint = "checkpoint"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


# Shared options, defined once.
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors (or set SIGLIP_DEBUG=1).",
                                        callback=_set_debug, is_eager=True)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", show_default=False,
    help="Checkpoint folder, or hub id (id@revision too), from the cache or downloaded. "
         "Default: the base model (google/siglip-base-patch16-224).")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", show_default=False,
    help="Hugging Face cache folder (default: HF_HUB_CACHE, or ~/.cache/huggingface/hub).")]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline", help="Never download: use only local directories and the cache (as HF_HUB_OFFLINE=1).")]
RandomInitOpt = Annotated[bool, typer.Option(
    "--random-init", help="Use the seeded, untrained base model (offline smoke runs, learning): its numbers mean "
                          "nothing.")]
ImageSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", show_default=False,
    help="Run at S x S pixels instead of the checkpoint's size (a multiple of the patch size); the position "
         "embeddings are interpolated.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where the model runs.", case_sensitive=False)]


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_show_version,
                                          is_eager=True)] = False,
    debug: DebugOpt = False,
) -> None:
    """SigLIP vision-transformer embeddings for images, from a from-scratch PyTorch model.

    Start with `siglip embed --help`.
    """
    if ctx.invoked_subcommand != "embed":  # embed starts unwinding once it can write its report
        _unwind_on_sigterm()


class Fmt(str, Enum):
    npy = "npy"
    safetensors = "safetensors"


class OutDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Quantize(str, Enum):
    none = "none"
    int8 = "int8"


@app.command(no_args_is_help=True, epilog=EXIT_CODES_HELP)
def embed(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Image files, folders (recursive), or glob patterns.", show_default=False)] = None,
    output: Annotated[str, typer.Option(
        "--output", "-o", show_default=False,
        help="A file (.npy or .safetensors: one array, stacked [B, ...] for several images) or a folder "
             "(DIR/ or an existing one: one file per image, mirroring the input tree).")] = ...,
    model: ModelOpt = None,
    random_init: RandomInitOpt = False,
    pool: Annotated[Pool, typer.Option(
        "--pool", case_sensitive=False,
        help="none: patch embeddings [N, D]; map: SigLIP's attention-pooled image embedding [D]; "
             "mean: mean of the patch embeddings [D].")] = Pool.none,
    norm: Annotated[Norm, typer.Option(
        "--norm", case_sensitive=False,
        help="Preprocessing. checkpoint: what its preprocessor_config.json says (SigLIP: bicubic, "
             "mean=std=0.5); imagenet: the seed documents' pipeline (bilinear, ImageNet mean/std); auto: "
             "checkpoint when there is one, else imagenet.")]
    = Norm.auto,
    image_size: ImageSizeOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: Annotated[Dtype, typer.Option(
        "--dtype", case_sensitive=False,
        help="Compute precision. bfloat16/float16: for GPUs, with LayerNorm and softmax kept in float32; "
             "float32: the checkpoint's own numbers.")] = Dtype.float32,
    quantize: Annotated[Quantize, typer.Option(
        "--quantize", case_sensitive=False,
        help="int8: dynamic int8 Linear layers on the CPU, ~1.5x faster and approximate (cosine ~0.999 to "
             "float32).")] = Quantize.none,
    exact_decode: Annotated[bool, typer.Option(
        "--exact-decode", help="Decode every JPEG at full size. By default a large JPEG decodes at 1/2 to 1/8 "
                               "scale while each side keeps >= 3x the model's input: several times faster, "
                               "within a few levels in 255 of the full decode.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=0, show_default=False,
        help="Threads decoding images ahead of the model (default: one per CPU core, up to 8; 0: none).")] = None,
    fmt: Annotated[Fmt, typer.Option("--format", case_sensitive=False,
                                     help="File format in folder mode.")] = Fmt.npy,
    out_dtype: Annotated[OutDtype, typer.Option("--out-dtype", case_sensitive=False,
                                                help="What is stored (compute is unchanged).")] = OutDtype.float32,
    files_from: Annotated[Optional[str], typer.Option(
        "--files-from", show_default=False, help="Also embed the paths listed in this file, one a line (- : stdin).")]
    = None,
    glob: Annotated[Optional[list[str]], typer.Option(
        "--glob", show_default=False, help="In folders, only files matching this pattern (repeatable), e.g. '*.jpg'.")]
    = None,
    ext: Annotated[Optional[list[str]], typer.Option(
        "--ext", show_default=False, help="In folders, only files with this suffix (repeatable), e.g. jpg.")] = None,
    hidden: Annotated[bool, typer.Option("--hidden", help="Include hidden files and folders in folder walks.")]
    = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Folder mode: re-embed images whose output "
                                            "exists (default: skip them, so a rerun resumes).")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first image that cannot be read.")]
    = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Refuse images with more pixels "
                                            "(decompression bombs).")] = 178_956_970,
    decode_memory: Annotated[Optional[float], typer.Option(
        "--decode-memory", min=0.1, show_default=False,
        help="GB of decoded images in flight on all threads together; an image that alone needs more is "
             "refused (default: a quarter of the memory, 2-8 GB).")] = None,
    report: Annotated[Optional[Path], typer.Option(
        "--report", show_default=False, help="Write one JSON line per input: path, status, reason, output.")] = None,
    shard_spec: Annotated[Optional[str], typer.Option(
        "--shard", show_default=False, help="K/N: embed only every N-th input starting at K (0-based), so N "
                                            "processes split a corpus with no overlap.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summary; failures are "
                                        "still reported.")] = False,
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Embed images with a SigLIP vision model and write the embeddings to files.

    One image writes its array ([196, 768] patch embeddings for the base model, or [768] with --pool).
    Several images and a file output write one stacked array [B, ...] in input order, streamed to disk,
    with the source paths recorded (in the .safetensors metadata, or in a sidecar OUT.npy.json).
    A folder output (-o DIR/) writes DIR/<path below the input folder>.npy per image; a rerun skips
    images already done. An image that cannot be read is reported once as `path: reason`, and the
    others are still embedded. Every file is written atomically.

    Examples:

      siglip embed photo.jpg -o photo.npy

      siglip embed a.jpg b.png c.webp --pool map -o images.safetensors

      siglip embed photos/ -o embeddings/ --pool map --report run.jsonl

      find /data -name '*.jpg' | siglip embed --files-from - -o out/ --shard 0/4

      siglip embed photos/ -o embeddings/ --quantize int8        # CPU, ~1.5x faster, approximate

      siglip embed photos/ -o embeddings/ --device cuda --dtype bfloat16

      siglip embed photo.jpg --random-init -o smoke.npy
    """
    from .atomic import atomic_write_bytes, check_folder_writable, destination

    # SIGTERM unwinds like Ctrl-C from the moment the command starts (main installs the handler):
    # temp files go, and the report is written, empty if no input was reached yet. Before the report
    # is checked against the inputs and outputs, that is only safe where nothing is there to lose.
    try:
        report_due = report is not None and (not os.path.lexists(report) or destination(report, through=True)[1])
    except SiglipError as e:  # a report path that cannot even be looked at (a loop of symlinks ...)
        raise UsageError(str(e)) from None
    try:
        _unwind_on_sigterm()  # a SIGTERM during start-up unwinds here, and the report is written
        from glob import has_magic as glob_has_magic

        from .batch import check_report, embed_to, is_folder_output
        from .inputs import collect, parse_shard, shard
        from .precision import check_precision
        from .writers import check_output_file, refuse_overwriting_inputs

        if not inputs and not files_from:
            raise UsageError("no inputs: give image files, folders or patterns, or --files-from LIST")
        folder = is_folder_output(output)
        if folder:
            check_folder_writable(Path(output))
        else:
            check_output_file(Path(output))
        items = collect(inputs or [], files_from, glob, ext, hidden)
        if not folder:
            refuse_overwriting_inputs(Path(output), items)
        if report is not None:
            check_report(report, Path(output), folder, items, "." + fmt.value,
                         protected=[files_from or "", model or ""])
            report_due = True
        if not items:
            raise UsageError("no images found in the inputs (folders are searched for image files by suffix; see "
                             "--glob, --ext, --hidden)")
        if shard_spec:
            k, n = parse_shard(shard_spec)
            total, items = len(items), shard(items, k, n)
            if not items:
                _err(f"shard {k}/{n}: nothing to do ({total} inputs in all, fewer than {n} shards)")
                if report is not None:
                    atomic_write_bytes(report, b"", through=True)
                return
        # One named image file -> its array; anything that can hold several (folders, globs, lists) -> stacked.
        named_one = len(inputs or []) == 1 and not files_from and not Path(inputs[0]).is_dir() \
            and not (glob_has_magic(inputs[0]) and not Path(inputs[0]).exists())
        single = not folder and named_one
        if single and items[0].error:
            raise ImageError(str(items[0].path), items[0].error)
        check_precision(dtype.value, quantize.value, device.value)  # before a model is downloaded or loaded
        from .embed import Embedder

        embedder = Embedder.load(model, random_init=random_init, pool=pool.value, norm=norm.value,
                                 image_size=image_size, device=device.value, offline=offline, note=_note,
                                 max_pixels=max_pixels, cache_dir=cache_dir, dtype=dtype.value,
                                 quantize=quantize.value, exact_decode=exact_decode,
                                 decode_memory=None if decode_memory is None else int(decode_memory * 1e9))
        if random_init:
            _err("Warning: --random-init: untrained random weights (seed 0); these embeddings mean nothing. "
                 "Use --model with a real checkpoint for meaningful ones.")
        from .progress import EmbedProgress

        failures = []
        with EmbedProgress(len(items), enabled=not quiet) as progress:
            def on_outcome(outcome) -> None:
                progress.advance(outcome)
                if outcome.status == "failed":
                    failures.append(outcome)
                    if not single and not fail_fast:  # with --fail-fast the final error names it
                        progress.log(f"{outcome.path}: {outcome.reason}")

            report_due = False  # embed_to writes the report from here on, whatever happens
            summary = embed_to(embedder, items, output, fmt="." + fmt.value, out_dtype=out_dtype.value,
                               overwrite=overwrite, fail_fast=fail_fast, batch_size=batch_size, workers=workers,
                               report=report, on_outcome=on_outcome, stack=not single)
    except (KeyboardInterrupt, SystemExit):
        if report_due:  # interrupted while loading: no input was reached, and the report says so
            with contextlib.suppress(SiglipError):
                atomic_write_bytes(report, b"", through=True)
        raise
    if single and summary.failed:
        raise ImageError(failures[0].path, failures[0].reason)
    if not folder and not summary.embedded:
        raise ImageError(str(output), f"not written: none of the {len(items)} inputs could be embedded")
    if not quiet:
        where = f"{output} (one file per image)" if folder else ", ".join(map(str, summary.outputs))
        shape = f" {summary.shape} {summary.dtype}" if summary.shape else ""
        _err(f"wrote {where}{shape}: {summary.line()}" if summary.embedded else summary.line())
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


_sigterm = {"defer": True, "pending": False}


def _terminate(signum, frame) -> None:
    """SIGTERM: unwind (cleanup runs, the report is written); a second SIGTERM ends the process at once
    (e.g. while the report waits for a reader on a FIFO). Until a command can clean up (during
    argument parsing), the first one is held and unwinds as soon as it can."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _sigterm["defer"]:
        _sigterm["pending"] = True
        return
    raise SystemExit(143)


def _unwind_on_sigterm() -> None:
    _sigterm["defer"] = False
    if _sigterm["pending"]:
        raise SystemExit(143)


@app.command("download-weights", epilog=HUB_EXIT_CODES_HELP)
def download_weights(
    model_id: Annotated[str, typer.Argument(help="Hub id, optionally id@revision.")] = "google/siglip-base-patch16-224",
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit (default: main).",
                                                    show_default=False)] = None,
    local_dir: Annotated[Optional[Path], typer.Option("--local-dir", help="Download into this folder instead of "
                                                      "the cache.", show_default=False)] = None,
    cache_dir: CacheDirOpt = None,
    verify: Annotated[bool, typer.Option("--verify", help="Re-check an already downloaded model (sha256 and "
                                         "tensor shapes) without downloading.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Download a SigLIP checkpoint from the Hugging Face hub, verified.

    Fetches only config.json, preprocessor_config.json and the safetensors weights (never tokenizers,
    pickles or other frameworks' files), checks each weight file's sha256 against the hub's record and
    the tensor shapes against the config, then prints what it stored. HF_TOKEN, HF_HOME, HF_ENDPOINT
    and HF_HUB_OFFLINE are honoured.

    Examples:

      siglip download-weights

      siglip download-weights google/siglip-so400m-patch14-384

      siglip download-weights google/siglip-base-patch16-224 --verify
    """
    from .hub import download_weights as download, human_size, verify_weights
    from .weights import parse_model_spec

    repo_id, revision = parse_model_spec(model_id, revision)
    if verify:
        done = verify_weights(repo_id, revision, cache_dir=cache_dir, local_dir=local_dir)
        _err("verified: every file matches its recorded hash, and the weights fit config.json")
    else:
        done = download(repo_id, revision, cache_dir=cache_dir, local_dir=local_dir, note=_note)
    lines = [f"model:    {done.repo_id}", f"revision: {done.revision}", f"path:     {done.path}",
             f"size:     {human_size(done.size)} in {len(done.files)} files"]
    if done.unverified:
        lines.append(f"checksum: NOT verified: {', '.join(done.unverified)} (no hash from the hub)")
    else:
        lines.append(f"checksum: verified ({len(done.verified)} files)")
    if done.full_checkpoint:
        lines.append("note:     a full SigLIP checkpoint: the weights also hold the text tower (not loaded)")
    typer.echo("\n".join(lines))


@app.command("models", epilog=HUB_EXIT_CODES_HELP)
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    cache_dir: CacheDirOpt = None,
    debug: DebugOpt = False,
) -> None:
    """List the known SigLIP and SigLIP 2 fixed-resolution checkpoints, and which are in the local cache.

    Download sizes are estimates: the full checkpoint (vision and text towers, float32).

    Examples:

      siglip models

      siglip models --json
    """
    from .catalog import model_rows
    from .hub import human_size

    rows = model_rows(cache_dir)
    if as_json:
        import json

        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, collapse_padding=True)
    for name, justify in (("model", "left"), ("width", "right"), ("depth", "right"), ("patch", "right"),
                          ("px", "right"), ("params", "right"), ("download", "right"), ("cached", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for r in rows:
        table.add_row(r["id"], str(r["width"]), str(r["depth"]), str(r["patch"]), str(r["resolution"]),
                      f"{r['vision_params'] / 1e6:.0f}M", "~" + human_size(r["download_bytes"]),
                      "yes" if r["cached"] else "")
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # piped to a file or another program: never cut a model id
    console.print(table)
    typer.echo("params: vision tower; download: full checkpoint (both towers, float32), estimated")


class Preset(str, Enum):
    base = "base"
    large = "large"
    so400m = "so400m"
    giant = "giant"


@app.command("inspect-shapes")
def inspect_shapes(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", show_default=False,
        help="Checkpoint folder or hub id: only its config.json is read (no weights needed).")] = None,
    preset: Annotated[Optional[Preset], typer.Option(
        "--preset", show_default=False, help="A named size at its resolution: base 224, large 256, so400m 384 "
                                             "(patch 14), giant 256. Default: base.")] = None,
    image: Annotated[Optional[Path], typer.Option(
        "--image", show_default=False, help="Show the shapes of this image's decoding and preprocessing too.")]
    = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size B.")] = 1,
    layer: Annotated[int, typer.Option("--layer", min=0, help="Which encoder layer to open in detail.")] = 0,
    image_size: ImageSizeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the same stages as JSON.")] = False,
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Show how tensor shapes change through the SigLIP vision model, attention in detail.

    The shapes come from a real forward pass of the model on PyTorch's meta device (shapes without
    data), through the step-by-step attention path: patchify, flatten, transpose, position
    embeddings; one encoder layer opened up (q, k, v, split into heads, scores, softmax, weighted
    sum, merge, MLP); the other layers; the attention-pooling head. With FLOPs and parameter counts.

    Examples:

      siglip inspect-shapes

      siglip inspect-shapes --preset so400m --layer 5

      siglip inspect-shapes --model google/siglip-base-patch16-384 --image photo.jpg --json
    """
    from .shapes import describe

    report = describe(model, preset.value if preset else None, image, batch_size, layer, image_size,
                      offline=offline, cache_dir=cache_dir)
    if as_json:
        import json

        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    from rich.console import Console

    from .shapes import render

    render(report, Console(highlight=False))


@app.command("visualize", no_args_is_help=True)
def visualize(
    image: Annotated[Path, typer.Argument(help="The image to look at.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The PNG to write.", show_default=False)],
    model: ModelOpt = None,
    random_init: RandomInitOpt = False,
    compare_random: Annotated[bool, typer.Option(
        "--compare-random", help="Put the untrained model's PCA beside the checkpoint's, as seed 000 does.")]
    = False,
    norm: Annotated[Norm, typer.Option("--norm", case_sensitive=False, help="Preprocessing preset.")] = Norm.auto,
    image_size: ImageSizeOpt = None,
    offline: OfflineOpt = False,
    cache_dir: CacheDirOpt = None,
    debug: DebugOpt = False,
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
    from .embed import Embedder
    from .model import SiglipVisionModel
    from .decode import load_image
    from .visualize import png_bytes, render
    from .writers import atomic_write_bytes, check_writable

    check_writable(output)
    picture = load_image(image)
    emb = Embedder.load(model, random_init=random_init, norm=norm.value, image_size=image_size, device="cpu",
                        offline=offline, note=_note, cache_dir=cache_dir)
    title = f"{emb.model.name_or_path} - {image.name}"
    if random_init:
        title += "  (UNTRAINED: random weights, the patterns mean nothing)"
        _err("Warning: --random-init: untrained random weights; the picture shows an untrained model.")
    compare = SiglipVisionModel.random_init(emb.model.config) if compare_random else None
    result = render(picture, emb.preprocessing, emb.model, title, compare)
    atomic_write_bytes(output, png_bytes(result))
    _err(f"wrote {output} ({result.width}x{result.height})")


def _note(message: str) -> None:
    _err(message)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SiglipWarning):
        _err(f"Warning: {message}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    import warnings

    import signal

    global _default_showwarning
    fill_standard_fds()  # before any file is opened: an output must never get fd 2
    # A scheduler's SIGTERM (Slurm, Kubernetes) unwinds like Ctrl-C: temp files go, reports are written.
    signal.signal(signal.SIGTERM, _terminate)
    _default_showwarning, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        app(prog_name="siglip")
    except BrokenPipeError:  # stdout's reader has gone (`siglip models | head -1`): stop quietly, as cat does
        mute(1)
        raise SystemExit(141) from None
