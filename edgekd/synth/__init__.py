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

from edgekd.synth.generate import METHODS, TransferSet, cache_key, generate_transfer_set
from edgekd.synth.settings import (AdversarialSettings, DAFLSettings, DeepInversionImageNetSettings,
                                   DeepInversionSettings, SynthSettings, parse_settings)

__all__ = ["METHODS", "TransferSet", "cache_key", "generate_transfer_set", "AdversarialSettings", "DAFLSettings",
           "DeepInversionImageNetSettings", "DeepInversionSettings", "SynthSettings", "parse_settings"]
