"""Local copies and destination parsing: a partial copy never takes the final name."""

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd.errors import ConfigError, VerifyError
from edgekd.ship.cli import ship_command
from edgekd.ship.copy import Remote, copy_bundle, normalize_ssh_options, parse_dest
from edgekd.ship.verify import verify_bundle


@pytest.mark.parametrize(
    "dest, expected",
    [
        ("pi@rpi5.local:bundles/b1", Remote("pi@rpi5.local", "bundles/b1")),
        ("orin:/opt/models/b1/", Remote("orin", "/opt/models/b1")),
        ("pi@10.0.0.7:~/b1", Remote("pi@10.0.0.7", "b1")),  # ~ would be quoted; relative = home
        ("/tmp/x:y/b1", Path("/tmp/x:y/b1")),  # a slash before the colon: local
        ("./b1", Path("./b1")),
    ],
)
def test_parse_dest(dest, expected):
    assert parse_dest(dest) == expected


def test_port_option_works_for_ssh_scp_and_rsync():
    assert normalize_ssh_options(["-i", "k", "-p", "2222", "-p2200"]) == ["-i", "k", "-o", "Port=2222", "-o", "Port=2200"]


def test_ship_cli_to_a_local_directory(fake_run, tmp_path):
    dest = tmp_path / "dev" / "bundle"
    res = CliRunner().invoke(ship_command, [str(fake_run), "--target", "host-cpu", "--to", str(dest),
                                            "--artifact", "student-int8", "--golden", "4"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "student.int8.onnx" in res.output
    assert [m.file for m in verify_bundle(dest).models] == ["student.int8.onnx"]
    assert not Path(str(dest) + ".partial").exists()
    # Again without --force: refused, nothing touched; with --force: replaced.
    res = CliRunner().invoke(ship_command, [str(fake_run), "-t", "host-cpu", "--to", str(dest)])
    assert isinstance(res.exception, ConfigError) and "already exists" in str(res.exception)
    res = CliRunner().invoke(ship_command, [str(fake_run), "-t", "host-cpu", "--to", str(dest), "--force"],
                             catch_exceptions=False)
    assert res.exit_code == 0
    assert [m.file for m in verify_bundle(dest).models] == ["student.onnx", "student.int8.onnx"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["bundle"]  # no .partial or .old left


def test_a_damaged_copy_keeps_its_partial_name(fake_run, tmp_path):
    src = tmp_path / "src"
    CliRunner().invoke(ship_command, [str(fake_run), "-t", "host-cpu", "--to", str(src)], catch_exceptions=False)
    with open(src / "golden" / "inputs.npy", "r+b") as f:  # damage after the manifest was written
        f.seek(200)
        f.write(b"\x00\x01")
    dest = tmp_path / "dest" / "bundle"
    with pytest.raises(VerifyError, match="golden/inputs.npy"):
        copy_bundle(src, dest)
    assert not dest.exists()
    assert (tmp_path / "dest" / "bundle.partial").is_dir()
    with pytest.raises(VerifyError):  # and the partial one does not verify either
        verify_bundle(tmp_path / "dest" / "bundle.partial")
    shutil.rmtree(src)
