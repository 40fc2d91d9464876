"""Workstation-side ONNX preparation for TensorRT targets (needs onnx, never torch).

`fp16` converts an fp32 export to float16 with float32 inputs/outputs (the
strongly typed fp16 path); `trt_rules` checks a QDQ model against TensorRT's
explicit-quantization rules before it is shipped to a device.
"""
