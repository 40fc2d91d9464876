"""edgekd: distil a timm teacher into an edge-sized student and ship it.

This module must stay importable without torch: the device side (bench,
verify, build) runs on boards that have only numpy and a runtime.
"""

__version__ = "0.1.0"
