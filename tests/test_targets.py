import pytest

from edgekd.errors import ConfigError
from edgekd.schema import parse
from edgekd.targets import TargetProfile, available, load_target, strictest_opset

EXPECTED = ["host-cpu", "rpi5", "rpi4", "jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx"]


@pytest.mark.parametrize("name", EXPECTED)
def test_every_shipped_profile_loads(name):
    profile = load_target(name)
    assert profile.name == name
    assert profile.budgets.latency_ms > 0


def test_all_profiles_are_listed():
    assert set(EXPECTED) <= set(available())


def test_strictest_opset_follows_tensorrt_8_5():
    profiles = [load_target("host-cpu"), load_target("jetson-xavier-nx")]
    assert strictest_opset(profiles) == 17


def test_tensorrt_target_needs_its_version():
    with pytest.raises(ConfigError, match="tensorrt"):
        parse(TargetProfile, {"name": "x", "runtime": "tensorrt", "arch": "aarch64", "precisions": ["fp16"],
                              "max_opset": 17}, "x.yaml")


def test_profile_from_a_path(tmp_path):
    path = tmp_path / "board.yaml"
    path.write_text("runtime: onnxruntime\narch: aarch64\nprecisions: [fp32]\nmax_opset: 17\n")
    assert load_target(str(path)).name == "board"
