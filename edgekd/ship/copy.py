"""Copy a bundle to a local directory or to `user@host:path` over ssh.

A partial copy can never pass for a complete one: the bundle goes to
`<dest>.partial` first, its hashes are checked there, and only then is it
renamed to `<dest>` (on a remote host with `ssh host mv`, a rename within
one file system, hence atomic). A stale `.partial` from an interrupted copy
is replaced. Over ssh, rsync is used when both ends have it, else scp; the
check runs `sha256sum -c SHA256SUMS` on the device, so the device needs
coreutils, not edgekd.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import ConfigError, VerifyError
from edgekd.ship.verify import CHECKSUMS, verify_bundle

_REMOTE = re.compile(r"^(?P<host>(?:[^@/:\s]+@)?[^@/:\s]+):(?P<path>.+)$")


@dataclass(frozen=True)
class Remote:
    host: str  # "user@host" or "host"
    path: str  # as the remote shell sees it, relative to the login directory unless absolute

    def __str__(self) -> str:
        return f"{self.host}:{self.path}"


# What a remote host and path may hold. A host starting with "-" would reach ssh as an option
# (`-oProxyCommand=...` runs a command); a path is refused rather than quoted where a shell
# metacharacter could reach a remote shell (scp's legacy protocol, rsync before 3.2.4).
_HOST = re.compile(r"^(?:[A-Za-z0-9._][A-Za-z0-9._+-]*@)?[A-Za-z0-9._][A-Za-z0-9._-]*$")
_PATH = re.compile(r"^[A-Za-z0-9._/~+,=@%:-]+$")


def parse_dest(dest: str) -> Path | Remote:
    """`user@host:path` or `host:path` is remote; anything else (or an existing path) is local."""
    match = _REMOTE.match(dest)
    if match is None or Path(dest).exists():
        return Path(dest)
    host, path = match["host"], match["path"]
    if not _HOST.match(host):
        raise ConfigError(f"Remote host {host[:100]!r} is not a plain [user@]host name (it must not start with '-').",
                          "Give the device as user@host:path, e.g. pi@raspberrypi.local:models/digits.")
    if not _PATH.match(path) or path.startswith("-"):
        raise ConfigError(f"Remote path {path[:100]!r} holds characters a remote shell would interpret (spaces, "
                          "quotes, $, ;, ...) or starts with '-'.",
                          "Use a path of letters, digits and . _ / ~ + , = @ % : - only.")
    if path.startswith("~/"):  # relative paths already start at the login directory; "~" would be quoted
        path = path[2:]
    return Remote(host, path.rstrip("/"))


def normalize_ssh_options(options: list[str] | tuple[str, ...]) -> list[str]:
    """`-p PORT` becomes `-o Port=PORT`: scp reads -p as "preserve times" and wants -P."""
    out, it = [], iter(options)
    for opt in it:
        if opt == "-p":
            out += ["-o", f"Port={next(it, '')}"]
        elif opt.startswith("-p") and opt[2:].isdigit():
            out += ["-o", f"Port={opt[2:]}"]
        else:
            out.append(opt)
    return out


TRANSFERS = ("auto", "rsync", "scp")


def copy_bundle(bundle: str | Path, dest: str | Path, ssh_options=(), force: bool = False, transfer: str = "auto") -> str:
    """Copy `bundle` (a directory) to exactly `dest`; returns where it landed.

    `transfer` (remote only): "auto" uses rsync when both ends have it, else scp.
    """
    if transfer not in TRANSFERS:
        raise ConfigError(f"Unknown transfer {transfer!r}.", f"Use one of: {', '.join(TRANSFERS)}.")
    bundle = Path(bundle)
    target = parse_dest(str(dest))
    if isinstance(target, Remote):
        _copy_remote(bundle, target, normalize_ssh_options(list(ssh_options)), force, transfer)
    else:
        _copy_local(bundle, target, force)
    return str(target)


def _exists_error(dest) -> ConfigError:
    return ConfigError(f"{dest} already exists.", "Pass --force to replace it, or ship to another path.")


def _copy_local(bundle: Path, dest: Path, force: bool) -> None:
    if (dest.exists() or dest.is_symlink()) and not force:
        raise _exists_error(dest)
    partial = dest.with_name(dest.name + ".partial")
    _remove(partial)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, partial)
    verify_bundle(partial, hashes_only=True)
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(dest.name + ".old")
        _remove(old)
        dest.rename(old)
        partial.rename(dest)
        _remove(old)
    else:
        partial.rename(dest)


def _remove(path: Path) -> None:
    """Whatever is at `path`: a folder (its tree), a file or a symlink (itself, never its target)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy_remote(bundle: Path, dest: Remote, opts: list[str], force: bool, transfer: str) -> None:
    q = shlex.quote
    final, partial = dest.path, dest.path + ".partial"
    parent = str(Path(final).parent)
    if _ssh(dest.host, opts, f"test -e {q(final)}", check=False).returncode == 0 and not force:
        raise _exists_error(dest)
    _ssh(dest.host, opts, f"mkdir -p {q(parent)} && rm -rf {q(partial)}")
    if transfer == "auto":
        both = shutil.which("rsync") and _ssh(dest.host, opts, "command -v rsync", check=False).returncode == 0
        transfer = "rsync" if both else "scp"
    if transfer == "rsync":
        ssh_cmd = shlex.join(["ssh", *opts])
        _run(["rsync", "-a", "--delete", "-e", ssh_cmd, "--", f"{bundle}/", f"{dest.host}:{partial}/"], "rsync")
    else:
        _run(["scp", "-q", "-r", *opts, "--", str(bundle), f"{dest.host}:{partial}"], "scp")
    check = _ssh(dest.host, opts, f"cd {q(partial)} && sha256sum -c --quiet {CHECKSUMS}", check=False)
    if check.returncode != 0:
        bad = [line.split(":")[0] for line in check.stdout.splitlines() if "FAILED" in line]
        raise VerifyError(
            f"After copying to {dest.host}:{partial}, these files do not match: {', '.join(bad) or check.stdout.strip() or check.stderr.strip()}.",
            "Ship again; the incomplete copy keeps its .partial name and is never used.",
        )
    swap = f"mv {q(partial)} {q(final)}"
    if force:  # replace an older bundle: move it aside first so `mv` does not nest into it
        swap = f"rm -rf {q(final + '.old')} && {{ ! test -e {q(final)} || mv {q(final)} {q(final + '.old')}; }} && {swap} && rm -rf {q(final + '.old')}"
    _ssh(dest.host, opts, swap)


def _ssh(host: str, opts: list[str], command: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["ssh", *opts, "--", host, command], "ssh", check=check)  # "--": options end before the host


def _run(cmd: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ConfigError(f"`{cmd[0]}` is not installed here.", "Install openssh-client (and rsync).") from None
    if check and proc.returncode != 0:
        raise ConfigError(
            f"{what} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}",
            "Check that `ssh HOST true` works without a password prompt (keys or ssh-agent), and the path.",
        )
    return proc
