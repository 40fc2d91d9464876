"""What the user sees while a run goes: one line per stage, a bar per loop.

Built on rich; falls back to plain lines when stdout is not a terminal (CI,
logs), so nothing here decides what a stage computes.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class UI:
    def __init__(self, quiet: bool = False):
        self.console = Console(stderr=True, quiet=quiet, highlight=False)

    def stage_start(self, name: str, what: str) -> float:
        self.console.print(f"[bold cyan]▶ {name}[/] {what}")
        return time.perf_counter()

    def stage_done(self, name: str, started: float, summary: str = "") -> None:
        took = time.perf_counter() - started
        self.console.print(f"[green]✓ {name}[/] done in {took:.1f}s{' — ' + summary if summary else ''}")

    def stage_skipped(self, name: str, why: str) -> None:
        self.console.print(f"[green]✓ {name}[/] [dim]reused: {why}[/]")

    def info(self, message: str) -> None:
        self.console.print(f"  {message}")

    def warn(self, message: str) -> None:
        self.console.print(f"  [yellow]! {message}[/]")

    @contextmanager
    def progress(self, description: str, total: int):
        """Yields `advance(n=1, **fields)`; fields show after the bar (loss=…, acc=…)."""
        if not sys.stderr.isatty():
            yield _PlainProgress(self, description, total)
            return
        columns = [TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(description, total=total, status="")

            def advance(n: int = 1, **fields):
                status = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
                bar.update(task, advance=n, status=status)

            yield advance


class _PlainProgress:
    """Non-terminal output: a line per step (epochs are few; no per-batch spam)."""

    def __init__(self, ui: UI, description: str, total: int):
        self.ui, self.description, self.total, self.done = ui, description, total, 0

    def __call__(self, n: int = 1, **fields):
        self.done += n
        status = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        self.ui.console.print(f"  {self.description} {self.done}/{self.total}  {status}")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
