import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd import __version__
from edgekd.cli import main
from edgekd.config import load_config

REPO = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_version_and_help():
    assert __version__ in invoke("--version").output
    for command in ("compress", "validate", "init", "targets", "build"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_init_writes_a_template_that_validates(tmp_path):
    path = tmp_path / "model.yaml"
    assert invoke("init", path).exit_code == 0
    assert load_config(path).teacher.model == "resnet18"
    again = invoke("init", path)
    assert again.exit_code == 2 and "--force" in again.output


def test_targets_lists_profiles():
    result = invoke("targets")
    assert result.exit_code == 0 and "jetson-xavier-nx" in result.output and "rpi5" in result.output


def test_validate_the_builtin_default():
    result = invoke("validate", REPO / "examples" / "digits.yaml")
    assert result.exit_code == 0 and "valid" in result.output and "warning" not in result.output


def test_validate_lists_an_imagefolder_per_class_and_split(tmp_path):
    from PIL import Image

    for cls, n in (("cat", 5), ("dog", 10)):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (4, 4)).save(tmp_path / "images" / cls / f"{i}.png")
    config = tmp_path / "model.yaml"
    config.write_text("data: {kind: imagefolder, path: images, channels: 3}\n")
    result = invoke("validate", config)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:]}
    assert rows["class"] == ["train", "val", "test"] and rows["dog"] == ["6", "2", "2"] and rows["total"] == ["9", "3", "3"]


def test_validate_says_when_a_setting_misleads(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text("distill:\n  train: {epochs: 1}\n")  # warmup_epochs 1.0 by default: all warm-up
    result = invoke("validate", config)
    assert result.exit_code == 0 and "warning: distill.train.warmup_epochs 1 >= epochs 1" in result.output


def test_validate_previews_the_student_search(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text("data: {kind: digits, input_size: 32}\n"
                      "student: {search: {widths: [0.25, 0.5], depths: [0.5], precisions: [fp32], proxy_epochs: 0}}\n")
    result = invoke("validate", config)
    assert result.exit_code == 0, result.output
    assert "2 candidates, 2 measurements" in result.output and "ranked by FLOPs" in result.output
    assert "resnet18-w0.25-d0.5-32px" in result.output and "host-cpu: 2 measurements (fp32) on this machine" in result.output


def test_force_help_says_what_it_redoes():
    text = " ".join(invoke("compress", "--help").output.split()).replace("- ", "-")  # Click wraps at hyphens
    assert "epoch checkpoints" in text and "teacher-output cache" in text and "chain links" in text


@pytest.mark.parametrize(
    "text, code, words",
    [
        ("teacher: {model: [resnet18\n", 2, ["not valid YAML", "line"]),
        ("teacher:\n  modle: resnet18\n", 2, ["did you mean 'model'"]),
        ("distill:\n  train:\n    epochs: many\n", 2, ["distill.train.epochs"]),
        ("data:\n  kind: idx\n  path: /no/such/dir\n", 2, ["data.path", "/no/such/dir"]),
        ("teacher:\n  model: resnet181\n", 4, ["not a timm model", "resnet18"]),
    ],
    ids=["malformed-yaml", "unknown-key", "wrong-type", "missing-dataset", "unknown-model"],
)
def test_bad_input_is_one_paragraph_and_leaves_earlier_runs_alone(tmp_path, text, code, words):
    run_dir = tmp_path / "runs" / "model"
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text("{}")  # an earlier run's result
    config = tmp_path / "model.yaml"
    config.write_text(text)
    result = invoke("compress", config, "--out", run_dir)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and result.output.startswith("error: ")
    assert all(w in result.output for w in words), result.output
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.json"]


def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text("teacher:\n  modle: x\n")
    result = subprocess.run([sys.executable, "-m", "edgekd", "--debug", "validate", str(config)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" in result.stderr
