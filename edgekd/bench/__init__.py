"""Device side: measure latency, memory and accuracy of exported artifacts.

Torch-free: numpy plus a runtime. Only the "pytorch" runner imports torch,
lazily, inside the worker process that runs it.
"""
