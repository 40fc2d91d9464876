"""Without nvidia-modelopt, a QAT config fails before any work, saying which extra to install."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_qat_without_modelopt_fails_in_preflight(tmp_path):
    # A sitecustomize that makes `import modelopt` fail, as on an install without the [qat] extra.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['modelopt'] = None\n")
    config = tmp_path / "m.yaml"
    config.write_text("student: {quantization: qat}\nquantize: {enabled: false}\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-m", "edgekd", "validate", str(config)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120, check=False)
    assert done.returncode == 4, done.stderr  # ModelError
    assert "nvidia-modelopt" in done.stderr + done.stdout and "edgekd[qat]" in done.stderr + done.stdout
    assert not (tmp_path / "runs").exists()
