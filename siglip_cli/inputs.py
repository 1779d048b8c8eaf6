"""Which images to embed, in which order, and where each one's output goes.

Inputs are any mix of files, folders (walked recursively, sorted), shell globs (expanded here when the
shell did not), and list files (--files-from, one path a line, `-` for stdin). Each input carries the
relative path its output mirrors under `-o DIR/`; that path never leaves DIR (no `..`, no absolute
parts), whatever the list file says.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Iterator

from .errors import UsageError


@dataclass(frozen=True)
class Input:
    path: Path  # where to read it
    rel: PurePosixPath  # where its output goes under an output folder
    error: str | None = None  # a named input that is already known to be unusable


def image_extensions() -> set[str]:
    """Every file suffix Pillow can open (.jpg, .png, .webp, .tif, .avif ...)."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def safe_rel(path: str | Path) -> PurePosixPath:
    """A relative output path for any input path: absolute anchors dropped, `..` made a plain name."""
    parts = []
    for part in PurePosixPath(Path(path).as_posix()).parts:
        if part in ("/", "", ".") or part.endswith(":/") or part.endswith(":\\"):
            continue
        parts.append("__" if part == ".." else part)
    return PurePosixPath(*parts) if parts else PurePosixPath("_")


def _hidden(rel: PurePosixPath) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _has_magic(text: str) -> bool:
    return glob.has_magic(text)


class Collector:
    """Turns command-line inputs into an ordered, de-duplicated list of Inputs."""

    def __init__(self, globs: list[str] | None = None, exts: list[str] | None = None, hidden: bool = False,
                 several: bool = False):
        # With several arguments, each folder's outputs go under the folder's own name (photos/* stays apart).
        self.several = several
        self.globs = globs or []
        self.exts = {("." + e.lower().lstrip(".")) for e in exts} if exts else None
        self.hidden = hidden
        self._known = None
        self.items: list[Input] = []
        self._seen: set[tuple[str, PurePosixPath]] = set()

    def _wanted(self, rel: PurePosixPath) -> bool:
        """Folder walks keep only images by name (and --glob / --ext matches); others are skipped silently."""
        if not self.hidden and _hidden(rel):
            return False
        if self.globs and not any(fnmatch(rel.as_posix(), g) or fnmatch(rel.name, g) for g in self.globs):
            return False
        suffix = PurePosixPath(rel.name.lower()).suffix
        if self.exts is not None:
            return suffix in self.exts
        if self._known is None:
            self._known = image_extensions()
        return suffix in self._known

    def _add(self, path: Path, rel: PurePosixPath, error: str | None = None) -> None:
        # One entry per real file: a file reached twice (symlinks, repeated arguments, ** through a link loop)
        # is embedded once.
        key = (os.path.realpath(path) if error is None else os.path.normpath(str(path)), "")
        if key not in self._seen:
            self._seen.add(key)
            self.items.append(Input(path, rel, error))

    def add_folder(self, folder: Path, base_rel: PurePosixPath | None = None) -> None:
        def unreadable(e: OSError) -> None:  # a folder the walk cannot list is named, not silently lost
            rel = PurePosixPath(os.path.relpath(e.filename, folder)) if e.filename else PurePosixPath("_")
            self._add(Path(e.filename or folder), (base_rel / rel) if base_rel else rel,
                      f"cannot read this folder: {e.strerror or e}")

        for root, dirs, files in os.walk(folder, onerror=unreadable):
            dirs.sort()
            if not self.hidden:
                dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in sorted(files):
                path = Path(root) / name
                rel = PurePosixPath(path.relative_to(folder).as_posix())
                if self._wanted(rel) and path.is_file():  # not FIFOs, sockets or devices: they never end
                    self._add(path, (base_rel / rel) if base_rel else rel)

    def add_argument(self, arg: str) -> None:
        path = Path(arg)
        kind = _kind(path)
        if kind == "dir":
            self.add_folder(path, safe_rel(path.resolve().name) if self.several else None)
        elif kind in ("file", "link"):
            self._add(path, PurePosixPath(path.name))
        elif kind == "missing" and _has_magic(arg):
            self._add_glob(arg)
        else:
            self._add(path, PurePosixPath(path.name or "_"), "no such file" if kind == "missing" else kind)

    def _add_glob(self, pattern: str) -> None:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            self._add(Path(pattern), safe_rel(pattern), "no file matches this pattern")
            return
        # Outputs mirror the tree below the pattern's first wildcard, so photos/*/a.jpg stays unique.
        parts = Path(pattern).parts
        fixed = next((i for i, p in enumerate(parts) if _has_magic(p)), len(parts))
        base = Path(*parts[:fixed]) if fixed else Path(".")
        for m in matches:
            mp = Path(m)
            rel = safe_rel(os.path.relpath(m, base))
            if mp.is_dir():
                self.add_folder(mp, rel)
            elif mp.is_file() and (self._wanted(rel) or not self.globs and not self.exts):
                self._add(mp, rel)

    def add_list(self, list_file: str) -> None:
        """--files-from: one path a line (`-`: stdin); blank lines and lines starting with # are ignored."""
        for entry in _list_lines(list_file):
            if not entry.strip() or entry.startswith("#"):  # the rest is the name exactly: spaces are part of it
                continue
            path = Path(entry)
            kind = _kind(path)
            if kind == "dir":
                self.add_folder(path, safe_rel(entry))
            elif kind in ("file", "link"):
                self._add(path, safe_rel(entry))
            else:
                self._add(path, safe_rel(entry), "no such file" if kind == "missing" else kind)


MAX_LIST_LINE = 65536  # bytes; a path is at most 4096 (PATH_MAX)


def _kind(path: Path) -> str:
    """'dir', 'file' (anything to try to open), 'link' (a dangling symlink), 'missing', or why the
    path cannot even be looked at (a name too long for the file system, a loop of symlinks ...)."""
    try:
        return "dir" if path.is_dir() else "file" if path.exists() else "link" if path.is_symlink() else "missing"
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"


def _list_lines(list_file: str) -> Iterator[str]:
    """The lines of a path list, read in bounded pieces: names in any byte encoding are kept as the
    OS gives them; a NUL byte or an endless line (/dev/zero, a binary file) is a one-line error."""
    what = f"--files-from {list_file!r}"
    try:
        if list_file == "-":
            if sys.stdin is None:
                raise UsageError("--files-from -: stdin is closed: pipe the list in, or give a file")
            stream = sys.stdin.buffer
        else:
            stream = open(list_file, "rb")
        with stream:
            for number, line in enumerate(iter(lambda: stream.readline(MAX_LIST_LINE + 1), b""), 1):
                if b"\0" in line or len(line) > MAX_LIST_LINE:
                    why = "a NUL byte" if b"\0" in line else f"over {MAX_LIST_LINE} bytes"
                    raise UsageError(f"{what}: line {number} is not a path ({why}): give a text file with one "
                                     "path a line")
                yield os.fsdecode(line.rstrip(b"\r\n"))
    except OSError as e:
        raise UsageError(f"cannot read {what}: {e.strerror or e}") from None


def collect(arguments: list[str], files_from: str | None = None, globs: list[str] | None = None,
            exts: list[str] | None = None, hidden: bool = False) -> list[Input]:
    c = Collector(globs, exts, hidden, several=len(arguments) + bool(files_from) > 1)
    for arg in arguments:
        c.add_argument(arg)
    if files_from:
        c.add_list(files_from)
    return c.items


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four shards") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"--shard {text!r}: K must be in 0..N-1 (e.g. 0/{max(n, 1)} to {max(n, 1) - 1}/{max(n, 1)})")
    return k, n


def shard(items: list[Input], k: int, n: int) -> list[Input]:
    """Every N-th input starting at K: N processes cover the list exactly once, with no coordination."""
    return items[k::n]


def read_text_lines(source: str | Path, what: str, comments: bool = False) -> list[str]:
    """The lines of a UTF-8 text file (- : stdin), without line ends; blank lines dropped, and with
    `comments` lines starting with # too. A file that is not UTF-8 text is a one-line error."""
    try:
        if str(source) == "-":
            if sys.stdin is None:
                raise UsageError(f"{what} -: stdin is closed: pipe the lines in, or give a file")
            data = sys.stdin.buffer.read()
        else:
            data = Path(source).read_bytes()
        text = data.decode("utf-8-sig")
    except OSError as e:
        raise UsageError(f"cannot read {what} {str(source)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {str(source)!r}: not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    if "\0" in text:
        raise UsageError(f"{what} {str(source)!r}: not a text file (a NUL byte): give one entry a line")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not (comments and line.startswith("#"))]
