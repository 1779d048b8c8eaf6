"""Embedding many images: folder mode (one file per image, resumable) or one stacked file (streamed).

    from siglip_cli import Embedder
    from siglip_cli.batch import embed_to
    summary = embed_to(Embedder.load(pool="map"), ["photos/"], "out/")   # out/<tree>/<name>.npy

The CLI is a thin shell over `embed_to`; notebooks can call it, or `Embedder.embed` for arrays.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from .embed import Embedder, Result
from .errors import ImageError, OutputError, UsageError
from .inputs import Input, collect
from .decode import load_image
from .writers import (FORMATS, StackedWriter, atomic_write_bytes, check_inside, check_writable, output_format,
                      output_path_for, write_embeddings)

OUT_DTYPES = ("float32", "float16")


@dataclass
class Outcome:
    """One record of --report: what happened to one input."""

    path: str
    status: str  # embedded | skipped | failed
    reason: str | None = None
    output: str | None = None


@dataclass
class Summary:
    embedded: int = 0
    skipped: int = 0
    failed: int = 0
    outputs: list[Path] = field(default_factory=list)
    shape: list[int] | None = None  # of the stacked array, or of each file in folder mode
    dtype: str = "float32"

    def line(self) -> str:
        return f"{self.embedded} embedded, {self.skipped} skipped (output exists), {self.failed} failed"


def is_folder_output(out: Path) -> bool:
    """`-o DIR/` (trailing slash) or an existing directory means one file per image."""
    return str(out).endswith(("/", "\\")) or Path(out).is_dir()


def embed_to(embedder: Embedder, inputs: Iterable[str | Path | Input], out: str | Path, *,
             fmt: str = ".npy", out_dtype: str = "float32", overwrite: bool = False, fail_fast: bool = False,
             batch_size: int = 8, workers: int | None = None, report: str | Path | None = None,
             on_outcome: Callable[[Outcome], None] | None = None, stack: bool | None = None) -> Summary:
    """Embed inputs (paths, folders, globs, or collected Inputs) into a folder or one file.

    Each input ends as an Outcome (passed to on_outcome as it happens, and written to `report` as
    JSON lines); a failed image never stops the others unless fail_fast. With a file output, `stack`
    says whether rows are stacked [B, ...] (default: unless there is exactly one input).
    """
    fmt = fmt if fmt.startswith(".") else "." + fmt
    if out_dtype not in OUT_DTYPES:
        raise UsageError(f"unknown --out-dtype {out_dtype!r}: use float32 or float16")
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}: use npy or safetensors")
    inputs = list(inputs)
    items = inputs if all(isinstance(i, Input) for i in inputs) else collect([str(i) for i in inputs])
    folder = is_folder_output(out)
    out = Path(out)
    if folder:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create output folder {str(out)!r}: {e.strerror or e}") from None
    else:
        output_format(out)
        check_writable(out)
    if report is not None:
        check_writable(Path(report))
    run = _Run(embedder, items, out, folder, fmt, np.dtype(out_dtype), overwrite, fail_fast, report, on_outcome,
               stack if stack is not None else len(items) != 1)
    return run.go(batch_size, workers)


class _Run:
    def __init__(self, embedder, items, out, folder, fmt, dtype, overwrite, fail_fast, report, on_outcome, stack):
        self.embedder, self.out, self.folder = embedder, out, folder
        self.fmt, self.dtype, self.overwrite, self.fail_fast = fmt, dtype, overwrite, fail_fast
        self.report = Path(report) if report else None
        self.on_outcome = on_outcome
        self.summary = Summary(dtype=dtype.name)
        self.records: list[str] = []
        self.metadata = {**embedder.metadata(), "dtype": dtype.name}
        self.items = self._no_collisions(items) if folder else items
        self.single = not folder and not stack
        self.stacked = None
        if not folder and not self.single:
            self.stacked = StackedWriter(out, len(items), self.metadata, [str(i.path) for i in items])
        self.sources: list[str] = []

    def _no_collisions(self, items: list[Input]) -> list[Input]:
        """Two inputs that would write the same output file: the later one fails, nothing is overwritten."""
        first: dict[str, Input] = {}
        out = []
        for item in items:
            key = os.path.normcase(str(self.target(item)))
            if item.error is None and key in first:
                item = Input(item.path, item.rel, f"its output {self.target(item)} would overwrite that of "
                                                  f"{first[key].path}: embed them into separate folders")
            elif item.error is None:
                first[key] = item
            out.append(item)
        return out

    def target(self, item: Input) -> Path:
        return output_path_for(self.out, item.rel, self.fmt)

    def load(self, item: Input) -> Image.Image | None:
        """On a worker thread: None when the output already exists (resume), else the decoded image."""
        if item.error is not None:
            raise ImageError(str(item.path), item.error)
        if self.folder and not self.overwrite and self.target(item).exists():
            return None
        return load_image(item.path, max_pixels=self.embedder.max_pixels, draft=self.embedder.draft)

    def record(self, outcome: Outcome) -> None:
        setattr(self.summary, outcome.status, getattr(self.summary, outcome.status) + 1)
        self.records.append(json.dumps(asdict(outcome)))
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def write(self, item: Input, row: np.ndarray) -> str:
        row = row.astype(self.dtype, copy=False)
        self.summary.shape = list(row.shape)
        if self.folder:
            target = self.target(item)
            check_inside(self.out, target)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot create {target.parent}: {e.strerror or e}") from None
            check_inside(self.out, target)
            write_embeddings(target, row, {**self.metadata, "source": str(item.path)})
            return str(target)
        if self.single:
            self.summary.outputs = write_embeddings(self.out, row, {**self.metadata, "source": str(item.path)})
            return str(self.out)
        self.stacked.add(row)
        self.sources.append(str(item.path))
        return str(self.out)

    def go(self, batch_size: int, workers: int | None) -> Summary:
        try:
            for r in self.embedder.embed_iter(self.items, batch_size, workers, load=self.load):
                self.handle(r)
            if self.stacked is not None:
                self.summary.outputs = self.stacked.finish(self.sources)
                if self.summary.shape:
                    self.summary.shape = [self.stacked.count, *self.summary.shape]
        except BaseException:
            if self.stacked is not None:
                self.stacked.abort()
            raise
        finally:
            if self.report is not None:
                atomic_write_bytes(self.report, "".join(line + "\n" for line in self.records).encode())
        return self.summary

    def handle(self, r: Result) -> None:
        item: Input = r.item
        if r.skipped:
            self.record(Outcome(str(item.path), "skipped", output=str(self.target(item))))
        elif r.error is not None:
            self.record(Outcome(str(item.path), "failed", reason=r.error))
            if self.fail_fast:
                raise ImageError(str(item.path), f"{r.error} (stopped by --fail-fast)")
        else:
            try:
                output = self.write(item, r.embedding)
            except OutputError as e:
                if self.fail_fast or not self.folder:
                    raise
                self.record(Outcome(str(item.path), "failed", reason=str(e)))
                return
            self.record(Outcome(str(item.path), "embedded", output=output))

