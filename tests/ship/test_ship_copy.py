"""Local copies and destination parsing: a partial copy never takes the final name."""

import shlex
import shutil
import subprocess
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
                                            "--artifact", "student-int8", "--golden", "64"], catch_exceptions=False)
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


# ------------------------------------------------------------------ remote copy hygiene


@pytest.mark.parametrize("dest", ["-oProxyCommand=sh:models/b1", "pi@-oProxyCommand=sh:b1", "-l:b1"])
def test_a_host_that_would_be_an_ssh_option_is_refused(dest):
    with pytest.raises(ConfigError, match="must not start with '-'"):
        parse_dest(dest)


@pytest.mark.parametrize("path", ["models/$(reboot)", "b1;rm -rf ~", "my models/b1", "-rf", "b`id`"])
def test_a_remote_path_a_shell_would_interpret_is_refused(path):
    with pytest.raises(ConfigError, match="characters a remote shell would interpret"):
        parse_dest(f"pi@rpi5.local:{path}")


def test_ssh_scp_and_rsync_get_options_ended_before_host_and_paths(monkeypatch, tmp_path):
    from edgekd.ship import copy

    calls = []

    def fake_run(cmd, what, check=True):
        calls.append(cmd)
        if cmd[0] == "ssh" and cmd[-1].startswith("test -e"):
            return subprocess.CompletedProcess(cmd, 1, "", "")  # nothing there yet
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(copy, "_run", fake_run)
    for transfer in ("scp", "rsync"):
        copy_bundle(tmp_path, "pi@rpi5.local:models/b1", ssh_options=["-p", "2222"], transfer=transfer)
    for cmd in calls:
        remote = next(i for i, arg in enumerate(cmd) if "rpi5.local" in arg)
        assert "--" in cmd[:remote], cmd


def test_the_printed_verify_command_is_shell_quoted(fake_run, tmp_path):
    dest = tmp_path / "dev dir" / "bundle; rm -rf ~"
    res = CliRunner().invoke(ship_command, [str(fake_run), "-t", "host-cpu", "--to", str(dest)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    line = next(line for line in res.output.splitlines() if line.startswith("on the device: "))
    assert shlex.split(line.removeprefix("on the device: ")) == ["edgekd", "verify", str(dest)]


def test_a_leftover_partial_file_does_not_break_the_copy(fake_run, tmp_path):
    src = tmp_path / "src"
    CliRunner().invoke(ship_command, [str(fake_run), "-t", "host-cpu", "--to", str(src)], catch_exceptions=False)
    dest = tmp_path / "dest" / "bundle"
    dest.parent.mkdir()
    Path(str(dest) + ".partial").write_text("a file, where an interrupted copy left a folder before")
    copy_bundle(src, dest)
    assert verify_bundle(dest, hashes_only=True).files_checked == 9 and not Path(str(dest) + ".partial").exists()
