"""A device over ssh: candidates shipped as one bundle, timed there by `edgekd profile`, table pulled back.

    probe:    ssh HOST '<edgekd_command> profile --probe'        (on opening: before any training)
    ship:     edgekd.ship.copy.copy_bundle(bundle, HOST:<remote_dir>/bundle)   (rsync or scp, hash-checked)
    measure:  ssh HOST '<edgekd_command> profile <remote_dir>/bundle -o <remote_dir>/table.json ...'
    pull:     ssh HOST 'cat <remote_dir>/table.json'

The table on the device lives beside the bundle, so a profile interrupted by a
dropped connection continues there on the next search. Needs ssh that logs in
without a prompt (keys or ssh-agent) and edgekd with onnxruntime on the device
(no torch). Torch-free.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from edgekd.artifacts import sha256_file
from edgekd.errors import ConfigError, RuntimeBackendError
from edgekd.search.cache import RuntimeInfo
from edgekd.search.candidates import PreparedCandidate
from edgekd.search.plan import MeasureOptions, TargetPlan, measurement_of
from edgekd.search.profile import INSTALL_HINT, runtime_or_raise

SSH_UNREACHABLE = 255  # ssh's own failures (connection, authentication) exit 255
COMMAND_NOT_FOUND = 127


class SshBackend:
    def __init__(self, plan: TargetPlan, options: MeasureOptions):
        from edgekd.ship.copy import normalize_ssh_options

        self.plan, self.options = plan, options
        self.host, self.command = plan.host, plan.target.edgekd_command
        self.ssh_options = normalize_ssh_options(list(options.ssh_options))
        self.remote = options.remote_dir.format(target=plan.target.name).rstrip("/")
        found = runtime_or_raise(self._probe(), where=f"{self.host} (target {plan.target.name!r})",
                                 runtime=plan.target.runtime)
        if found["arch"] != plan.target.arch:
            raise ConfigError(f"{self.host} is an {found['arch']} machine, but target {plan.target.name!r} says "
                              f"{plan.target.arch}.", "Point the target's host at the right device, or fix its arch.")
        self.runtime = RuntimeInfo(found["runtime"]["name"], found["runtime"]["version"], found["arch"], found["cpu"])

    def _probe(self) -> dict:
        reply = self.ssh(f"{self.command} profile --probe", "asking the device what it runs").stdout
        try:
            return json.loads(reply.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise RuntimeBackendError(f"`{self.command} profile --probe` on {self.host} printed {reply.strip()!r}, "
                                      "not a JSON probe.", "Update edgekd on the device to this version.") from None

    def ssh(self, remote_command: str, doing: str, stream: bool = False) -> subprocess.CompletedProcess:
        """Run `remote_command` on the device; `stream`: pass its stderr lines (progress) to the log as they come."""
        cmd = ["ssh", *self.ssh_options, self.host, remote_command]
        try:
            proc = _run(cmd, self.options.log if stream else None)
        except FileNotFoundError:
            raise ConfigError("`ssh` is not installed here.", "Install openssh-client (and rsync).") from None
        if proc.returncode == 0:
            return proc
        said = _tail(proc.stderr) or _tail(proc.stdout) or "(no output)"
        if proc.returncode == SSH_UNREACHABLE:
            raise ConfigError(
                f"Cannot reach {self.host} for target {self.plan.target.name!r}: `{shlex.join(cmd)}` failed "
                f"(exit {proc.returncode}): {said}",
                "Check that `ssh HOST true` works without a password prompt (keys or ssh-agent) and the target's "
                "host: user@name; pass port or key through the ssh options.",
            )
        if proc.returncode == COMMAND_NOT_FOUND:
            raise RuntimeBackendError(
                f"edgekd does not start on {self.host} with `{self.command}`: {said}",
                f"Install it on the device ({INSTALL_HINT}, no torch needed), or set the target's edgekd_command to "
                "how it starts there, e.g. ~/venv/bin/edgekd.",
            )
        raise RuntimeBackendError(f"On {self.host}, {doing} failed: `{shlex.join(cmd)}` exited {proc.returncode}: "
                                  f"{said}", "Run that command by hand to see the whole output.")

    def measure(self, todo: list[PreparedCandidate], save: Callable[[PreparedCandidate, dict], None]) -> None:
        from edgekd.search.bundle import write_candidate_bundle
        from edgekd.ship.copy import copy_bundle

        q = shlex.quote
        bundle, table = f"{self.remote}/bundle", f"{self.remote}/table.json"
        with tempfile.TemporaryDirectory(prefix="edgekd-candidates-") as tmp:
            local = write_candidate_bundle(todo, self.plan.target, Path(tmp) / "bundle")
            self.options.log(f"{self.plan.target.name}: shipping {len(todo)} candidates to {self.host}:{bundle}")
            copy_bundle(local, f"{self.host}:{bundle}", ssh_options=self.ssh_options, force=True)
        s = self.options.settings
        self.ssh(f"{self.command} profile {q(bundle)} -o {q(table)} --threads {self.plan.target.threads} "
                 f"--warmup {s.warmup_s} --iterations {s.min_iterations} --seconds {s.min_seconds} "
                 f"--rounds {s.rounds} --group {self.options.group}", f"timing {len(todo)} candidates", stream=True)
        pulled = self.ssh(f"cat {q(table)}", "reading the latency table").stdout
        by_file = {(e["name"], e["sha256"]): e for e in json.loads(pulled)["entries"]}
        for p in todo:
            entry = by_file.get((p.name, sha256_file(p.path)))
            if entry is None:
                raise RuntimeBackendError(f"The latency table on {self.host} has no entry for {p.name}.",
                                          f"Inspect {self.host}:{table}; re-run the search to continue.")
            save(p, measurement_of(entry, self.plan.where))


def _run(cmd: list[str], log: Callable[[str], None] | None) -> subprocess.CompletedProcess:
    if log is None:
        return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                          text=True) as proc:
        lines = []
        for line in proc.stderr:  # the device's progress; its stdout is one summary line
            lines.append(line)
            log(f"{cmd[-2]}: {line.rstrip()}")
        stdout = proc.stdout.read()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, "".join(lines))


def _tail(text: str, limit: int = 1500) -> str:
    return text.strip()[-limit:]
