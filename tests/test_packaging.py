"""A wheel carries the default target profiles and calibration manifests, and its edgekd finds them.

`pip install .` (not editable) puts only the wheel's files on the machine: a default that
resolves into the source tree, or into a share/ folder nothing searches, would be missing.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the source tree: setuptools writes build/ and *.egg-info where it builds."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__",
                                                                 "benchmarks", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("edgekd-*.whl")
    return built


def test_the_wheel_carries_the_builtin_profiles_and_manifests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in ("host-cpu", "rpi5", "jetson-orin-nano"):
        assert f"edgekd/builtin/targets/{profile}.yaml" in names
    assert "edgekd/builtin/calib/digits.yaml" in names


def test_the_installed_package_validates_a_config_relying_on_its_defaults(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what `pip install` puts in site-packages
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.yaml").write_text("targets: [rpi5]\n")  # default calibration and profile
    probe = ("import json, edgekd; from edgekd.config import load_config; c = load_config('model.yaml'); "
             "print(json.dumps([edgekd.__file__, str(c.quantize.calibration), c.quantize.calibration.is_file()]))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path / "elsewhere", env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    module, calibration, found = json.loads(out)
    assert module.startswith(str(site)) and calibration.startswith(str(site)) and found
