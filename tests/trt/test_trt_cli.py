"""`edgekd build` / `edgekd bench-engine` argument handling, through click's CliRunner and the main
group (whose error edge maps failures to exit codes, as when `edgekd build` runs)."""

from __future__ import annotations

import importlib.util

import click
import pytest
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.trt import cli

onnx = pytest.importorskip("onnx")
from edgekd.onnxtools.tiny import tiny_convnet  # noqa: E402

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "student.onnx"
    onnx.save(tiny_convnet(opset=17), str(path))
    return path


def invoke(command, *args):
    return CliRunner().invoke(main, [command.name, *(str(a) for a in args)])


def test_build_needs_a_target(artifact):
    result = invoke(cli.build_command, artifact)
    assert result.exit_code == 2 and "--target" in result.output


def test_build_needs_an_existing_artifact(tmp_path):
    result = invoke(cli.build_command, tmp_path / "missing.onnx", "--target", "jetson-orin-nano")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_unknown_target_suggests_the_close_name(artifact):
    result = invoke(cli.build_command, artifact, "--target", "jetson-orin-nan")
    assert result.exit_code == 2
    assert "Unknown target 'jetson-orin-nan'" in result.output and "jetson-orin-nano" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--precision", "fp32"], "does not list precision 'fp32'"),
        (["--min-batch", "4", "--max-batch", "2"], "min <= opt <= max"),
        (["--precision", "bf16"], "'bf16' is not one of"),
        (["--max-batch", "0"], "0 is not in the range"),
        (["--dla-core", "-1"], "-1 is not in the range"),
    ],
)
def test_bad_options_exit_2_before_tensorrt(artifact, args, message):
    result = invoke(cli.build_command, artifact, "--target", "jetson-orin-nano", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_opset_above_the_targets_parser_exits_2(tmp_path):
    path = tmp_path / "student21.onnx"
    onnx.save(tiny_convnet(opset=21), str(path))
    result = invoke(cli.build_command, path, "--target", "jetson-xavier-nx")
    assert result.exit_code == 2 and "takes opset 17 at most" in result.output


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; this checks the message when it is not")
def test_build_without_tensorrt_exits_6_with_the_fix(artifact):
    result = invoke(cli.build_command, artifact, "--target", "jetson-orin-nano")
    assert result.exit_code == 6, result.output
    assert "precision: fp16 (the first precision of target 'jetson-orin-nano')" in result.output
    assert "error: tensorrt is not installed" in result.output
    assert "JetPack" in result.output  # the hint
    assert not list(artifact.parent.glob("*.engine"))


def test_bench_engine_without_sidecar_exits_6(tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"plan")
    result = invoke(cli.bench_engine_command, path)
    assert (
        result.exit_code == 6
        and "has no sidecar" in result.output
        and "Rebuild on this device" in result.output
    )


def test_register_adds_both_commands():
    group = click.Group("edgekd")
    cli.register(group)
    assert set(group.commands) == {"build", "bench-engine"}
    help_text = CliRunner().invoke(group, ["build", "--help"]).output
    for option in (
        "--target",
        "--precision",
        "--out",
        "--min-batch",
        "--opt-batch",
        "--max-batch",
        "--workspace-mb",
        "--dla-core",
    ):
        assert option in help_text


def test_format_bench_lines():
    stats = {"mean": 1.0, "p50": 0.9, "p90": 1.2, "p99": 1.5}
    result = {
        "engine": "m.engine",
        "tensorrt": "10.3.0.30",
        "gpu": {"name": "Orin"},
        "precision": "int8",
        "batch": 1,
        "iterations": 300,
        "gpu_compute_ms": stats,
        "latency_ms": stats,
        "throughput_per_s": 950.0,
        "engine_bytes": 2**20,
        "context_device_memory_bytes": 2**21,
        "accuracy": {"accuracy": 0.9125, "samples": 800},
    }
    text = "\n".join(cli.format_bench(result))
    assert "GPU compute" in text and "p99 1.500" in text and "950.0 samples/s" in text
    assert "1.00 MiB" in text and "2.00 MiB" in text and "0.9125 on 800 samples" in text
