"""The device side must import and run without torch (a Raspberry Pi has none;
a Jetson has NVIDIA's own build that edgekd must not pull in)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DEVICE_MODULES = [
    "edgekd.cli",
    "edgekd.targets",
    "edgekd.runtime.ort",
    "edgekd.bench.measure",
    "edgekd.bench.cli",
    "edgekd.ship.verify",
    "edgekd.ship.cli",
    "edgekd.trt.build",
    "edgekd.trt.engine",
    "edgekd.report.core",
    "edgekd.report.merge",
    "edgekd.rundir",
    "edgekd.tolerances",
    "edgekd.onnxtools.read",
    "edgekd.search.profile",
]


def test_device_modules_import_without_torch():
    code = (
        "import sys\n"
        f"for m in {DEVICE_MODULES!r}: __import__(m)\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "", f"device side imported {out.stdout.strip()}"


def test_cli_help_runs_with_torch_unimportable(tmp_path):
    # A sitecustomize that makes `import torch` fail, as on a board without it.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\nsys.modules['timm'] = None\n")
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    for args in (["--help"], ["targets"], ["verify", "--help"], ["bench", "--help"], ["build", "--help"],
                 ["profile", "--help"], ["profile", "--probe"]):
        out = subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, cwd=REPO, env=env)
        assert out.returncode == 0, out.stderr
