"""Lines on stderr that are always one line, and never stop a run.

A path can hold anything but NUL and `/`: newlines, terminal escape codes, bytes that are not UTF-8.
`printable` shows such a path as `ls -b` would (\n, \x1b, \xff), so every message stays one line and
cannot drive the terminal. A closed or broken stderr (`2>&-`, `2>&1 | head -1`) silences messages; the
run and its outputs go on. Torch-, numpy- and rich-free: the CLI imports it at start-up.
"""

from __future__ import annotations

import contextlib
import os
import sys


def unicode_text(text: str) -> str:
    """A path as valid Unicode for JSON and metadata: bytes that are not UTF-8 (kept by Python as
    surrogates) become the four characters \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(text: str) -> str:
    """`text` with undecodable bytes as \\xNN and control characters escaped (one line, inert)."""
    text = unicode_text(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def mute(fd: int) -> None:
    """Point a broken or closed standard descriptor at /dev/null: later writes (and the interpreter's
    own flush at exit) succeed and go nowhere."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)


def err_line(message: str) -> None:
    """One line on stderr; if stderr is closed or its reader has gone, nothing (the run goes on)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(printable(message) + "\n")
        stream.flush()
    except (OSError, ValueError):
        mute(2)


def fill_standard_fds() -> None:
    """Open /dev/null on any of fds 0-2 that are closed (`2>&-`), before anything else opens a file:
    otherwise the next file opened (an output!) would get fd 2, and any library's message to stderr
    would be written into it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                got = os.open(os.devnull, os.O_RDWR)
                if got != fd:  # pragma: no cover - a lower fd was free too; the loop fills it first
                    os.dup2(got, fd)
                    os.close(got)
