"""`data.synthetic`: the transfer-image set of a compress run, as config data (torch-free).

    data:
      synthetic: {method: dafl, count: 8192, seed: 0, rounds: 1000, bn: 1}

`method`, `count` and `seed` are this section's own keys; every other key is a setting of the
method (edgekd.synth.settings: Strict, published defaults, an unknown key is an error naming
the method's keys). The parsed settings are kept under `settings` (what config.json holds, and
what a re-read config.json accepts).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from edgekd.schema import Strict

OWN_KEYS = ("method", "count", "seed", "holdout", "settings")


class SyntheticConfig(Strict):
    method: str = Field(description="deepinversion, deepinversion_imagenet, zskt or dafl (docs/data_free.md)")
    count: int = Field(2048, ge=1, description="transfer images generated (the report states it)")
    seed: int = Field(0, description="decides every generated image (with the teacher and the settings)")
    holdout: int = Field(256, ge=1, description="data.kind: synthetic only: this many of the `count` images "
                         "(seeded, stratified by the teacher's label) are held out of training: every choice (best "
                         "epoch, INT8 gate) and the parity and device checks use them, never a real accuracy")
    settings: dict = Field(default_factory=dict, description="the method's settings; written flat in the "
                           "section (e.g. iterations: 200), defaults from the published recipes")

    @model_validator(mode="before")
    @classmethod
    def _gather_settings(cls, data):
        """Flat method keys -> `settings` (the section is written flat; config.json holds it nested)."""
        if not isinstance(data, dict):
            return data
        flat = {k: v for k, v in data.items() if k not in OWN_KEYS}
        own = {k: v for k, v in data.items() if k in OWN_KEYS}
        return {**own, "settings": {**dict(own.get("settings") or {}), **flat}}

    @model_validator(mode="after")
    def _settings_fit_the_method(self) -> "SyntheticConfig":
        from edgekd.errors import ConfigError

        try:
            self.parsed()
        except ConfigError as exc:  # pydantic wants a ValueError; the message names the bad keys
            raise ValueError(" ".join(filter(None, (exc.message, exc.hint)))) from None
        return self

    def parsed(self):
        """The method's Strict settings, defaults filled in (edgekd.synth.settings)."""
        from edgekd.synth.settings import parse_settings

        return parse_settings({**self.settings, "method": self.method}, source="data.synthetic")

    @property
    def uses_student(self) -> bool:
        """Whether the images depend on the student (zskt's disagreement, DeepInversion's competition)."""
        p = self.parsed()
        return bool(getattr(p, "needs_student", False) or getattr(p, "competition", 0) > 0)
