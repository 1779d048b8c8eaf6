"""The text commands, `siglip embed-text`, `siglip classify`, `siglip search`, and `siglip convert` (cli.py
registers them under its one error boundary). Each validates its options, calls one library module (text.py,
search.py, convert.py) and renders; no tensor code.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from . import options as opt
from .console import err_line, printable
from .errors import EXIT_FAILED, ImageError, UsageError

TEXT_EXIT_CODES_HELP = "Exit codes: 0 done; 2 usage or model error."
SEARCH_EXIT_CODES_HELP = ("Exit codes: 0 done (also with no results); 1 the --image query cannot be read; 2 usage "
                          "or model error.")
CLASSIFY_EXIT_CODES_HELP = "Exit codes: 0 every image classified; 1 some image failed; 2 usage or model error."


def _siglip(model: str | None, offline: bool, cache_dir: Path | None, device: str, text: bool = True):
    from .hub import resolve_model
    from .text import Siglip

    source = resolve_model(model, offline=offline, cache_dir=cache_dir, note=err_line)
    return Siglip.load(source, device=device, offline=offline, cache_dir=cache_dir, note=err_line, text=text)


def embed_text(
    texts: opt.Texts = None,
    output: opt.TextOutput = ...,
    from_file: opt.TextsFrom = None,
    model: opt.Model = None,
    device: opt.Device = "auto",
    offline: opt.Offline = False,
    cache_dir: opt.CacheDir = None,
    debug: opt.Debug = False,
) -> None:
    """Embed texts with a SigLIP text tower: one stacked array [T, D], a row per text, in order.

    D is the image embedding's width (768 for the base model), so rows compare with `siglip embed
    --pool map` vectors. Each text is lowercased (SigLIP 1 also drops punctuation), tokenized with the
    checkpoint's own tokenizer and padded to the full length, as SigLIP was trained. The texts are
    recorded as the file's `sources`; the model as in `siglip embed`.

    Examples:

      siglip embed-text "a photo of a cat" "a red car" -o text.npy

      siglip embed-text --from-file captions.txt -o captions.safetensors
    """
    from .inputs import read_text_lines
    from .writers import StackedWriter, check_output_file, check_sidecar_free

    all_texts = list(texts or []) + (read_text_lines(from_file, "--from-file") if from_file else [])
    if not all_texts:
        raise UsageError("no texts: give them as arguments (quoted), or --from-file FILE (one a line)")
    check_output_file(output)
    check_sidecar_free(output)
    if from_file and from_file != "-" and output.exists() and Path(from_file).exists() \
            and output.samefile(from_file):
        raise UsageError(f"output {str(output)!r} is also the --from-file input: choose another output file")
    siglip = _siglip(model, offline, cache_dir, device)
    siglip.need_text()
    vectors = siglip.embed_texts(all_texts)
    writer = StackedWriter(output, len(all_texts), siglip.text_metadata())
    for text, row in zip(all_texts, vectors):
        writer.add(row, text)
    writer.finish()
    err_line(f"wrote {output} {list(vectors.shape)} float32: {len(all_texts)} texts")


def classify(
    images: opt.Images = None,
    labels: opt.Labels = None,
    labels_file: opt.LabelsFile = None,
    template: opt.Template = "a photo of a {}.",
    top: opt.TopLabels = None,
    as_json: opt.ClassifyJson = False,
    csv: opt.Csv = False,
    model: opt.Model = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "float32",
    batch_size: opt.BatchSize = 8,
    workers: opt.Workers = None,
    files_from: opt.FilesFrom = None,
    glob: opt.Glob = None,
    ext: opt.Ext = None,
    hidden: opt.Hidden = False,
    fail_fast: opt.FailFast = False,
    max_pixels: opt.MaxPixels = 178_956_970,
    exact_decode: opt.ExactDecode = False,
    offline: opt.Offline = False,
    cache_dir: opt.CacheDir = None,
    debug: opt.Debug = False,
) -> None:
    """Zero-shot labels: each image against each label, with SigLIP's sigmoid probabilities, best first.

    Each label is put in the template and embedded once; each image is embedded as `siglip embed --pool
    map` does. A probability belongs to one image and one label alone (SigLIP scores pairs with a
    sigmoid, not a softmax): several labels can be likely, or none, and they do not sum to 1. Inputs
    are taken as by `siglip embed` (files, folders, globs, --files-from); an image that cannot be read
    is reported on stderr as `path: reason` and the others go on.

    Examples:

      siglip classify photo.jpg --labels cat,dog,car

      siglip classify photos/ --labels-file labels.txt --top 3

      siglip classify photos/ --labels "cat,dog" --template "a blurry photo of a {}." --json

      siglip classify photos/ --labels indoor,outdoor --csv > scenes.csv
    """
    from .inputs import collect, read_text_lines
    from .precision import check_precision
    from .text import prompts

    if as_json and csv:
        raise UsageError("use either --json or --csv, not both")
    names = [s.strip() for s in labels.split(",")] if labels else []
    names += read_text_lines(labels_file, "--labels-file", comments=True) if labels_file else []
    prompts(names, template)  # the labels and template checked before any model is loaded
    if not images and not files_from:
        raise UsageError("no images: give image files, folders or patterns, or --files-from LIST")
    items = collect(list(images or []), files_from, glob, ext, hidden)
    if not items:
        raise UsageError("no images found in the inputs (folders are searched for image files by suffix; see "
                         "--glob, --ext, --hidden)")
    check_precision(dtype, "none", device)
    siglip = _siglip(model, offline, cache_dir, device)
    siglip.need_text()
    embedder = siglip.embedder(device=device, dtype=dtype, max_pixels=max_pixels, exact_decode=exact_decode)
    render = _Rows(names, top, "json" if as_json else "csv" if csv else "table")
    failed = 0
    for row in siglip.classify(items, names, template, embedder=embedder, batch_size=batch_size, workers=workers):
        if row.error is not None:
            failed += 1
            if fail_fast:
                raise ImageError(row.source, f"{row.error} (stopped by --fail-fast)")
            err_line(f"{row.source}: {row.error}")
            continue
        render(row)
    if failed:
        if len(items) == 1:
            raise typer.Exit(EXIT_FAILED)
        err_line(f"{len(items) - failed} classified, {failed} failed")
        raise typer.Exit(EXIT_FAILED)


class _Rows:
    """Prints one image's labels as it is done: a readable block, a JSON line, or a CSV row."""

    def __init__(self, labels: list[str], top: int | None, style: str):
        self.labels, self.top, self.style = labels, top, style
        self.width = max(len(printable(label)) for label in labels)
        if style == "csv":
            import csv

            self.csv = csv.writer(sys.stdout, lineterminator="\n")
            self.csv.writerow(["path", *labels])

    def __call__(self, row) -> None:
        ranked = row.ranked()[:self.top]
        if self.style == "json":
            logits = dict(zip(row.labels, row.logits.tolist()))
            typer.echo(json.dumps({"path": row.source, "labels": [
                {"label": label, "probability": p, "logit": logits[label]} for label, p in ranked]},
                ensure_ascii=False))
        elif self.style == "csv":
            self.csv.writerow([row.source, *(f"{p:.6f}" for p in row.probabilities.tolist())])
            sys.stdout.flush()
        else:
            lines = [printable(row.source)]
            lines += [f"  {p:7.2%}  {printable(label)}" for label, p in ranked]
            typer.echo("\n".join(lines))


def search(
    args: opt.SearchArgs = None,
    image: opt.QueryImage = None,
    top: opt.TopHits = 10,
    threshold: opt.Threshold = None,
    as_json: opt.SearchJson = False,
    paths: opt.PathsOnly = False,
    model: opt.Model = None,
    device: opt.Device = "auto",
    offline: opt.Offline = False,
    cache_dir: opt.CacheDir = None,
    debug: opt.Debug = False,
) -> None:
    """Find images by a text (or an image) among embeddings that `siglip embed` wrote.

    EMBEDDINGS are stacked files (-o FILE: their source paths are in the metadata) and folder outputs
    (-o DIR/: a small index, DIR/.siglip-index/, is kept beside the files and refreshed when they
    change). Pooled files (--pool map) are searched as they are; patch files (--pool none) go through
    the model's pooling head, nothing is re-embedded. The query is embedded with the model the files
    record (or --model, which must be that model). A text's score is SigLIP's sigmoid probability that
    the image matches it; an image's, the cosine. Best first.

    Examples:

      siglip search "a dog on a beach" emb/

      siglip search "sunset" emb/ --top 50 --threshold 0.1 --paths | xargs -d '\\n' cp -t picks/

      siglip search --image query.jpg emb/ photos.safetensors --json
    """
    from .search import search as run

    args = list(args or [])
    query = None
    if image is None:
        if not args:
            raise UsageError('no query: give the text to search for, e.g. siglip search "a red car" emb/')
        query = args.pop(0)
    if as_json and paths:
        raise UsageError("use either --json or --paths, not both")
    hits = run(query, args, image=image, k=top, threshold=threshold, model=model, device=device, offline=offline,
               cache_dir=cache_dir, note=err_line)
    for hit in hits:
        if as_json:
            typer.echo(json.dumps(hit.to_dict(), ensure_ascii=False))
        elif paths:  # the real bytes, undecodable ones too, one a line: what xargs -d '\n' needs
            sys.stdout.flush()
            sys.stdout.buffer.write(os.fsencode(hit.source) + b"\n")
        else:
            score = f"{hit.probability:7.2%}  cos {hit.cosine:+.3f}" if hit.probability is not None \
                else f"cos {hit.cosine:+.3f}"
            typer.echo(f"{hit.rank:>4}  {score}  {printable(hit.source)}")
    if not hits and not (as_json or paths):
        err_line("no results" + (" above the threshold" if threshold is not None else ""))


def convert(
    source: opt.ConvertSource,
    output: opt.ConvertOutput,
    offline: opt.Offline = False,
    cache_dir: opt.CacheDir = None,
    debug: opt.Debug = False,
) -> None:
    """Write any checkpoint siglip reads as a Hugging Face transformers folder.

    SOURCE: a transformers, timm or open_clip checkpoint folder, a big_vision .npz file, or a hub id.
    The weights are loaded strictly (every tensor named and shape-checked) and written as
    model.safetensors with config.json, preprocessor_config.json and the tokenizer files, so that
    transformers (SiglipModel / SiglipVisionModel.from_pretrained) and other tools read them.

    Examples:

      siglip convert ./vit_base_patch16_siglip_224.webli/ -o siglip-base-hf/

      siglip convert webli_en_b16_224_63724782.npz -o siglip-base-hf/
    """
    from .convert import convert as run
    from .hub import resolve_model

    source = resolve_model(source, offline=offline, cache_dir=cache_dir, note=err_line)
    names = run(source, output, note=err_line)
    err_line(f"wrote {output}: {', '.join(names)}")


def register(app: typer.Typer) -> None:
    app.command("embed-text", no_args_is_help=True, epilog=TEXT_EXIT_CODES_HELP)(embed_text)
    app.command("classify", no_args_is_help=True, epilog=CLASSIFY_EXIT_CODES_HELP)(classify)
    app.command("search", no_args_is_help=True, epilog=SEARCH_EXIT_CODES_HELP)(search)
    app.command("convert", no_args_is_help=True, epilog=TEXT_EXIT_CODES_HELP)(convert)
