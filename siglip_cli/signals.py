"""A scheduler's SIGTERM (Slurm, Kubernetes) unwinds like Ctrl-C: temp files go, reports are written.

Until a command can clean up (while its arguments are parsed), the first SIGTERM is held, and it
unwinds as soon as the command calls unwind_on_sigterm(). A second SIGTERM ends the process at once
(e.g. while a report waits for a reader on a FIFO). Standard library only: installed at start-up.
"""

from __future__ import annotations

import signal

_state = {"defer": True, "pending": False}


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _state["defer"]:
        _state["pending"] = True
        return
    raise SystemExit(143)


def install() -> None:
    """Catch SIGTERM from now on (held until unwind_on_sigterm)."""
    signal.signal(signal.SIGTERM, _terminate)


def unwind_on_sigterm() -> None:
    """From now on SIGTERM raises SystemExit(143) here; one that came earlier raises it now."""
    _state["defer"] = False
    if _state["pending"]:
        raise SystemExit(143)
