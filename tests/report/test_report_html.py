"""The HTML report: self-contained, escapes what it shows, renders in a real browser."""

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from edgekd.report.html import render_html, write_html
from tests.bench.fakerun import fake_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium)"
)
# Chromium logs every console message of the page (errors, uncaught exceptions) as INFO:CONSOLE.
CONSOLE = re.compile(r"CONSOLE[:(]")


def _screenshot(page, png, tmp_path) -> str:
    """Render `page` headless; returns Chromium's stderr (console messages included)."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,2400",
         f"--screenshot={png}", "--enable-logging=stderr", "--v=0", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert png.is_file(), proc.stderr[-2000:]
    return proc.stderr


def _report():
    report = fake_report()  # as the pipeline writes it: `recommended` names student-int8
    report["notes"] = ["student-int8 is the fastest artifact that passes the accuracy gate."]
    return report


def _pngs(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_page_is_self_contained(tmp_path):
    out = write_html(_report(), tmp_path / "report.html")
    html = out.read_text()
    # Every src/href is a data URI; no scripts, no stylesheets or fonts fetched from anywhere.
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []
    assert "<script" not in html and "@import" not in html and "url(" not in html
    images = _pngs(html)
    assert len(images) == 3  # accuracy/latency, distributions, throughput sweep
    for im in images:
        im.load()  # a valid PNG, not just base64
        assert im.width > 500 and im.height > 150
    for name in ("teacher-pytorch", "student-int8", "FAIL", "pass", "host-cpu"):
        assert name in html
    assert not (tmp_path / "report.html.partial").exists()


def test_the_recommended_artifact_is_highlighted():
    html = render_html(_report())
    highlighted = re.findall(r'<tr class="selected"><td>([^<]+)</td>', html)
    assert highlighted == ["student-int8"] and "the recommended artifact, student-int8" in html


def test_every_target_gets_its_badge_and_unmeasured_ones_say_so():
    report = _report()
    student = report["artifacts"][2]
    student["budgets"]["rpi5"] = {"target": "rpi5", "latency_ms": 50.0, "measured_on_target": False, "pass": None,
                                  "checks": {"accuracy": True}, "not_measured_on_target": "measured on x86_64"}
    html = render_html(report)
    assert "host-cpu: pass" in html and "rpi5: not measured" in html and "measured on x86_64" in html


def test_untrusted_text_is_escaped_and_missing_fields_are_tolerated():
    report = {
        "schema_version": 1,
        "machine": {"hostname": "<b>pi</b>"},
        "artifacts": [{"name": "<script>alert(1)</script>", "latency_ms": {"p50": 1.0}}],
    }
    html = render_html(report)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;pi" in html
    assert "data:image/png" not in html  # no accuracy, no samples, no sweep: no plots, no crash
    assert "n/a" in html  # not judged against a budget


@needs_chromium
def test_renders_in_headless_chromium_without_console_errors(tmp_path):
    page = write_html(_report(), tmp_path / "report.html")
    png = tmp_path / "shot.png"
    log = _screenshot(page, png, tmp_path)
    assert [line for line in log.splitlines() if CONSOLE.search(line)] == []
    pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    # Not blank: a real page has text and plots, so many pixels are far from the background.
    assert pixels.std() > 10
    assert (pixels < 128).mean() > 0.005


@needs_chromium
def test_console_check_catches_a_script_error(tmp_path):
    """Negative control: the console check above is not vacuous."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><p>x</p><script>undefinedFunction()</script></body></html>")
    log = _screenshot(page, tmp_path / "broken.png", tmp_path)
    assert any(CONSOLE.search(line) and "undefinedFunction" in line for line in log.splitlines())
