"""A live progress bar (rich, on stderr) that implements `loadtest.runner.Progress`."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loadtest.records import RequestRecord


class RichProgress:
    """One bar per run (a sweep gets one per point); the bar's text counts failures as they happen."""

    def __init__(self, console: Console | None = None) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self._task = None
        self._failed = 0

    def __enter__(self) -> "RichProgress":
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def start(self, label: str, total: int) -> None:
        self._failed = 0
        self._task = self._bar.add_task(label, total=total, failed=0)

    def advance(self, record: RequestRecord) -> None:
        assert self._task is not None, "start() comes before advance()"
        self._failed += not record.ok
        self._bar.update(self._task, advance=1, failed=self._failed)
