"""One artifact in its own process: `python -m edgekd.bench.worker`.

The parent (`edgekd.bench.measure`) starts one worker per artifact so each
memory figure starts from a clean process, and drives them in turn over
pipes so machine noise hits every artifact alike. Protocol: one JSON request
per line on stdin, one JSON reply per line on the worker's original stdout.
File descriptor 1 is pointed at stderr before anything runs, so a library
that prints cannot corrupt the protocol.

Requests (`cmd`): load, warmup, round, accuracy, exit. Every reply has
`ok`; failures carry `error` (exception class), `message`, `hint`.

Memory, Linux: writing "5" to /proc/self/clear_refs resets VmHWM (the peak
RSS) to the current RSS, so after importing the runtime we reset it, read
VmRSS as the baseline, and every later VmHWM minus the baseline is the exact
peak the model added. Where the reset is refused we fall back to the larger
of VmRSS samples taken after load and after every round (a lower bound),
and say so in `memory_method`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from edgekd.bench import runners
from edgekd.errors import DataError, EdgekdError

_MB = 1024.0 * 1024.0


# ---------------------------------------------------------------------- memory
def _status_mb(key: str) -> float | None:
    """VmRSS / VmHWM from /proc/self/status in MiB, None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux >= 4.0, or /proc mounted read-only
        return False
    return True


class Memory:
    def __init__(self):
        self.exact = _reset_peak()
        self.baseline = _status_mb("VmRSS") or _rusage_mb()
        self.sampled_peak = self.baseline

    @property
    def method(self) -> str:
        if self.exact:
            return "VmHWM after clear_refs reset (exact)"
        return "max of sampled VmRSS (lower bound)"

    def peak_over_baseline(self) -> float:
        current = _status_mb("VmRSS") or _rusage_mb()
        self.sampled_peak = max(self.sampled_peak, current)
        peak = _status_mb("VmHWM") if self.exact else self.sampled_peak
        return max(0.0, peak - self.baseline)


def _rusage_mb() -> float:
    import resource

    # ru_maxrss is KiB on Linux, bytes on macOS; used only where /proc is absent.
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / _MB


# --------------------------------------------------------------------- worker
class Worker:
    def __init__(self):
        self.runner = None
        self.memory: Memory | None = None
        self.inputs: dict[int, np.ndarray] = {}
        self.input_shape: tuple | None = None

    def load(self, runtime: str, path: str, threads=None, target=None, input_shape=None) -> dict:
        chosen = runners.backend(runtime)
        t0 = time.perf_counter()
        chosen.import_runtime()
        import_s = time.perf_counter() - t0
        profile = _target(target)
        gc.collect()
        self.memory = Memory()  # baseline: interpreter + numpy + runtime library
        t0 = time.perf_counter()
        self.runner = chosen.load(Path(path), profile, threads)
        load_s = time.perf_counter() - t0
        self.input_shape = tuple(input_shape) if input_shape else getattr(self.runner, "input_shape", None)
        return {
            "pid": os.getpid(),
            "import_s": import_s,
            "load_s": load_s,
            "baseline_rss_mb": self.memory.baseline,
            "load_rss_mb": self.memory.peak_over_baseline(),
            "memory_method": self.memory.method,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "fixed_batch": getattr(self.runner, "fixed_batch", None),
            "min_batch": getattr(self.runner, "min_batch", None),  # a TensorRT engine's optimization profile
            "max_batch": getattr(self.runner, "max_batch", None),
            "providers": getattr(self.runner, "providers", None),
        }

    def _input(self, batch: int) -> np.ndarray:
        if not runners.supports_batch(self.runner, batch):  # timing it would time smaller calls, or padding
            raise DataError(f"The artifact cannot run batch {batch} as one call.",
                            "Benchmark the batch sizes it takes (its fixed batch or its engine profile).")
        if batch not in self.inputs:
            if self.input_shape is None:
                raise DataError(
                    "The artifact does not fix its input shape and none was given.",
                    "Pass the input shape (C, H, W), e.g. `edgekd bench --input-shape 3,224,224`.",
                )
            rng = np.random.default_rng(batch)  # same data for every artifact at this batch size
            self.inputs[batch] = rng.standard_normal((batch, *self.input_shape)).astype(np.float32)
        return self.inputs[batch]

    def warmup(self, batch: int, seconds: float) -> dict:
        x = self._input(batch)
        run = self.runner.run
        n, t0 = 0, time.perf_counter()
        while n < 1 or time.perf_counter() - t0 < seconds:
            run(x)
            n += 1
        return {"iterations": n, "mean_ms": (time.perf_counter() - t0) * 1000.0 / n}

    def round(self, batch: int, min_iterations: int, min_seconds: float) -> dict:
        """At least `min_iterations` calls AND at least `min_seconds`; one sample per call."""
        x = self._input(batch)
        run, clock = self.runner.run, time.perf_counter_ns
        samples: list[int] = []
        budget_ns = int(min_seconds * 1e9)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collector pause inside a timed call is noise, not the model
        try:
            start = clock()
            while len(samples) < min_iterations or clock() - start < budget_ns:
                t0 = clock()
                run(x)
                samples.append(clock() - t0)
        finally:
            if gc_was_enabled:
                gc.enable()
        return {
            "samples_ms": [s / 1e6 for s in samples],
            "peak_rss_mb": self.memory.peak_over_baseline(),
        }

    def accuracy(self, data: str, batch: int = 32) -> dict:
        with np.load(data, allow_pickle=False) as npz:
            x, y = npz["x"].astype(np.float32), npz["y"]
        logits = runners.predict(self.runner, x, batch_size=batch)
        return {"accuracy": float((logits.argmax(axis=1) == y).mean()), "samples": int(len(y))}


def _target(data: dict | None):
    if data is None:
        return None
    from edgekd.targets import TargetProfile

    return TargetProfile.model_validate(data)


def _handle(worker: Worker, request: dict) -> dict:
    cmd = request.pop("cmd")
    handlers = {"load": worker.load, "warmup": worker.warmup, "round": worker.round, "accuracy": worker.accuracy}
    if cmd not in handlers:
        raise ValueError(f"unknown worker command {cmd!r}")
    return handlers[cmd](**request)


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    worker = Worker()
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("cmd") == "exit":
            break
        try:
            reply = {"ok": True, **_handle(worker, request)}
        except EdgekdError as exc:
            reply = {"ok": False, "error": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        except Exception as exc:  # process edge: hand any failure to the parent, which raises it
            reply = {"ok": False, "error": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
    proto.close()


if __name__ == "__main__":
    main()
