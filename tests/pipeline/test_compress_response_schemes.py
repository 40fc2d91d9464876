"""`edgekd compress` with the response-loss schemes on tiny data: reverse/scheduled kd and tfkd,
a 50% student share of the training split, half of it without labels."""

import json

from edgekd.pipeline.compress import compress
from edgekd.ui import UI

TINY = """
version: 1
name: schemes
data: {kind: digits, input_size: 16, train_fraction: 0.5}
teacher:
  model: resnet18
  train: {epochs: 1, batch_size: 128, lr: 0.003, channels_last: false}
student: {width: 0.25, depth: 0.5}
distill:
  unlabeled_fraction: 0.5
  losses:
    - {kind: kd, divergence: symmetric, alpha: 0.9, alpha_end: 0.5, temperature: 8, temperature_end: 2, schedule: cosine}
    - {kind: tfkd, weight: 0.5}
  train: {epochs: 2, batch_size: 128, lr: 0.005, channels_last: false}
quantize: {enabled: false}
targets: [host-cpu]
bench: {warmup_s: 0.01, min_iterations: 2, min_seconds: 0.01, batch_sizes: [1], rounds: 1}
"""


def test_compress_runs_the_schemes_and_reports_the_unlabeled_samples(tmp_path, single_thread):
    config = tmp_path / "schemes.yaml"
    config.write_text(TINY)
    run_dir = compress(config, out=tmp_path / "run", ui=UI(quiet=True)).run_dir
    rows = [json.loads(line) for line in (run_dir / "student.metrics.jsonl").read_text().splitlines()]
    assert 0.5 < rows[0]["kd[0].alpha"] < rows[0]["kd[0].temperature"] < 8  # epoch 1 ends mid-schedule
    assert rows[-1]["kd[0].alpha"] < rows[0]["kd[0].alpha"]
    used = json.loads((run_dir / ".edgekd" / "student.json").read_text())["result"]["student_data"]
    assert used["unlabeled"] > 0 and used["samples"] < used["train_split"]
    report = (run_dir / "report.md").read_text()
    assert f"{used['unlabeled']} of them used without labels" in report
