"""The embedding progress bar: rich on a terminal's stderr; nothing but failure lines otherwise."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from .console import err_line, printable


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "- img/s")


class EmbedProgress:
    """images done / total, images per second, ETA and failures so far, on stderr when it is a terminal."""

    def __init__(self, total: int, enabled: bool = True, log_failures: bool = True):
        console = Console(stderr=True)
        self.live = enabled and console.is_terminal
        self.failed = 0
        self.failures: list = []  # the failed Outcomes, in order
        self.log_failures = log_failures
        self._progress = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), _Rate(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[failed]} failed"),
                                  console=console, transient=True, disable=not self.live)
        self._task = self._progress.add_task("embedding", total=total, failed=0)

    def __enter__(self) -> "EmbedProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, outcome) -> None:
        self.failed += outcome.status == "failed"
        self._progress.update(self._task, advance=1, failed=self.failed)

    def outcome(self, outcome) -> None:
        """A run's on_outcome: advance the bar; keep each failure, and log it as `path: reason`."""
        self.advance(outcome)
        if outcome.status == "failed":
            self.failures.append(outcome)
            if self.log_failures:
                self.log(f"{outcome.path}: {outcome.reason}")

    def log(self, message: str) -> None:
        """A line above the bar (or plain on stderr), never cut or re-wrapped; one line whatever the
        path holds, and nothing at all once stderr is closed or broken (the run goes on)."""
        if self.live:
            try:
                self._progress.console.print(printable(message), markup=False, highlight=False, soft_wrap=True)
                return
            except (OSError, ValueError):
                self.live = False
                self._progress.disable = True
        err_line(message)
