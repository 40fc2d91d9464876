"""Transfer images made from the teacher alone: data-free distillation.

When the teacher's training data cannot be had, the student learns from images synthesised
from the teacher itself:

    deepinversion, deepinversion_imagenet   optimise inputs to match the teacher's BatchNorm
                                            statistics and a class prior (Yin et al. 2020);
                                            BN-free teachers are refused
    zskt, dafl                              train a small generator against the teacher (and a
                                            proxy student): Micaelli & Storkey 2019, Chen et al. 2019

Public API (docs/data_free.md says how the pipeline uses it):

    parse_settings({"method": ..., ...})   -> the method's settings, published defaults filled in
    generate_transfer_set(teacher, settings, count=, shape=, mean=, std=, cache_dir=, seed=, student=, ui=)
                                           -> TransferSet: a cached, resumable uint8 store on disk
                                              (edgekd.data.u8store, "edgekd.u8store/1")
    TransferSet.open()                     -> U8Store: .read(i) one (C, H, W) uint8 image, .labels
    views.eval_view / paired_views         each model's own view of one decoded sample
"""

# Lazy (PEP 562): edgekd.config validates `data.synthetic` through edgekd.synth.config / settings, which
# must not pull in torch (the device side imports the config).
_EXPORTS = {"METHODS": "generate", "TransferSet": "generate", "cache_key": "generate",
            "generate_transfer_set": "generate", "AdversarialSettings": "settings", "DAFLSettings": "settings",
            "DeepInversionImageNetSettings": "settings", "DeepInversionSettings": "settings",
            "SynthSettings": "settings", "parse_settings": "settings"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgekd.synth' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"edgekd.synth.{_EXPORTS[name]}"), name)
