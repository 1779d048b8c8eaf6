"""What a run will do, decided before any model is loaded: which inputs, which output, one array or
stacked, and, per input, whether to embed it, skip it (a rerun resumes) or fail it.

    plan = plan_embed(["photos/"], "out/", report="run.jsonl")   # everything `siglip embed` refuses
    for step in resume(plan.items, plan.output, plan.fmt):       # "embed" | "skipped" | "failed"
        ...

No torch, no model: the checks raise before the slow part. Nothing here writes but the output folder
(created, and probed with a temp file) and an empty report (an idle shard, an interrupted start-up).
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from glob import has_magic
from pathlib import Path
from typing import Iterable, Iterator

from .atomic import atomic_write_bytes, check_folder_writable, destination, special_kind
from .decode import prefetch
from .errors import ImageError, OutputError, SiglipError, UsageError
from .inputs import Input, collect, parse_shard, shard
from .writers import (FORMATS, check_output_file, check_sidecar_free, check_writable, output_path_for,
                      refuse_overwriting_inputs)


@dataclass
class Plan:
    """The inputs of one run and where their embeddings go."""

    items: list[Input]
    output: Path
    folder: bool  # one file per image under `output`
    single: bool  # a file output holding one image's array, not a stacked [B, ...] one
    fmt: str = ".npy"  # the file format in folder mode
    report: Path | None = None
    idle: str | None = None  # why there is nothing to do (a shard with no inputs); its report is written


def is_folder_output(out: str | Path) -> bool:
    """`-o DIR/` (trailing slash) or an existing directory means one file per image."""
    return str(out).endswith(("/", "\\")) or Path(out).is_dir()


def format_suffix(fmt: str) -> str:
    """--format npy|safetensors (or .npy ...) -> the suffix of folder-mode files."""
    fmt = fmt if fmt.startswith(".") else "." + fmt
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}: use npy or safetensors")
    return fmt


class ReportGuard:
    """Until the run writes the report itself, an interruption (Ctrl-C, SIGTERM) writes it empty: no
    input was reached. Before the report is checked against the run's inputs and outputs (`due` set by
    plan_embed), only where nothing is there to lose: no file yet, or a FIFO or device."""

    def __init__(self, report: str | Path | None):
        self.report = report
        try:
            self.due = report is not None and (not os.path.lexists(report) or destination(report, through=True)[1])
        except SiglipError as e:  # a path that cannot even be looked at (a loop of symlinks ...)
            raise UsageError(str(e)) from None

    def __enter__(self) -> ReportGuard:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self.due and kind is not None and issubclass(kind, (KeyboardInterrupt, SystemExit)):
            with contextlib.suppress(SiglipError):
                atomic_write_bytes(self.report, b"", through=True)


def _check_output(out: Path, folder: bool) -> None:
    if folder:
        check_folder_writable(out)
    else:
        check_output_file(out)


def _one_named_file(arguments: list[str], files_from: str | None) -> bool:
    """One image file named on the command line (not a folder, a pattern or a list, which can hold several)."""
    return len(arguments) == 1 and not files_from and not Path(arguments[0]).is_dir() \
        and not (has_magic(arguments[0]) and not Path(arguments[0]).exists())


def plan_embed(arguments: list[str], output: str | Path, *, files_from: str | None = None,
               globs: list[str] | None = None, exts: list[str] | None = None, hidden: bool = False,
               fmt: str = ".npy", report: str | Path | None = None, protected: Iterable[str | Path] = (),
               shard_spec: str | None = None, guard: ReportGuard | None = None) -> Plan:
    """`siglip embed`'s inputs and output, checked before any work (UsageError, ImageError otherwise).

    One named image file gives its own array; anything that can hold several (folders, patterns, lists,
    several names) a stacked one. `protected`: files --report must never overwrite (the list, the
    checkpoint). A shard with nothing to do writes its empty report and comes back `idle`.
    """
    fmt = format_suffix(fmt)
    if not arguments and not files_from:
        raise UsageError("no inputs: give image files, folders or patterns, or --files-from LIST")
    folder, out = is_folder_output(output), Path(output)
    _check_output(out, folder)
    items = collect(arguments, files_from, globs, exts, hidden)
    if not folder:
        refuse_overwriting_inputs(out, items)
    if report is not None:
        report = Path(report)
        check_report(report, out, folder, items, fmt, protected)
        if guard is not None:
            guard.due = True
    if not items:
        raise UsageError("no images found in the inputs (folders are searched for image files by suffix; see "
                         "--glob, --ext, --hidden)")
    if shard_spec:
        k, n = parse_shard(shard_spec)
        total, items = len(items), shard(items, k, n)
        if not items:
            if report is not None:
                atomic_write_bytes(report, b"", through=True)
            return Plan([], out, folder, False, fmt, report,
                        idle=f"shard {k}/{n}: nothing to do ({total} inputs in all, fewer than {n} shards)")
    single = not folder and _one_named_file(arguments, files_from)
    if single and items[0].error:
        raise ImageError(str(items[0].path), items[0].error)
    if not folder and not single:
        check_sidecar_free(out)
    return Plan(no_collisions(items, out, fmt) if folder else items, out, folder, single, fmt, report)


def plan_items(inputs: Iterable[str | Path | Input], output: str | Path, *, fmt: str = ".npy",
               report: str | Path | None = None, stack: bool | None = None) -> Plan:
    """batch.embed_to's plan: inputs (paths, folders, globs, or collected Inputs) into a folder or one
    file, stacked unless `stack` is False (default: unless there is exactly one input)."""
    fmt = format_suffix(fmt)
    inputs = list(inputs)
    items = inputs if all(isinstance(i, Input) for i in inputs) else collect([str(i) for i in inputs])
    folder, out = is_folder_output(output), Path(output)
    _check_output(out, folder)
    if report is not None:
        report = Path(report)
        check_report(report, out, folder, items, fmt)
    single = not folder and not (stack if stack is not None else len(items) != 1)
    if not folder and not single:
        check_sidecar_free(out)
    return Plan(no_collisions(items, out, fmt) if folder else items, out, folder, single, fmt, report)


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


def no_collisions(items: list[Input], out: Path, fmt: str) -> list[Input]:
    """Folder mode: two inputs whose outputs would be the same file, or a file and a folder (`k.npy` and
    `k.npy/q.png.npy`): the later one gets an error, so nothing is overwritten or wrongly skipped."""
    files: dict[str, Input] = {}  # output file -> its input
    folders: dict[str, Input] = {}  # folder some output needs -> the first input needing it
    checked = []
    for item in items:
        if item.error is None:
            target = output_path_for(out, item.rel, fmt)
            key = os.path.normcase(str(target))
            parents = [os.path.normcase(str(p)) for p in target.parents if out in p.parents]
            if key in files:
                clash = f"would overwrite that of {files[key].path}"
            else:
                other = folders.get(key) or next((files[p] for p in parents if p in files), None)
                clash = other and f"and that of {other.path} need the same path as a file and as a folder"
            if clash:
                item = Input(item.path, item.rel, f"its output {target} {clash}: embed them into separate folders")
            else:
                files[key] = item
                for p in parents:
                    folders.setdefault(p, item)
        checked.append(item)
    return checked


@dataclass(frozen=True)
class Step:
    """One input's fate before decoding: "embed", "skipped" (its output exists) or "failed" (reason)."""

    item: Input
    status: str
    reason: str | None = None
    output: Path | None = None  # of a skipped input


def resume(items: Iterable[Input], folder: Path | None, fmt: str = ".npy", overwrite: bool = False,
           workers: int = 8, window: int = 256) -> Iterator[Step]:
    """One Step per input, in input order: the resume filter. Nothing is written.

    An input already known to be unusable fails. With an output folder (None: a file output) and no
    overwrite, an input whose output file exists is skipped, and one where a folder, symlink or FIFO
    stands instead fails (siglip never replaces those). The outputs are looked up on `workers`
    threads, at most `window` ahead of the caller, so a rerun over a slow disk does not wait on each.
    """
    def decide(item: Input) -> Step:
        if item.error is not None:
            return Step(item, "failed", item.error)
        if folder is None or overwrite:
            return Step(item, "embed")
        target = output_path_for(folder, item.rel, fmt)
        try:
            return Step(item, "skipped", output=target) if existing_output(target) else Step(item, "embed")
        except OutputError as e:
            return Step(item, "failed", str(e))

    if folder is None or overwrite:  # nothing to look up
        return map(decide, items)
    return prefetch(decide, items, workers, window)


def existing_output(target: Path) -> bool:
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
