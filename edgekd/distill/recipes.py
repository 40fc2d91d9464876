"""Named recipes: `teacher.recipe` and `distill.recipe` expand into ordinary config keys.

A recipe is data, a dict of keys for its section. `expand_recipe` lays the user's own keys
over it before validation (dicts merge key by key, lists and scalars replace), so every key
a recipe sets stays overridable and is validated, recorded and hashed like a key the user
wrote: the effective config (`edgekd validate --show`, the report, the stage keys) shows
what the recipe chose.

`standard` is the empty recipe: the section's own defaults.

Values for 32-px grey images (Fashion-MNIST; benchmarks/distill_fashion_mnist.py measures them):
- teacher `strong`: SGD with Nesterov momentum, label smoothing 0.1, reflect-padded random
  crop + flip + random erasing (Zhong et al. 2017), weight EMA, 30 epochs.
- distill `function_matching` (Beyer et al., CVPR 2022, "a good teacher is patient and
  consistent"): KL to the teacher only (kd with alpha 1, T 1), teacher and student on the
  same mixup/cutmix view of every batch, weight EMA, a long schedule.

No torch here: config.py imports this module.
"""

from __future__ import annotations

import copy

STANDARD = "standard"

TEACHER_RECIPES: dict[str, dict] = {
    STANDARD: {},
    "strong": {
        "train": {"epochs": 30, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                  "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1.0, "label_smoothing": 0.1,
                  "ema": True, "ema_decay": 0.999,
                  "augment": {"pad_crop": 4, "hflip": 0.5, "re_prob": 0.5, "re_mode": "const"}},
    },
}

DISTILL_RECIPES: dict[str, dict] = {
    STANDARD: {},
    "function_matching": {
        "losses": [{"kind": "kd", "alpha": 1.0, "temperature": 1.0}],
        "train": {"epochs": 100, "batch_size": 128, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05,
                  "schedule": "cosine", "warmup_epochs": 2.0, "ema": True, "ema_decay": 0.999,
                  "augment": {"pad_crop": 4, "hflip": 0.5, "mixup": 1.0, "cutmix": 1.0}},
    },
}

RECIPES = {"teacher": TEACHER_RECIPES, "distill": DISTILL_RECIPES}


def expand_recipe(section: str, data):
    """`data` (a section's raw mapping) laid over its recipe's keys; anything else unchanged
    (pydantic then names what is wrong with it). An unknown recipe name is left for the
    `recipe` field's own validation to refuse."""
    if not isinstance(data, dict):
        return data
    recipe = RECIPES[section].get(data.get("recipe", STANDARD))
    return data if not recipe else merge(recipe, data)


def merge(base: dict, over: dict) -> dict:
    """`over` laid on `base`: nested dicts merged key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
