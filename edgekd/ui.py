"""What the user sees while a run goes: one line per stage, a bar per loop.

Built on rich; falls back to plain lines when stdout is not a terminal (CI,
logs), so nothing here decides what a stage computes.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text


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
    def progress(self, description: str, total: int, unit: str | None = None):
        """Yields `advance(n=1, **fields)`; fields show after the bar (loss=…, acc=…).

        With a `unit` ("images", "files"), the bar shows the rate in units/s and the time left, and
        plain output (not a terminal) prints a line every few seconds instead of every step:
        loops over 100k images must not print 100k lines."""
        if not sys.stderr.isatty():
            yield _PlainProgress(self, description, total, unit)
            return
        columns = [TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn()]
        if unit:
            columns += [_RateColumn(unit), TextColumn("ETA"), TimeRemainingColumn()]
        columns.append(TextColumn("{task.fields[status]}"))
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(description, total=total, status="")

            def advance(n: int = 1, **fields):
                status = format_fields(fields)
                bar.update(task, advance=n, status=status)

            yield advance


@contextmanager
def quiet_progress():
    """An `advance` that shows nothing: for callers given no UI."""
    yield lambda n=1, **fields: None


def progress_of(ui: "UI | None", description: str, total: int, unit: str | None = None):
    """`ui.progress(...)` (rate and ETA with a unit), or `quiet_progress()` for callers given no UI."""
    return ui.progress(description, total, unit=unit) if ui is not None else quiet_progress()


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s")


class _PlainProgress:
    """Non-terminal output. Without a unit: a line per step (epochs are few). With a unit: a line
    at most every `every_s` seconds and at the end, with the rate and the time left."""

    every_s = 5.0

    def __init__(self, ui: UI, description: str, total: int, unit: str | None = None):
        self.ui, self.description, self.total, self.unit, self.done = ui, description, total, unit, 0
        self.started = self.last = time.perf_counter()

    def __call__(self, n: int = 1, **fields):
        self.done += n
        status = format_fields(fields)
        if self.unit is None:
            self.ui.console.print(f"  {self.description} {self.done}/{self.total}  {status}")
            return
        now = time.perf_counter()
        if now - self.last < self.every_s and self.done < self.total:
            return
        self.last = now
        self.ui.console.print(f"  {self.description} {self.done}/{self.total}  "
                              f"{rate_eta(self.done, self.total, now - self.started, self.unit)}  {status}".rstrip())


def rate_eta(done: int, total: int, seconds: float, unit: str) -> str:
    """'1,234 images/s, ETA 0:01:05' (the ETA from the average rate so far)."""
    rate = done / seconds if seconds > 0 else 0.0
    if not rate:
        return f"- {unit}/s"
    left = max(0, total - done) / rate
    return f"{rate:,.0f} {unit}/s, ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"


def format_fields(fields: dict) -> str:
    """'loss=0.4321  val_acc=0.9'."""
    return "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items())


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
