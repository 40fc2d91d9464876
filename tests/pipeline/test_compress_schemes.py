"""`edgekd compress` end to end with the multi-pass schemes, and stage reuse keyed by their options."""

import json

import pytest

from edgekd.pipeline.compress import compress
from edgekd.pipeline.engine import read_record
from edgekd.ui import UI

CONFIG = """
version: 1
data: {{kind: digits, input_size: 16}}
teachers:
  - {{model: test_resnet, weight: 2.0, train: {{epochs: 1, batch_size: 128, lr: 0.01}}}}
  - {{model: test_resnet, train: {{epochs: 1, batch_size: 128, lr: 0.01}}}}
student: {{width: 0.5, depth: 1.0}}
distill:
  train: {{epochs: 1, batch_size: 128, lr: 0.01, channels_last: false}}
{scheme}
quantize: {{enabled: false}}
targets: [host-cpu]
bench: {{warmup_s: 0.02, min_iterations: 3, min_seconds: 0.02, batch_sizes: [1], rounds: 1}}
"""


def _compress(folder, scheme: str):
    config = folder / "schemes.yaml"
    config.write_text(CONFIG.format(scheme=scheme))
    return compress(config, out=folder / "run", ui=UI(quiet=True))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schemes")
    return folder, _compress(folder, "  assistants: [{width: 0.75}]")


def test_two_teachers_and_an_assistant_run_end_to_end(first):
    _, result = first
    run_dir = result.run_dir
    for name in ("teacher.safetensors", "teachers/1.safetensors", "assistants/1.safetensors", "student.safetensors", "student.onnx", "report.json"):
        assert (run_dir / name).is_file(), name
    teacher = result.records["teacher"]["result"]
    assert [t["path"] for t in teacher["teachers"]] == ["teacher.safetensors", "teachers/1.safetensors"]
    student = result.records["student"]["result"]
    assert [t["weight"] for t in student["teacher_ensemble"]] == [2.0, 1.0]  # the weights shape the student only
    assert [link["name"] for link in student["chain"]] == ["assistant1", "student"]
    report = json.loads((run_dir / "report.json").read_text())
    assert [a["name"] for a in report["artifacts"]][0] == "teacher-pytorch"  # the primary teacher


def test_a_scheme_change_reruns_the_student_not_the_teachers(first):
    folder, result = first
    teacher_done = read_record(result.run_dir, "teacher")["finished"]
    student_key = read_record(result.run_dir, "student")["key"]
    again = _compress(folder, "  generations: 2")
    assert read_record(again.run_dir, "teacher")["finished"] == teacher_done
    assert read_record(again.run_dir, "student")["key"] != student_key
    chain = again.records["student"]["result"]["chain"]
    assert [link["name"] for link in chain] == ["student", "student.gen2"]
