"""The device side runs without torch: measure, worker, bench CLI, verify.

A `sitecustomize.py` on PYTHONPATH sets sys.modules["torch"] = None (and
timm, torchvision), so any import of them raises ImportError, in the test
subprocess and in every benchmark worker it starts.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from edgekd.ship import ship
from edgekd.targets import load_target

REPO = Path(__file__).resolve().parents[2]

BLOCKER = """
import sys
for name in ("torch", "torchvision", "timm"):
    sys.modules[name] = None
"""

SCRIPT = """
import json, sys
from pathlib import Path
assert sys.modules["torch"] is None, "the blocker is not active"
import edgekd.bench.measure, edgekd.bench.worker, edgekd.ship.verify, edgekd.bench.cli
from edgekd.bench.measure import ArtifactToMeasure, BenchSettings, measure_artifacts
from edgekd.errors import RuntimeBackendError
from edgekd.ship.verify import verify_bundle

run, bundle = Path(sys.argv[1]), Path(sys.argv[2])
settings = BenchSettings(warmup_s=0.02, min_iterations=10, min_seconds=0.05, batch_sizes=(1, 2), rounds=2, threads=1)
m = measure_artifacts([ArtifactToMeasure("int8", "onnxruntime", run / "student.int8.onnx")],
                      None, None, settings, data=run / "data" / "val.npz")
checked = verify_bundle(bundle)
try:  # the pytorch runner must fail here, in its worker: proves workers are blocked too
    measure_artifacts([ArtifactToMeasure("pt", "pytorch", run / "student.safetensors")], (3, 32, 32), None, settings)
    torch_worker = "ran"
except RuntimeBackendError as exc:
    torch_worker = str(exc)
loaded = sorted(k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in ("torch", "timm", "torchvision"))
print(json.dumps({"p50": m["int8"].latency_ms["p50"], "accuracy": m["int8"].accuracy,
                  "models": [c.file for c in checked.models], "torch_worker": torch_worker, "loaded": loaded}))
"""


def test_device_side_imports_and_runs_without_torch(fake_run, tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCKER)
    bundle = tmp_path / "bundle"
    ship(fake_run, load_target("host-cpu"), str(bundle))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "block"), str(REPO)]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(fake_run), str(bundle)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["p50"] > 0 and 0.0 <= out["accuracy"] <= 1.0
    assert out["models"] == ["student.onnx", "student.int8.onnx"]
    assert "pytorch runner needs torch" in out["torch_worker"]
