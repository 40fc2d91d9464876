import io
import re

from rich.console import Console

from edgekd import ui as ui_module
from edgekd.ui import UI, quiet_progress, rate_eta


def _ui(quiet=False) -> tuple[UI, io.StringIO]:
    out = io.StringIO()
    ui = UI(quiet=quiet)
    ui.console = Console(file=out, quiet=quiet, highlight=False, width=200)
    return ui, out


def test_plain_progress_with_a_unit_prints_rate_and_eta_not_every_step(monkeypatch):
    monkeypatch.setattr(ui_module._PlainProgress, "every_s", 3600.0)
    ui, out = _ui()
    with ui.progress("decoding", 1000, unit="images") as advance:
        for _ in range(100):
            advance(10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and re.search(r"decoding 1000/1000  [\d,]+ images/s, ETA 0:00:00", lines[0])


def test_plain_progress_without_a_unit_prints_every_step():
    ui, out = _ui()
    with ui.progress("epochs", 3) as advance:
        for _ in range(3):
            advance(loss=0.5)
    assert out.getvalue().splitlines()[-1].split() == ["epochs", "3/3", "loss=0.5"]


def test_quiet_shows_nothing():
    ui, out = _ui(quiet=True)
    with ui.progress("decoding", 10, unit="images") as advance:
        advance(10)
    with quiet_progress() as advance:
        advance(3, x=1)
    assert out.getvalue() == ""


def test_rate_and_eta_text():
    assert rate_eta(250, 1000, 5.0, "images") == "50 images/s, ETA 0:00:15"
    assert rate_eta(0, 1000, 0.0, "images") == "- images/s"
