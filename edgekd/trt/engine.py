"""Load, run and benchmark a TensorRT engine built by `edgekd build` (torch-free).

An engine only runs on the TensorRT version and GPU model it was built with,
so `load_runner` first compares the engine's sidecar with this device and
asks for a rebuild when they differ. Inference uses the name-based API of
TensorRT 8.5+ (`set_input_shape`, `set_tensor_address`, `execute_async_v3`)
on one CUDA stream, with page-locked host buffers and cuda-python for memory.

`EngineRunner.benchmark` measures like trtexec: a timed warm-up, then at
least `min_iterations` and `duration_s` of inferences, each timed with CUDA
events as GPU compute (enqueue to end of execution) and as end-to-end latency
(host-to-device copy + compute + device-to-host copy).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekd.artifacts import read_sidecar, sha256_file
from edgekd.bench.stats import summarize
from edgekd.errors import DataError, ModelError, RuntimeBackendError
from edgekd.trt.build import SIDECAR_FORMAT, import_tensorrt

REBUILD_HINT = "Rebuild on this device: `edgekd build ARTIFACT.onnx --target <your target>`."


def engine_sidecar(engine_path: str | Path) -> dict:
    """The engine's sidecar (edgekd.artifacts.read_sidecar, required here: without it the engine's
    TensorRT version and GPU are unknown), checked to be an edgekd engine sidecar."""
    if not Path(engine_path).is_file():
        raise RuntimeBackendError(f"Engine file {str(engine_path)!r} does not exist.", "Check the path.")
    try:
        sidecar = read_sidecar(engine_path, required=True)
    except DataError as exc:
        raise RuntimeBackendError(f"{exc.message} Its TensorRT version and GPU are unknown.", REBUILD_HINT) from None
    if sidecar.get("format") != SIDECAR_FORMAT:
        raise RuntimeBackendError(
            f"{Path(engine_path).name}'s sidecar is not an edgekd engine sidecar ({SIDECAR_FORMAT}).", REBUILD_HINT
        )
    return sidecar


def compatibility_problems(sidecar: dict, trt_version: str, gpu: dict) -> list[str]:
    """Why an engine described by `sidecar` cannot run here; empty when it can."""
    problems = []
    built_trt = sidecar.get("tensorrt", {}).get("version")
    if built_trt != trt_version:
        problems.append(f"built with TensorRT {built_trt}, this device has {trt_version}")
    built_gpu = sidecar.get("gpu", {})
    for key, label in (
        ("name", "GPU"),
        ("compute_capability", "compute capability"),
        ("multiprocessors", "SM count"),
    ):
        if built_gpu.get(key) != gpu.get(key):
            problems.append(f"built for {label} {built_gpu.get(key)!r}, this device has {gpu.get(key)!r}")
    return problems


def load_engine(trt, engine_path: Path, sidecar: dict):
    """Deserialize after checking the sidecar against this device; (runtime, engine)."""
    from edgekd.trt import _cuda
    from edgekd.trt.build import CapturingLogger

    problems = compatibility_problems(sidecar, trt.__version__, _cuda.device_info())
    if problems:
        raise RuntimeBackendError(
            f"{engine_path.name} cannot run on this device: " + "; ".join(problems) + ".", REBUILD_HINT
        )
    if sha256_file(engine_path) != sidecar.get("engine", {}).get("sha256"):
        raise RuntimeBackendError(
            f"{engine_path.name} changed since it was built (SHA-256 differs).", REBUILD_HINT
        )
    logger = CapturingLogger.create(trt, min_severity="ERROR")
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise RuntimeBackendError(
            f"TensorRT {trt.__version__} could not deserialize {engine_path.name}: "
            + "; ".join(logger.errors or ["no detail"]),
            REBUILD_HINT,
        )
    return runtime, engine


class EngineRunner:
    """One engine, one execution context, one stream; `.run(x) -> logits` like an ORT session."""

    def __init__(self, engine_path: str | Path):
        from edgekd.trt import _cuda

        self._cuda = _cuda
        self.path = Path(engine_path)
        self.sidecar = engine_sidecar(self.path)
        trt = self._trt = import_tensorrt()
        self._runtime, self.engine = load_engine(trt, self.path, self.sidecar)
        self.context = self.engine.create_execution_context()
        self.input, self.output = _io_names(trt, self.engine)
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output)))
        self.min_batch, self.max_batch, self.sample_shape = _batch_range(self.engine, self.input)
        self.stream = _cuda.new_stream()
        self._buffers: dict = {}

    # -- inference -----------------------------------------------------------------------
    def run(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, ...) output; runs in chunks of at most the engine's max batch."""
        x = np.asarray(x)
        if tuple(x.shape[1:]) != self.sample_shape:
            raise DataError(
                f"Input of shape {list(x.shape)} does not fit {self.path.name}, which takes "
                f"(N, {', '.join(map(str, self.sample_shape))}).",
                "Preprocess the data as the bundle's data/test.npz was.",
            )
        outputs = []
        for start in range(0, len(x), self.max_batch):
            chunk = x[start : start + self.max_batch]
            outputs.append(self._infer(chunk))
        return np.concatenate(outputs) if outputs else np.empty((0,), self.out_dtype)

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        batch = max(n, self.min_batch)  # pad rows up to the profile's minimum; extra rows are dropped
        buffers = self._prepare(batch)
        host_in = buffers["host_in"].array[: batch * int(np.prod(self.sample_shape))]
        host_in[: chunk.size] = np.ascontiguousarray(chunk, dtype=self.in_dtype).ravel()
        host_in[chunk.size :] = 0
        self._enqueue(buffers)
        self._cuda.stream_synchronize(self.stream)
        count = int(np.prod(buffers["out_shape"]))
        return buffers["host_out"].array[:count].reshape(buffers["out_shape"])[:n].copy()

    def _enqueue(self, buffers: dict, events=None) -> None:
        """H2D copy, execute, D2H copy on the stream; events (4) bracket each step when given."""
        cuda, stream = self._cuda, self.stream
        mark = (lambda i: cuda.record(events[i], stream)) if events else (lambda i: None)
        mark(0)
        cuda.copy_async(buffers["dev_in"].ptr, buffers["host_in"].ptr, buffers["in_bytes"], True, stream)
        mark(1)
        if not self.context.execute_async_v3(cuda.handle(stream)):
            raise RuntimeBackendError(f"TensorRT failed to run {self.path.name}.", REBUILD_HINT)
        mark(2)
        cuda.copy_async(buffers["host_out"].ptr, buffers["dev_out"].ptr, buffers["out_bytes"], False, stream)
        mark(3)

    def _prepare(self, batch: int) -> dict:
        """Set the input shape and bind buffers sized for the engine's max batch (allocated once)."""
        if not self._buffers:
            self._allocate()
        if self._buffers.get("batch") != batch:
            if not self.context.set_input_shape(self.input, (batch, *self.sample_shape)):
                raise DataError(
                    f"Batch {batch} is outside the engine's profile [{self.min_batch}, {self.max_batch}].",
                    "Rebuild with a wider --min-batch/--max-batch.",
                )
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output))
            self._buffers.update(
                batch=batch,
                out_shape=out_shape,
                in_bytes=batch * int(np.prod(self.sample_shape)) * self.in_dtype.itemsize,
                out_bytes=int(np.prod(out_shape)) * self.out_dtype.itemsize,
            )
        return self._buffers

    def _allocate(self) -> None:
        cuda = self._cuda
        self.context.set_input_shape(self.input, (self.max_batch, *self.sample_shape))
        max_out = int(np.prod(tuple(int(d) for d in self.context.get_tensor_shape(self.output))))
        in_bytes = self.max_batch * int(np.prod(self.sample_shape)) * self.in_dtype.itemsize
        out_bytes = max_out * self.out_dtype.itemsize
        self._buffers = {
            "host_in": cuda.PinnedBuffer(in_bytes, self.in_dtype),
            "host_out": cuda.PinnedBuffer(out_bytes, self.out_dtype),
            "dev_in": cuda.DeviceBuffer(in_bytes),
            "dev_out": cuda.DeviceBuffer(out_bytes),
        }
        self.context.set_tensor_address(self.input, self._buffers["dev_in"].ptr)
        self.context.set_tensor_address(self.output, self._buffers["dev_out"].ptr)

    # -- measurement ---------------------------------------------------------------------
    def benchmark(
        self, batch: int = 1, *, warmup_s: float = 0.2, duration_s: float = 3.0, min_iterations: int = 10
    ) -> dict:
        """trtexec-style timing at `batch`: GPU compute time, end-to-end latency, throughput."""
        if not self.min_batch <= batch <= self.max_batch:
            raise DataError(
                f"Batch {batch} is outside the engine's profile [{self.min_batch}, {self.max_batch}].",
                "Benchmark a batch the engine was built for, or rebuild with --max-batch.",
            )
        rng = np.random.default_rng(0)
        self._infer(rng.standard_normal((batch, *self.sample_shape)).astype(self.in_dtype))
        buffers = self._prepare(batch)
        events = [self._cuda.new_event() for _ in range(4)]
        try:
            _loop(self, buffers, events, warmup_s, 1)  # warm-up: clocks up, lazy allocations done
            compute, latency, wall = _loop(self, buffers, events, duration_s, min_iterations)
        finally:
            self._cuda.destroy(events=events)
        return {
            "batch": batch,
            "iterations": len(compute),
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "gpu_compute_ms": summarize(compute),
            "latency_ms": summarize(latency),
            "throughput_per_s": len(compute) * batch / wall if wall > 0 else None,
            "engine_bytes": self.path.stat().st_size,
            "context_device_memory_bytes": self.device_memory_bytes(),
            "tensorrt": self._trt.__version__,
            "gpu": self.sidecar.get("gpu"),
            "precision": self.sidecar.get("precision"),
        }

    def device_memory_bytes(self) -> int:
        """Scratch memory an execution context of this engine takes on the device."""
        size = getattr(self.engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
        if size is None:
            size = self.engine.device_memory_size  # 8.5-10.x; removed in 11
        return int(size)

    def close(self) -> None:
        for key in ("host_in", "host_out", "dev_in", "dev_out"):
            if key in self._buffers:
                self._buffers[key].free()
        self._buffers = {}
        if self.stream is not None:
            self._cuda.destroy(stream=self.stream)
            self.stream = None

    def __enter__(self) -> "EngineRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _loop(runner: EngineRunner, buffers: dict, events: list, seconds: float, min_iterations: int):
    """Run back-to-back inferences for `seconds` (and >= min_iterations); per-iteration times in ms."""
    cuda = runner._cuda
    compute, latency = [], []
    start = time.perf_counter()
    while True:
        runner._enqueue(buffers, events)
        cuda.synchronize(events[3])
        compute.append(cuda.elapsed_ms(events[1], events[2]))
        latency.append(cuda.elapsed_ms(events[0], events[3]))
        wall = time.perf_counter() - start
        if wall >= seconds and len(compute) >= min_iterations:
            return compute, latency, wall


def load_val(npz_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's validation set: `x` float32 (N, C, H, W) preprocessed, `y` int64 (N,) labels."""
    path = Path(npz_path)
    if not path.is_file():
        raise DataError(
            f"Evaluation file {str(path)!r} does not exist.", "It ships in the bundle as data/test.npz."
        )
    with np.load(path, allow_pickle=False) as data:
        missing = {"x", "y"} - set(data.files)
        if missing:
            raise DataError(
                f"{path.name} lacks key(s) {sorted(missing)}; it has {sorted(data.files)}.",
                "A run's data/test.npz holds `x` (float32 NCHW) and `y` (int64 labels).",
            )
        x, y = data["x"], data["y"]
    if x.ndim != 4 or x.dtype != np.float32:
        raise DataError(
            f"{path.name}: `x` must be float32 (N, C, H, W), got {x.dtype} {list(x.shape)}.",
            "Re-create the bundle's data/test.npz.",
        )
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
        raise DataError(
            f"{path.name}: `y` must be {len(x)} integer labels, got {y.dtype} {list(y.shape)}.",
            "Re-create the bundle's data/test.npz.",
        )
    return x, y.astype(np.int64)


def evaluate(runner, npz_path: str | Path) -> dict:
    """Top-1 accuracy of `runner` (anything with .run(x) -> logits) on an (x, y) .npz such as data/test.npz."""
    x, y = load_val(npz_path)
    logits = np.asarray(runner.run(x))
    logits = logits.reshape(len(x), -1)
    return {"samples": int(len(y)), "accuracy": float((logits.argmax(axis=1) == y).mean())}


def load_runner(engine_path: str | Path) -> EngineRunner:
    """An object with `.run(x: np.ndarray) -> np.ndarray` for `edgekd bench` to drive."""
    return EngineRunner(engine_path)


def benchmark_engine(
    engine_path: str | Path,
    *,
    batch: int = 1,
    warmup_s: float = 0.2,
    duration_s: float = 3.0,
    val: str | Path | None = None,
) -> dict:
    """Load, benchmark and (with a data/test.npz) score one engine; a JSON-ready dict."""
    with load_runner(engine_path) as runner:
        result = runner.benchmark(batch, warmup_s=warmup_s, duration_s=duration_s)
        if val is not None:
            result["accuracy"] = evaluate(runner, val)
    result["engine"] = str(engine_path)
    return result


def _io_names(trt, engine) -> tuple[str, str]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if len(inputs) != 1 or not outputs:
        raise ModelError(
            f"edgekd runs single-input classifiers; this engine has inputs {inputs} and outputs {outputs}.",
            "Export the model with one image input.",
        )
    return inputs[0], outputs[0]


def _batch_range(engine, name: str) -> tuple[int, int, tuple]:
    """(min batch, max batch, per-sample shape) from profile 0, or the fixed batch."""
    shape = tuple(int(d) for d in engine.get_tensor_shape(name))
    if shape[0] >= 0:
        return shape[0], shape[0], shape[1:]
    low, _, high = engine.get_tensor_profile_shape(name, 0)
    return int(low[0]), int(high[0]), shape[1:]
