"""TensorRT target for Jetson: build, load, run and benchmark engines on the device.

Device side, torch-free: tensorrt and cuda-python are imported inside the
functions that need them. `compat` holds the per-version rules (pure),
`build` turns an ONNX artifact into an engine plus sidecar, `engine` loads,
runs and benchmarks it, and `cli` exposes `edgekd build` / `edgekd bench-engine`.
"""
