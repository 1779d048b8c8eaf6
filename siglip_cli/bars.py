"""Download progress for huggingface_hub, drawn by rich on stderr (and nothing when stderr is not a terminal)."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def rich_progress(enabled: bool) -> Iterator[type]:
    """A tqdm-shaped class for huggingface_hub whose bars are tasks of one rich Progress on stderr."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console, transient=True,
                        disable=not enabled or not console.is_terminal)

    class Bar:
        """The part of tqdm's interface huggingface_hub uses."""

        def __init__(self, *args, desc: str = "", total: float | None = None, initial: float = 0, unit: str = "",
                     **kwargs):
            self.n = initial
            self._total = total or 0
            # Bytes received and bytes written are the same for plain HTTP: show one bar of bytes.
            visible = unit == "B" and not desc.startswith("Downloading bytes")
            self._task = progress.add_task("downloading", total=self._total or None, completed=initial,
                                           visible=visible)

        @property
        def total(self):
            return self._total

        @total.setter
        def total(self, value):
            self._total = value
            progress.update(self._task, total=value or None)

        @property
        def format_dict(self) -> dict:
            return {"rate": None}

        def update(self, n: float | None = 1) -> None:
            self.n += n or 0
            progress.update(self._task, completed=self.n)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.close()

        def close(self) -> None:
            pass

        def refresh(self, *a, **k) -> None:
            pass

        def set_postfix_str(self, *a, **k) -> None:
            pass

        def set_description(self, *a, **k) -> None:
            pass

        def set_description_str(self, *a, **k) -> None:
            pass

    with progress:
        yield Bar
