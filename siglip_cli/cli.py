"""The `siglip` command line: options, rendering, and the one error boundary. No tensor code here.

Each command validates its options, calls one library function and renders what it returns. torch and
friends are imported inside command bodies, so `siglip --help` stays fast; the option choices are the
library's own tuples (choices.py, config.PRESETS), shown in the help and matched case-insensitively.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from . import __version__
from . import options as opt
from .console import err_line, fill_standard_fds, mute
from .errors import EXIT_FAILED, ImageError, SiglipError, SiglipWarning, UsageError
from .signals import install as catch_sigterm, unwind_on_sigterm

# Typer vendors click; its UsageError (bad option values, unknown options) is BadParameter's base.
_ClickUsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

EXIT_CODES_HELP = "Exit codes: 0 all inputs embedded; 1 some input failed; 2 usage or model error."
HUB_EXIT_CODES_HELP = "Exit codes: 0 done; 2 any error (not found, gated, offline, corrupt, disk full ...)."


def _debug_env() -> bool:
    return os.environ.get("SIGLIP_DEBUG", "") not in ("", "0")


def _debug_on(ctx: typer.Context) -> bool:
    return bool(ctx.meta.get(opt.DEBUG)) or _debug_env()


_err = err_line  # one line on stderr


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
        except BrokenPipeError:  # stdout's reader has gone (`| head -1`): stop quietly, as cat does
            mute(1)
            raise typer.Exit(141) from None
        except _ClickUsageError as e:
            # The parser's own errors, also one line: what is wrong, and where the help is.
            where = e.ctx.command_path if e.ctx is not None else "siglip"
            _err(f"Error: {e.format_message()} (see `{where} --help`)")
            raise typer.Exit(2) from None


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


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_show_version,
                                          is_eager=True)] = False,
    debug: opt.Debug = False,
) -> None:
    """SigLIP vision-transformer embeddings for images, from a from-scratch PyTorch model.

    Start with `siglip embed --help`.
    """
    if ctx.invoked_subcommand != "embed":  # embed starts unwinding once it can write its report
        unwind_on_sigterm()


@app.command(no_args_is_help=True, epilog=EXIT_CODES_HELP)
def embed(
    inputs: opt.Inputs = None,
    output: opt.Output = ...,
    model: opt.Model = None,
    random_init: opt.RandomInit = False,
    pool: opt.Pool = "none",
    norm: opt.Norm = "auto",
    image_size: opt.ImageSize = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "float32",
    quantize: opt.Quantize = "none",
    exact_decode: opt.ExactDecode = False,
    batch_size: opt.BatchSize = 8,
    workers: opt.Workers = None,
    fmt: opt.Format = "npy",
    out_dtype: opt.OutDtype = "float32",
    files_from: opt.FilesFrom = None,
    glob: opt.Glob = None,
    ext: opt.Ext = None,
    hidden: opt.Hidden = False,
    overwrite: opt.Overwrite = False,
    fail_fast: opt.FailFast = False,
    max_pixels: opt.MaxPixels = 178_956_970,
    decode_memory: opt.DecodeMemory = None,
    report: opt.Report = None,
    shard_spec: opt.Shard = None,
    quiet: opt.Quiet = False,
    engine: opt.Engine = "local",
    ray_address: opt.RayAddress = None,
    ray_workers: opt.RayWorkers = 1,
    ray_gpus: opt.RayGpus = None,
    ray_cpus: opt.RayCpus = None,
    offline: opt.Offline = False,
    cache_dir: opt.CacheDir = None,
    debug: opt.Debug = False,
) -> None:
    """Embed images with a SigLIP vision model and write the embeddings to files.

    One image writes its array ([196, 768] patch embeddings for the base model, or [768] with --pool).
    Several images and a file output write one stacked array [B, ...] in input order, streamed to disk,
    with the source paths recorded (in the .safetensors metadata, or in a sidecar OUT.npy.json).
    A folder output (-o DIR/) writes DIR/PATH.npy per image (PATH: below the input folder); a rerun skips
    images already done. An image that cannot be read is reported once as `path: reason`, and the
    others are still embedded. Every file is written atomically.

    Examples:

      siglip embed photo.jpg -o photo.npy

      siglip embed a.jpg b.png c.webp --pool map -o images.safetensors

      siglip embed photos/ -o embeddings/ --pool map --report run.jsonl

      find /data -name '*.jpg' | siglip embed --files-from - -o out/ --shard 0/4

      siglip embed photos/ -o embeddings/ --quantize int8        # CPU, 1.6-2.6x faster, approximate

      siglip embed photos/ -o embeddings/ --device cuda --dtype bfloat16

      siglip embed /shared/photos/ -o /shared/emb/ --engine ray --ray-workers 8     # a Ray cluster, 8 GPUs

      siglip embed photo.jpg --random-init -o smoke.npy
    """
    from .plan import ReportGuard, is_folder_output, plan_embed
    from .ray_engine import RaySettings, check_engine

    settings = RaySettings(ray_address, ray_workers, ray_gpus, ray_cpus, debug=debug or _debug_env())
    if engine == "local" and (ray_address, ray_workers, ray_gpus, ray_cpus) != (None, 1, None, None):
        raise UsageError("the --ray-* options need --engine ray")
    check_engine(engine, is_folder_output(output), settings)  # before the output folder is made
    # SIGTERM unwinds like Ctrl-C from here on (main installs the handler): temp files go, and the report is
    # written: empty while no input is reached (the guard), then by run_plan.
    with ReportGuard(report) as guard:
        unwind_on_sigterm()  # a SIGTERM during start-up unwinds here, and the report is written
        plan = plan_embed(inputs or [], output, files_from=files_from, globs=glob, exts=ext, hidden=hidden, fmt=fmt,
                          report=report, protected=[files_from or "", model or ""], shard_spec=shard_spec,
                          guard=guard)
        if plan.idle:  # a shard with nothing to do (its empty report is written)
            _err(plan.idle)
            return
        from .precision import check_precision

        check_precision(dtype, quantize, device)  # before a model is downloaded or loaded
        load = dict(pool=pool, norm=norm, image_size=image_size, device=device, max_pixels=max_pixels, dtype=dtype,
                    quantize=quantize, exact_decode=exact_decode,
                    decode_memory=None if decode_memory is None else int(decode_memory * 1e9))
        # With Ray the driver only plans and records: its model stays on the CPU in float32 (for the metadata);
        # the actors load their own as asked.
        here = load if engine == "local" else {**load, "device": "cpu", "dtype": "float32", "quantize": "none"}
        embedder, source = _embedder(model, random_init, offline, cache_dir, **here)
        run_engine = None
        if engine == "ray":
            from .ray_engine import RayEngine, WorkerSpec
            from .writers import output_path_for

            embedder.dtype, embedder.quantize = dtype, quantize  # what the actors compute in (the metadata)
            spec = WorkerSpec(source, random_init, load, str(plan.output), out_dtype, overwrite, batch_size, workers,
                              threads=1)
            run_engine = RayEngine(settings, spec, lambda item: output_path_for(plan.output, item.rel, plan.fmt))
            run_engine.check()  # a wrong address is refused now; the cluster starts when there are images to embed
        if random_init:
            _err("Warning: --random-init: untrained random weights (seed 0); these embeddings mean nothing. "
                 "Use --model with a real checkpoint for meaningful ones.")
        from .batch import run_plan
        from .progress import EmbedProgress

        # One named image, or --fail-fast: the final error names the failure, not a line above it.
        with EmbedProgress(len(plan.items), enabled=not quiet, log_failures=not plan.single and not fail_fast) \
                as progress:
            guard.due = False  # run_plan writes the report from here on, whatever happens
            summary = run_plan(embedder, plan, out_dtype=out_dtype, overwrite=overwrite, fail_fast=fail_fast,
                               batch_size=batch_size, workers=workers, on_outcome=progress.outcome,
                               engine=run_engine)
    if plan.single and summary.failed:
        raise ImageError(progress.failures[0].path, progress.failures[0].reason)
    if not plan.folder and not summary.embedded:
        raise ImageError(str(output), f"not written: none of the {len(plan.items)} inputs could be embedded")
    if not quiet:
        where = f"{output} (one file per image)" if plan.folder else ", ".join(map(str, summary.outputs))
        shape = f" {summary.shape} {summary.dtype}" if summary.shape else ""
        _err(f"wrote {where}{shape}: {summary.line()}" if summary.embedded else summary.line())
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


def _embedder(model: str | None, random_init: bool, offline: bool, cache_dir: Path | None, **options):
    """Embedder.load with --model resolved once: a folder, or a hub id from the cache (or downloaded)."""
    from .embed import Embedder, check_load_options

    check_load_options(model, random_init, options.get("image_size"))  # before any lookup or download
    source = None
    if not random_init:
        from .hub import resolve_model

        source = resolve_model(model, offline=offline, cache_dir=cache_dir, note=_err)
    return Embedder.load(source, random_init=random_init, **options), source


@app.command("download-weights", epilog=HUB_EXIT_CODES_HELP)
def download_weights(
    model_id: opt.ModelId = "google/siglip-base-patch16-224",
    revision: opt.Revision = None,
    local_dir: opt.LocalDir = None,
    cache_dir: opt.CacheDir = None,
    verify: opt.Verify = False,
    debug: opt.Debug = False,
) -> None:
    """Download a SigLIP checkpoint from the Hugging Face hub, verified.

    Fetches only config.json, preprocessor_config.json, the safetensors weights and the SentencePiece
    tokenizer (never pickles or other frameworks' files), checks each file's sha256 against the hub's
    record and the tensor shapes against the config, then prints what it stored. HF_TOKEN, HF_HOME, HF_ENDPOINT
    and HF_HUB_OFFLINE are honoured.

    Examples:

      siglip download-weights

      siglip download-weights google/siglip-so400m-patch14-384

      siglip download-weights google/siglip-base-patch16-224 --verify
    """
    from .hub import download_weights as download, parse_model_spec, verify_weights
    from .model import SiglipVisionModel
    from .views import download_summary

    repo_id, revision = parse_model_spec(model_id, revision)
    if verify:
        done = verify_weights(repo_id, revision, cache_dir=cache_dir, local_dir=local_dir,
                              model_class=SiglipVisionModel)
        _err("verified: every file matches its recorded hash, and the weights fit config.json")
    else:
        done = download(repo_id, revision, cache_dir=cache_dir, local_dir=local_dir, note=_err,
                        model_class=SiglipVisionModel)
    typer.echo(download_summary(done))


@app.command("models", epilog=HUB_EXIT_CODES_HELP)
def models(
    as_json: opt.Json = False,
    layouts: opt.ModelLayouts = False,
    cache_dir: opt.CacheDir = None,
    debug: opt.Debug = False,
) -> None:
    """List the known SigLIP and SigLIP 2 fixed-resolution checkpoints, and which are in the local cache.

    Download sizes are estimates: the full checkpoint (vision and text towers, float32).

    Examples:

      siglip models

      siglip models --layouts      # the same weights in timm's and open_clip's layouts

      siglip models --json
    """
    from .catalog import model_rows

    rows = model_rows(cache_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from .views import LAYOUTS_FOOTNOTE, MODELS_FOOTNOTE, print_models

    print_models(rows, layouts)
    typer.echo(LAYOUTS_FOOTNOTE if layouts else MODELS_FOOTNOTE)


from . import cli_learn, cli_text  # noqa: E402  (more commands, under this app's error boundary)

cli_learn.register(app)
cli_text.register(app)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SiglipWarning):
        _err(f"Warning: {message}")
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    import warnings

    global _default_showwarning
    fill_standard_fds()  # before any file is opened: an output must never get fd 2
    catch_sigterm()  # a scheduler's SIGTERM (Slurm, Kubernetes) unwinds like Ctrl-C (signals.py)
    _default_showwarning, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        app(prog_name="siglip")
    except BrokenPipeError:  # stdout's reader has gone (`siglip models | head -1`): stop quietly, as cat does
        mute(1)
        raise SystemExit(141) from None
