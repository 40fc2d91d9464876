"""Measure artifacts in fresh worker processes, interleaved (torch-free).

    measure_artifacts([ArtifactToMeasure("student-int8", "onnxruntime", path), ...],
                      input_shape=(3, 32, 32), target=profile, settings=BenchSettings())
    -> {"student-int8": Measurement, ...}

Each artifact gets its own `python -m edgekd.bench.worker` (clean memory
figures). All workers stay alive; for every batch size each warms up for
`warmup_s`, then the parent runs `rounds` rounds, asking each worker in turn
(rotating the order every round) for at least min_iterations/rounds calls
and min_seconds/rounds seconds. Slow drift of the machine (other jobs,
thermal throttling) therefore lands on every artifact alike, and after all
rounds each artifact has at least `min_iterations` samples and
`min_seconds` of timing per batch size.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd import errors
from edgekd.bench.stats import summarize, throughput_ips
from edgekd.bench.sysinfo import host_arch, usable_cores
from edgekd.errors import ConfigError, RuntimeBackendError

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile


@dataclass(frozen=True)
class BenchSettings:
    warmup_s: float = 1.0  # per artifact and batch size, before any timed round
    min_iterations: int = 100  # per artifact and batch size, summed over rounds
    min_seconds: float = 2.0  # likewise; both minimums must be met
    batch_sizes: tuple[int, ...] = (1, 8)
    rounds: int = 5
    threads: int | None = None  # None: the target's `threads`; 0: the runtime's default
    timeout_s: float = 600.0  # longest wait for one reply from a worker

    def check(self) -> None:
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"Batch sizes must be positive integers, got {self.batch_sizes}.", "Use e.g. 1,8.")
        if self.rounds < 1 or self.min_iterations < 1:
            raise ConfigError("`rounds` and `min_iterations` must be at least 1.", "Use the defaults: 5 and 100.")
        if self.warmup_s < 0 or self.min_seconds < 0:
            raise ConfigError("`warmup_s` and `min_seconds` cannot be negative.", "Use 0 to skip them.")


@dataclass(frozen=True)
class ArtifactToMeasure:
    name: str
    runtime: str  # a key of edgekd.bench.runners.BACKENDS
    path: Path
    # this artifact's own input (C, H, W) and test .npz, where they differ from the call's (a teacher and a
    # student with its own input size or channels, measured side by side)
    input_shape: tuple[int, int, int] | None = None
    data: Path | None = None


@dataclass
class Measurement:
    """One artifact's numbers. Headline figures are at the smallest batch size."""

    name: str
    runtime: str
    path: str
    batch_size: int  # the batch size of latency_ms / latency_samples_ms / peak_rss_mb
    latency_ms: dict  # p50 p90 p99 mean std min max, per call
    throughput_ips: float  # best images/s over the batch sweep
    peak_rss_mb: float  # peak RSS over the post-import baseline, up to the end of `batch_size` runs
    load_s: float  # model load / session creation (runtime import excluded)
    batch_sweep: dict  # {"1": {"latency_ms", "throughput_ips", "peak_rss_mb", "iterations", "round_p50_ms"}, ...}
    latency_samples_ms: list  # every timed call at `batch_size`, in order
    threads: int | None
    import_s: float  # importing the runtime library (not part of load_s)
    baseline_rss_mb: float  # RSS after importing the runtime, before loading the model
    memory_method: str
    skipped_batches: dict = field(default_factory=dict)  # {"8": why}
    accuracy: float | None = None
    accuracy_samples: int | None = None
    providers: list | None = None
    notes: list = field(default_factory=list)  # e.g. the target's threads capped to this host's cores

    def report_fields(self) -> dict:
        """The keys of a report.json artifact entry this measurement fills."""
        fields = {
            k: getattr(self, k)
            for k in ("latency_ms", "throughput_ips", "peak_rss_mb", "load_s", "batch_sweep")
        }
        fields["latency_samples_ms"] = [round(s, 5) for s in self.latency_samples_ms]
        if self.accuracy is not None:
            fields["accuracy"] = self.accuracy
            fields["accuracy_samples"] = self.accuracy_samples
        fields["bench"] = {
            "batch_size": self.batch_size,
            "threads": self.threads,
            "import_s": self.import_s,
            "baseline_rss_mb": self.baseline_rss_mb,
            "memory_method": self.memory_method,
            "skipped_batches": self.skipped_batches,
            "providers": self.providers,
            "notes": self.notes,
        }
        return fields

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------- the driver
def measure_artifacts(
    artifacts: list[ArtifactToMeasure],
    input_shape: tuple[int, int, int] | None = None,
    target: "TargetProfile | None" = None,
    settings: BenchSettings = BenchSettings(),
    data: str | Path | None = None,
    progress=None,
) -> dict[str, Measurement]:
    """Benchmark every artifact in its own worker; accuracy too when `data` (an (x, y) .npz: a run's
    data/test.npz) is given. `progress(n=1)` after each of the `measurement_steps(...)` steps (a load,
    a batch size's warm-up or round, an accuracy pass), for a progress bar with rate and ETA."""
    settings.check()
    names = [a.name for a in artifacts]
    if len(set(names)) != len(names):
        raise ConfigError(f"Artifact names must be unique, got {names}.", "Rename the duplicates.")
    threads, note = resolve_threads(settings, target)
    workers: list[_Worker] = []
    step = progress or (lambda n=1: None)
    try:
        for artifact in artifacts:  # loads one at a time so load_s is not contended
            workers.append(_Worker(artifact, settings.timeout_s))
            workers[-1].load(threads, target, artifact.input_shape or input_shape)
            step()
        for batch in sorted({int(b) for b in settings.batch_sizes}):
            _measure_batch(workers, batch, settings, step)
        if data is not None:  # after the timed rounds: loading the data must not count as model memory
            for w in workers:
                w.accuracy = w.call("accuracy", data=str(w.artifact.data or data))
                step()
        return {w.artifact.name: w.result(threads, [note] if note else []) for w in workers}
    finally:
        for w in workers:
            w.close()


def resolve_threads(settings: BenchSettings, target: "TargetProfile | None") -> tuple[int | None, str | None]:
    """(threads to measure with, a note when they differ from what was asked).

    Explicit `settings.threads` win. A target's `threads` above this host's usable cores is
    capped to them: oversubscribed threads measure contention, not the model (a 4-thread
    profile on 2 cores took a ResNet-18 from 2.0 to 7.3 ms)."""
    if settings.threads is not None:
        return settings.threads, None
    if target is None:
        return None, None
    cores = usable_cores()
    if target.threads > cores:
        return cores, (f"target {target.name} asks for {target.threads} threads but this host has {cores} usable "
                       f"core(s): measured with {cores} threads")
    return target.threads, None


def measurement_context(target: "TargetProfile | None", settings: BenchSettings) -> dict:
    """Where and how measurements were taken, as reports record it: budget verdicts compare it
    with each target (edgekd.report.core.measured_on)."""
    threads, note = resolve_threads(settings, target)
    return {"arch": host_arch(), "cores": usable_cores(), "session_target": target.name if target else None,
            "threads": threads, "graph_optimization_level": target.graph_optimization_level if target else "all",
            "notes": [note] if note else []}


def batch_refusal(loaded: dict, batch: int) -> str | None:
    """Why an artifact cannot run `batch` as one call (None: it can), from what its worker reported.
    Never split or padded into a batch it does not take: the figure would not be that batch's."""
    fixed, low, high = loaded.get("fixed_batch"), loaded.get("min_batch"), loaded.get("max_batch")
    if fixed is not None and batch != fixed:
        return f"the artifact takes only batch {fixed}"
    if (low is not None and batch < low) or (high is not None and batch > high):
        return f"the engine's optimization profile admits batch {low}..{high}; rebuild it with --max-batch {batch}"
    return None


def measurement_steps(artifacts: int, settings: BenchSettings, data: bool) -> int:
    """How many steps `measure_artifacts` reports: per artifact a load, per batch size a warm-up and
    `rounds` rounds, and an accuracy pass with data."""
    batches = len({int(b) for b in settings.batch_sizes})
    return artifacts * (1 + batches * (1 + settings.rounds) + int(data))


def _measure_batch(workers: list["_Worker"], batch: int, settings: BenchSettings, step) -> None:
    active = [w for w in workers if batch_refusal(w.loaded, batch) is None]
    for w in workers:
        if w not in active:
            w.skipped[str(batch)] = batch_refusal(w.loaded, batch)
            step(1 + settings.rounds)  # a refused batch size: its steps are done
    for w in active:
        w.call("warmup", batch=batch, seconds=settings.warmup_s)
        step()
    per_round = {
        "batch": batch,
        "min_iterations": math.ceil(settings.min_iterations / settings.rounds),
        "min_seconds": settings.min_seconds / settings.rounds,
    }
    for r in range(settings.rounds):
        shift = r % len(active) if active else 0
        for w in active[shift:] + active[:shift]:  # rotate who goes first
            w.add_round(batch, w.call("round", **per_round))
            step()


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, artifact: ArtifactToMeasure, timeout_s: float):
        self.artifact = artifact
        self.timeout_s = timeout_s
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgekd.bench.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=_worker_env(),
        )
        self.loaded: dict = {}
        self.rounds: dict[int, list[dict]] = {}
        self.accuracy: dict | None = None
        self.skipped: dict[str, str] = {}

    def load(self, threads, target, input_shape) -> None:
        self.loaded = self.call(
            "load",
            runtime=self.artifact.runtime,
            path=str(Path(self.artifact.path).resolve()),
            threads=threads,
            target=target.model_dump() if target is not None else None,
            input_shape=list(input_shape) if input_shape else None,
        )

    def add_round(self, batch: int, reply: dict) -> None:
        self.rounds.setdefault(batch, []).append(reply)

    def call(self, cmd: str, **kwargs) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died(cmd) from None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        if not ready:
            self.proc.kill()
            raise RuntimeBackendError(
                f"Benchmarking {self.artifact.name}: the worker gave no answer to {cmd!r} "
                f"within {self.timeout_s:.0f} s.{self._stderr_tail()}",
                "Raise BenchSettings.timeout_s for very slow artifacts, or check the device.",
            )
        line = self.proc.stdout.readline()
        if not line:
            raise self._died(cmd)
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise self._error(reply)
        return reply

    def _error(self, reply: dict) -> errors.EdgekdError:
        cls = getattr(errors, reply["error"], None)
        if not (isinstance(cls, type) and issubclass(cls, errors.EdgekdError)):
            cls = RuntimeBackendError
            reply["message"] += "\n" + reply.get("traceback", "")
        return cls(f"Benchmarking {self.artifact.name} ({self.artifact.path}): {reply['message']}", reply.get("hint"))

    def _died(self, cmd: str) -> RuntimeBackendError:
        code = self.proc.wait(timeout=10)
        why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return RuntimeBackendError(
            f"Benchmarking {self.artifact.name}: the worker process died during {cmd!r} ({why}).{self._stderr_tail()}",
            "A signal 9 usually means the device ran out of memory; try a smaller batch size.",
        )

    def _stderr_tail(self, limit: int = 2000) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return f"\nWorker stderr:\n{text[-limit:]}" if text else ""

    def result(self, threads, notes: list) -> Measurement:
        sweep = {}
        for batch, replies in sorted(self.rounds.items()):
            samples = [s for r in replies for s in r["samples_ms"]]
            sweep[str(batch)] = {
                "latency_ms": summarize(samples),
                "throughput_ips": throughput_ips(samples, batch),
                "peak_rss_mb": replies[-1]["peak_rss_mb"],
                "iterations": len(samples),
                "round_p50_ms": [summarize(r["samples_ms"])["p50"] for r in replies],
            }
        if not sweep:
            raise RuntimeBackendError(
                f"{self.artifact.name} runs none of the benchmarked batch sizes: "
                + "; ".join(f"batch {b}: {why}" for b, why in self.skipped.items()) + ".",
                "Benchmark a batch size it takes (--batch-sizes), or rebuild it for these.",
            )
        first = min(self.rounds)
        return Measurement(
            name=self.artifact.name,
            runtime=self.artifact.runtime,
            path=str(self.artifact.path),
            batch_size=first,
            latency_ms=sweep[str(first)]["latency_ms"],
            throughput_ips=max(v["throughput_ips"] for v in sweep.values()),
            peak_rss_mb=sweep[str(first)]["peak_rss_mb"],
            load_s=self.loaded["load_s"],
            batch_sweep=sweep,
            latency_samples_ms=[s for r in self.rounds[first] for s in r["samples_ms"]],
            threads=threads,
            import_s=self.loaded["import_s"],
            baseline_rss_mb=self.loaded["baseline_rss_mb"],
            memory_method=self.loaded["memory_method"],
            skipped_batches=self.skipped,
            accuracy=self.accuracy["accuracy"] if self.accuracy else None,
            accuracy_samples=self.accuracy["samples"] if self.accuracy else None,
            providers=self.loaded.get("providers"),
            notes=notes,
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()


def _worker_env() -> dict:
    """The worker must import this same edgekd, even from an uninstalled checkout."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
