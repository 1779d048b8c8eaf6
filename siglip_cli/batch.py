"""Embedding many images: folder mode (one file per image, resumable) or one stacked file (streamed).

    from siglip_cli import Embedder
    from siglip_cli.batch import embed_to
    summary = embed_to(Embedder.load(pool="map"), ["photos/"], "out/")   # out/<tree>/<name>.npy

A run is a plan (plan.py: inputs, output, the resume filter), the Embedder's two stages (decode on
threads, the model in batches) and the writers, in input order. The CLI plans with plan_embed and runs
with run_plan; notebooks call embed_to, or `Embedder.embed` for arrays.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .choices import OUT_DTYPES
from .console import unicode_text
from .embed import Embedder, Result, default_workers
from .errors import ImageError, OutputError, OutputGoneError, UsageError
from .inputs import Input
from .plan import Plan, Step, check_report, existing_output, is_folder_output, plan_items, resume  # noqa: F401
from .writers import (StackedWriter, atomic_write_bytes, check_inside, output_path_for, write_embeddings,
                      write_manifest)


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


def check_out_dtype(out_dtype: str) -> None:
    if out_dtype not in OUT_DTYPES:
        raise UsageError(f"unknown --out-dtype {out_dtype!r}: use float32 or float16")


def embed_to(embedder: Embedder, inputs: Iterable[str | Path | Input], out: str | Path, *,
             fmt: str = ".npy", out_dtype: str = "float32", overwrite: bool = False, fail_fast: bool = False,
             batch_size: int = 8, workers: int | None = None, report: str | Path | None = None,
             on_outcome: Callable[[Outcome], None] | None = None, stack: bool | None = None) -> Summary:
    """Embed inputs (paths, folders, globs, or collected Inputs) into a folder or one file.

    Each input ends as an Outcome (passed to on_outcome as it happens, and written to `report` as
    JSON lines, also when the run is interrupted); a failed image never stops the others unless
    fail_fast. With a file output, `stack` says whether rows are stacked [B, ...] (default: unless
    there is exactly one input).
    """
    check_out_dtype(out_dtype)
    plan = plan_items(inputs, out, fmt=fmt, report=report, stack=stack)
    return run_plan(embedder, plan, out_dtype=out_dtype, overwrite=overwrite, fail_fast=fail_fast,
                    batch_size=batch_size, workers=workers, on_outcome=on_outcome)


def run_plan(embedder: Embedder, plan: Plan, *, out_dtype: str = "float32", overwrite: bool = False,
             fail_fast: bool = False, batch_size: int = 8, workers: int | None = None,
             on_outcome: Callable[[Outcome], None] | None = None, engine: Engine | None = None) -> Summary:
    """Run a plan (plan.plan_embed, plan.plan_items): its report is written however the run ends.

    engine: what embeds the steps (default embedded_in_order, here; ray_engine.RayEngine on a cluster).
    """
    check_out_dtype(out_dtype)
    run = _Run(embedder, plan, np.dtype(out_dtype), overwrite, fail_fast, on_outcome)
    try:
        summary = run.go(batch_size, workers, engine)
    except BaseException:
        if plan.report is not None:
            with contextlib.suppress(OutputError):  # the run's own error is the one to show
                write_report(plan.report, run.records())
        raise
    if plan.report is not None:
        write_report(plan.report, run.records())
    return summary


def write_report(path: Path, records: list[str]) -> None:
    """The JSON-lines report, atomically (or into a FIFO or device such as /dev/stdout)."""
    atomic_write_bytes(path, "".join(line + "\n" for line in records).encode(), through=True)


def embedded_in_order(embedder: Embedder, steps: Iterable[Step], batch_size: int = 8,
                      workers: int | None = None) -> Iterator[tuple[Step, Result | None]]:
    """Each step in order, with the Embedder's Result for those to embed (None for the others): only
    inputs to embed reach the decoding threads and the model."""
    waiting: deque[Step] = deque()

    def to_embed() -> Iterator[Input]:
        for step in steps:
            waiting.append(step)
            if step.status == "embed":
                yield step.item

    for result in embedder.embed_iter(to_embed(), batch_size, workers):
        while waiting[0].status != "embed":
            yield waiting.popleft(), None
        yield waiting.popleft(), result
    while waiting:
        yield waiting.popleft(), None


class _Run:
    def __init__(self, embedder: Embedder, plan: Plan, dtype: np.dtype, overwrite: bool, fail_fast: bool,
                 on_outcome: Callable[[Outcome], None] | None):
        self.embedder, self.plan, self.out, self.folder = embedder, plan, plan.output, plan.folder
        self.dtype, self.overwrite, self.fail_fast = dtype, overwrite, fail_fast
        self.on_outcome = on_outcome
        self.summary = Summary(dtype=dtype.name)
        self.outcomes: list[Outcome] = []
        self.metadata = {**embedder.metadata(), "dtype": dtype.name}
        self.stacked = None
        if not plan.folder and not plan.single:
            self.stacked = StackedWriter(plan.output, len(plan.items), self.metadata)

    def target(self, item: Input) -> Path:
        return output_path_for(self.out, item.rel, self.plan.fmt)

    def record(self, outcome: Outcome) -> None:
        setattr(self.summary, outcome.status, getattr(self.summary, outcome.status) + 1)
        self.outcomes.append(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def records(self) -> list[str]:
        """The report's JSON lines (paths as valid Unicode: undecodable bytes as \\xNN)."""
        return [json.dumps({k: unicode_text(v) if isinstance(v, str) else v for k, v in asdict(o).items()})
                for o in self.outcomes]

    def write(self, item: Input, row: np.ndarray) -> str:
        row = row.astype(self.dtype, copy=False)
        self.summary.shape = list(row.shape)
        source = unicode_text(str(item.path))
        if self.folder:
            return write_row(self.out, self.target(item), row, {**self.metadata, "source": source}, self.overwrite)
        if self.plan.single:
            self.summary.outputs = write_embeddings(self.out, row, {**self.metadata, "source": source})
            return str(self.out)
        self.stacked.add(row, source)
        return str(self.out)

    def go(self, batch_size: int, workers: int | None, engine: Engine | None = None) -> Summary:
        workers = default_workers() if workers is None else workers
        before = None
        if self.folder and self.plan.items:
            before = write_manifest(self.out, {**self.metadata, "format": self.plan.fmt.lstrip(".")},
                                    input_roots(self.plan.items))
        steps = resume(self.plan.items, self.out if self.folder else None, self.plan.fmt, self.overwrite, workers)
        if before:
            steps = map(lambda step: claimed(step, before), steps)
        try:
            for step, result in (engine or embedded_in_order)(self.embedder, steps, batch_size, workers):
                self.handle(step, result)
            if self.stacked is not None:
                self.summary.outputs = self.stacked.finish()
                if self.summary.shape:
                    self.summary.shape = [self.stacked.count, *self.summary.shape]
        except BaseException as e:
            if self.stacked is not None:
                self.stacked.abort()
                # Rows that were waiting for the stacked file were never written: the report says so.
                why = str(e) if isinstance(e, OutputError) else "the run stopped before the file was complete"
                for o in self.outcomes:
                    if o.status == "embedded":
                        o.status, o.reason, o.output = "failed", f"not written: {why}", None
            raise
        return self.summary

    def handle(self, step: Step, r: Result | Written | None) -> None:
        item = step.item
        error = step.reason if r is None else r.error
        if step.status == "skipped":
            self.record(Outcome(str(item.path), "skipped", output=str(step.output)))
        elif isinstance(r, Written) and r.errno is not None:  # another process could not write it
            self.output_failed(item, OutputError(error, r.errno or None))
        elif error is not None:
            self.record(Outcome(str(item.path), "failed", reason=error))
            if self.fail_fast:
                raise ImageError(str(item.path), f"{error} (stopped by --fail-fast)")
        elif isinstance(r, Written):
            self.summary.shape = r.shape
            self.record(Outcome(str(item.path), "embedded", output=r.output))
        else:
            try:
                output = self.write(item, r.embedding)
            except OutputError as e:
                self.output_failed(item, e)
                return
            self.record(Outcome(str(item.path), "embedded", output=output))

    def output_failed(self, item: Input, e: OutputError) -> None:
        # A full disk, a quota, a size limit or a read-only file system fails every write that follows
        # too: stop, rather than compute every embedding only to throw it away.
        if self.folder:
            self.record(Outcome(str(item.path), "failed", reason=str(e)))
        if self.fail_fast or not self.folder or isinstance(e, OutputGoneError) or e.errno in _DEVICE_FULL:
            raise e


def write_row(out: Path, target: Path, row: np.ndarray, metadata: dict, overwrite: bool) -> str:
    """One image's file in a folder output (DIR/<rel>.npy), atomically: the folder run's and a Ray worker's write.

    Never outside `out` (a symlinked folder on the way is refused), never over a symlink or a folder.
    """
    check_inside(out, target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {target.parent}: {e.strerror or e}", e.errno) from None
    check_inside(out, target)
    if overwrite:
        existing_output(target)  # a symlink or folder there is never replaced
    write_embeddings(target, row, metadata)
    return str(target)


@dataclass
class Written:
    """An input another process (a Ray worker) embedded and wrote to `output`, or failed: `error`, and for
    an output it could not write, the OS's errno (0 when none), as OutputError carries it."""

    output: str | None = None
    shape: list[int] | None = None
    error: str | None = None
    errno: int | None = None


# The engine that turns steps into (step, Result or Written or None), in order: embedded_in_order on this
# machine, ray_engine's on a Ray cluster.
Engine = Callable[[Embedder, Iterable[Step], int, int], Iterator[tuple[Step, "Result | Written | None"]]]


def input_root(item: Input) -> str:
    """The folder an input's relative path starts from: DIR/a/b.jpg.npy came from <root>/a/b.jpg."""
    path, depth = unicode_text(os.path.abspath(item.path)), len(item.rel.parts)
    return str(Path(path).parents[depth - 1]) if depth else path


def input_roots(items: Iterable[Input]) -> set[str]:
    return {input_root(item) for item in items}


def claimed(step: Step, roots: list[str]) -> Step:
    """A skipped input whose output an earlier run wrote for ANOTHER image (same relative name, another input
    folder that still holds it: photos/2023/IMG_1.jpg and photos/2024/IMG_1.jpg into one DIR/) fails, rather
    than pass as done. Images that moved (the earlier folder no longer holds them) are skipped as usual."""
    if step.status != "skipped" or input_root(step.item) in roots:
        return step
    for root in roots:
        other = os.path.join(root, *step.item.rel.parts)
        with contextlib.suppress(OSError):
            if os.path.lexists(other) and not os.path.samefile(other, step.item.path):
                return Step(step.item, "failed", f"its output {step.output} holds the embedding of {other}, from an "
                                                 "earlier run: embed this folder into another output folder")
    return step


_DEVICE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
