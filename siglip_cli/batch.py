"""Embedding many images: folder mode (one file per image, resumable) or one stacked file (streamed).

    from siglip_cli import Embedder
    from siglip_cli.batch import embed_to
    summary = embed_to(Embedder.load(pool="map"), ["photos/"], "out/")   # out/<tree>/<name>.npy

The CLI is a thin shell over `embed_to`; notebooks can call it, or `Embedder.embed` for arrays.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .atomic import check_folder_writable, special_kind
from .console import unicode_text
from .embed import Embedder, Result
from .errors import ImageError, OutputError, OutputGoneError, UsageError
from .inputs import Input, collect
from .writers import (FORMATS, StackedWriter, atomic_write_bytes, check_inside, check_output_file, check_writable,
                      destination, output_path_for, write_embeddings)

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
    JSON lines, also when the run is interrupted); a failed image never stops the others unless
    fail_fast. With a file output, `stack` says whether rows are stacked [B, ...] (default: unless
    there is exactly one input).
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
        check_folder_writable(out)
    else:
        check_output_file(out)
    if report is not None:
        check_report(Path(report), out, folder, items, fmt)
    run = _Run(embedder, items, out, folder, fmt, np.dtype(out_dtype), overwrite, fail_fast, on_outcome,
               stack if stack is not None else len(items) != 1)
    try:
        summary = run.go(batch_size, workers)
    except BaseException:
        if report is not None:
            with contextlib.suppress(OutputError):  # the run's own error is the one to show
                write_report(Path(report), run.records())
        raise
    if report is not None:
        write_report(Path(report), run.records())
    return summary


def write_report(path: Path, records: list[str]) -> None:
    """The JSON-lines report, atomically (or into a FIFO or device such as /dev/stdout)."""
    atomic_write_bytes(path, "".join(line + "\n" for line in records).encode(), through=True)


def check_report(report: Path, out: Path, folder: bool, items: list[Input], fmt: str = ".npy",
                 protected: Iterable[str | Path] = ()) -> None:
    """--report must never overwrite an input, the output, its sidecar, a folder-mode output or a
    folder one needs, or another file of the run (`protected`: the --files-from list, a checkpoint
    folder and everything in it): refused before any work, and before any folder is created for it."""
    real = os.path.realpath(report)
    if folder:
        inside = os.path.relpath(real, os.path.realpath(out))
        taken = set()
        if inside != ".." and not inside.startswith("../"):
            for item in items:
                target = output_path_for(Path("."), item.rel, fmt)
                taken.add(target.as_posix())
                taken.update(p.as_posix() for p in target.parents)
        clash = inside in taken
    else:
        real_out = destination(out)[0]
        clash = real in (str(real_out), f"{real_out}.json")
    for p in protected:
        clash = clash or (os.path.isdir(p) and Path(os.path.realpath(p)) in Path(real).parents)
    if not clash and os.path.isfile(report):
        clash = any(_same(report, p) for p in [*protected, *(item.path for item in items)])
    if clash:
        raise UsageError(f"--report {str(report)!r} would overwrite an input or an output of this run: give the "
                         "report another name")
    check_writable(report, through=True)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class _Run:
    def __init__(self, embedder, items, out, folder, fmt, dtype, overwrite, fail_fast, on_outcome, stack):
        self.embedder, self.out, self.folder = embedder, out, folder
        self.fmt, self.dtype, self.overwrite, self.fail_fast = fmt, dtype, overwrite, fail_fast
        self.on_outcome = on_outcome
        self.summary = Summary(dtype=dtype.name)
        self.outcomes: list[Outcome] = []
        self.metadata = {**embedder.metadata(), "dtype": dtype.name}
        self.items = self._no_collisions(items) if folder else items
        self.single = not folder and not stack
        self.stacked = None
        if not folder and not self.single:
            self.stacked = StackedWriter(out, len(items), self.metadata)

    def _no_collisions(self, items: list[Input]) -> list[Input]:
        """Two inputs whose outputs would be the same file, or a file and a folder (`k.npy` and
        `k.npy/q.png.npy`): the later one fails, nothing is overwritten or wrongly skipped."""
        files: dict[str, Input] = {}  # output file -> its input
        folders: dict[str, Input] = {}  # folder some output needs -> the first input needing it
        out = []
        for item in items:
            if item.error is None:
                target = self.target(item)
                key = os.path.normcase(str(target))
                parents = [os.path.normcase(str(p)) for p in target.parents if self.out in p.parents]
                if key in files:
                    clash = f"would overwrite that of {files[key].path}"
                else:
                    other = folders.get(key) or next((files[p] for p in parents if p in files), None)
                    clash = other and f"and that of {other.path} need the same path as a file and as a folder"
                if clash:
                    item = Input(item.path, item.rel, f"its output {target} {clash}: embed them into separate "
                                                      "folders")
                else:
                    files[key] = item
                    for p in parents:
                        folders.setdefault(p, item)
            out.append(item)
        return out

    def target(self, item: Input) -> Path:
        return output_path_for(self.out, item.rel, self.fmt)

    def skip(self, item: Input) -> bool:
        """On a worker thread: True when the item's output already exists (resume)."""
        if item.error is not None:
            raise ImageError(str(item.path), item.error)
        if not self.folder or self.overwrite:
            return False
        try:
            return _existing_output(self.target(item))
        except OutputError as e:
            raise ImageError(str(item.path), str(e)) from None

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
            target = self.target(item)
            check_inside(self.out, target)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"cannot create {target.parent}: {e.strerror or e}") from None
            check_inside(self.out, target)
            if self.overwrite:
                _existing_output(target)  # a symlink or folder there is never replaced
            write_embeddings(target, row, {**self.metadata, "source": source})
            return str(target)
        if self.single:
            self.summary.outputs = write_embeddings(self.out, row, {**self.metadata, "source": source})
            return str(self.out)
        self.stacked.add(row, source)
        return str(self.out)

    def go(self, batch_size: int, workers: int | None) -> Summary:
        try:
            for r in self.embedder.embed_iter(self.items, batch_size, workers, skip=self.skip):
                self.handle(r)
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
                # A full disk, a quota, a size limit or a read-only file system fails every write that
                # follows too: stop, rather than compute every embedding only to throw it away.
                if self.folder:
                    self.record(Outcome(str(item.path), "failed", reason=str(e)))
                if self.fail_fast or not self.folder or isinstance(e, OutputGoneError) or e.errno in _DEVICE_FULL:
                    raise
                return
            self.record(Outcome(str(item.path), "embedded", output=output))


_DEVICE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _existing_output(target: Path) -> bool:
    """True when `target` is a finished output file; an OutputError when something else stands there."""
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return False
    except OSError as e:
        raise OutputError(f"cannot use output {target}: {e.strerror or e}") from None
    if stat.S_ISREG(mode):
        return True
    what = "a folder" if stat.S_ISDIR(mode) else "a symlink" if stat.S_ISLNK(mode) else special_kind(mode)
    raise OutputError(f"its output {target} is {what}, which siglip never replaces: move it away")
