"""ship -> verify through a real sshd on 127.0.0.1, started (and stopped) by the test.

Needs Debian's openssh-server, openssh-client and rsync
(`apt-get install -y openssh-server openssh-client rsync`); skipped otherwise.
"""

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekd.errors import ConfigError, VerifyError
from edgekd.ship import ship
from edgekd.ship.copy import copy_bundle
from edgekd.targets import load_target

SSHD = "/usr/sbin/sshd"
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not (os.access(SSHD, os.X_OK) and shutil.which("ssh") and shutil.which("ssh-keygen") and shutil.which("scp")),
    reason="sshd/ssh not installed (Debian: apt-get install -y openssh-server openssh-client rsync)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """(user@127.0.0.1, ssh options, a scratch directory the 'device' sees)."""
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin yes\nStrictModes no\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    privsep = Path("/run/sshd")  # sshd refuses to start without its privilege-separation directory
    made_privsep = not privsep.exists()
    if made_privsep:
        try:
            privsep.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            pytest.skip(f"cannot create {privsep} that sshd needs: {exc}")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    opts = ["-F", "/dev/null", "-i", str(d / "client_key"), "-p", str(port), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR"]
    host = f"{getpass.getuser()}@127.0.0.1"
    try:
        _wait_until_up(proc, host, opts)
        (d / "device").mkdir()
        yield host, opts, d / "device"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if made_privsep:
            shutil.rmtree(privsep, ignore_errors=True)


def _wait_until_up(proc, host, opts) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {proc.stderr.read()}")
        if subprocess.run(["ssh", *opts, host, "true"], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    pytest.fail("sshd did not accept connections within 20 s")


def _verify_on_device(host, opts, bundle: Path) -> subprocess.CompletedProcess:
    """`edgekd verify` run over ssh, as a user on the device would."""
    code = "from edgekd.ship.cli import verify_command; verify_command()"
    cmd = f"PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} -c {shlex.quote(code)} {shlex.quote(str(bundle))}"
    return subprocess.run(["ssh", *opts, host, cmd], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("transfer", ["rsync", "scp"])
def test_ship_over_ssh_then_verify_on_the_device(fake_run, sshd, transfer):
    host, opts, device = sshd
    if transfer == "rsync" and not shutil.which("rsync"):
        pytest.skip("rsync is not installed")
    final = device / f"bundle-{transfer}"
    result = ship(fake_run, load_target("host-cpu"), f"{host}:{final}", ssh_options=opts, transfer=transfer)
    assert result.destination == f"{host}:{final}"
    assert sorted(p.name for p in device.iterdir() if p.name.startswith(final.name)) == [final.name]
    check = _verify_on_device(host, opts, final)
    assert check.returncode == 0, check.stderr
    assert "student.int8.onnx: golden outputs match" in check.stdout and check.stdout.strip().endswith("OK")

    # Tampering on the device: a changed byte fails verification, naming the file.
    with open(final / "student.onnx", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    check = _verify_on_device(host, opts, final)
    assert check.returncode != 0
    assert "VerifyError: student.onnx: SHA-256 mismatch" in check.stderr


def test_existing_bundle_needs_force(fake_run, sshd):
    host, opts, device = sshd
    final = device / "bundle-force"
    target = load_target("host-cpu")
    ship(fake_run, target, f"{host}:{final}", artifacts=["student-int8"], ssh_options=opts)
    with pytest.raises(ConfigError, match="already exists"):
        ship(fake_run, target, f"{host}:{final}", ssh_options=opts)
    ship(fake_run, target, f"{host}:{final}", ssh_options=opts, force=True)
    assert (final / "student.onnx").is_file()  # the new, two-model bundle replaced the old one
    assert sorted(p.name for p in device.iterdir() if p.name.startswith("bundle-force")) == ["bundle-force"]


def test_damaged_transfer_is_never_renamed(fake_run, sshd, tmp_path):
    host, opts, device = sshd
    local = tmp_path / "bundle"
    ship(fake_run, load_target("host-cpu"), str(local))
    with open(local / "student.int8.onnx", "r+b") as f:  # as if corrupted in transit
        f.seek(500)
        f.write(b"\xde\xad")
    final = device / "bundle-damaged"
    with pytest.raises(VerifyError, match="student.int8.onnx"):
        copy_bundle(local, f"{host}:{final}", ssh_options=opts)
    assert not final.exists()
    assert (device / "bundle-damaged.partial").is_dir()


def test_unreachable_host_is_a_clear_error(fake_run, sshd):
    _, opts, _ = sshd
    nothing_there = [o for o in opts]
    nothing_there[nothing_there.index("-p") + 1] = str(_free_port())  # no daemon listens on it
    with pytest.raises(ConfigError, match="ssh failed") as info:
        copy_bundle(fake_run, "nobody@127.0.0.1:x", ssh_options=nothing_there)
    assert "without a password prompt" in info.value.hint
