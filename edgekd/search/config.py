"""`student.search`: the grid of candidate students and how they are judged (torch-free).

A candidate architecture is a derived student (one (width, depth) pair of
`widths` x `depths`) or a named timm model (`models`), at one of `input_sizes`.
Each architecture is measured in each precision on each target; a measured
variant fits when its p50 <= margin x the target's latency budget (and its peak
memory <= margin x the memory budget, when the target has one).

Rules that need only this section are checked by `SearchConfig` itself; rules
that need the targets or the data (`check_search`) run where the whole config is
loaded, before anything else happens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, StringConstraints, field_validator, model_validator

from edgekd.errors import ConfigError
from edgekd.schema import Strict
from edgekd.targets import HOST_PATTERN, Precision

if TYPE_CHECKING:  # pragma: no cover
    from edgekd.targets import TargetProfile

# TensorRT: engines built and timed on the device (`edgekd profile` over ssh, or offline), never here
SEARCHABLE_RUNTIMES = ("onnxruntime", "tensorrt")


class SearchConfig(Strict):
    widths: list[float] = Field(default_factory=list, description="derived students: channel multipliers, each in (0, 1]")
    depths: list[float] = Field(default_factory=list, description="derived students: blocks-per-stage multipliers, (0, 1]")
    models: list[str] = Field(default_factory=list, description="named timm students, e.g. mobilenetv3_small_050")
    input_sizes: list[int] | None = Field(None, min_length=1, description="square sides to try; default: data.input_size")
    precisions: list[Precision] | None = Field(
        None, min_length=1, description="measured per candidate; each must be one the targets list; default: theirs")
    # defaults measured on digits (benchmarks/results/proxy_defaults.md): 2 epochs x 0.2 (~7 optimizer steps) left
    # every proxy at chance; 4 epochs on all rows (~68 steps) ranked above 0.95. Large data: lower the fraction.
    proxy_epochs: int = Field(4, ge=0, description="short distillation that ranks the candidates that fit; 0: rank by FLOPs")
    proxy_fraction: float = Field(1.0, gt=0, le=1, description="share of the training split the proxy runs train on")
    max_candidates: int = Field(24, ge=1, description="most architectures x input sizes the grid may hold")
    margin: float = Field(0.9, gt=0, le=1, description="fits when p50 <= margin x budgets.latency_ms (memory likewise)")
    per_target: bool = Field(True, description="one student per target; false: the best single student fitting all")
    latency_table: Path | dict[str, Path] | None = Field(
        None, description="`edgekd profile` output for an offline device; {target: path} with several targets")
    hosts: dict[str, Annotated[str, StringConstraints(pattern=HOST_PATTERN)]] = Field(
        default_factory=dict, description="{target: user@name}: measure that target's candidates over ssh (overrides "
        "the profile's host)")

    @field_validator("widths", "depths")
    @classmethod
    def _multipliers(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0 < v <= 1]
        if bad:
            raise ValueError(f"multipliers must be in (0, 1], got {bad}")
        return _unique(values)

    @field_validator("models", "precisions")
    @classmethod
    def _no_repeats(cls, values: list | None) -> list | None:
        return None if values is None else _unique(values)

    @field_validator("input_sizes")
    @classmethod
    def _sizes(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and any(v < 8 for v in values):
            raise ValueError(f"input sizes must be at least 8 pixels, got {values}")
        return None if values is None else _unique(values)

    @model_validator(mode="after")
    def _grid_is_sound(self) -> "SearchConfig":
        if bool(self.widths) != bool(self.depths):
            given, missing = ("widths", "depths") if self.widths else ("depths", "widths")
            raise ValueError(f"derived students are every pair of widths x depths: {given} is given but {missing} "
                             f"is not (use [1.0] to keep the teacher's {'blocks' if missing == 'depths' else 'channels'})")
        if not self.widths and not self.models:
            raise ValueError("the grid is empty: give widths and depths (derived students) and/or models (timm names)")
        size = self.grid_size()
        if size > self.max_candidates:
            raise ValueError(f"the grid holds {size} candidates ({self.describe_grid()}), more than max_candidates "
                             f"{self.max_candidates}: drop some widths, depths, models or input sizes, or raise "
                             "max_candidates (each candidate is exported, measured and proxy-distilled)")
        return self

    def architectures(self) -> int:
        return len(self.widths) * len(self.depths) + len(self.models)

    def grid_size(self) -> int:
        """Architectures x input sizes (precisions and targets multiply the measurements, not the grid)."""
        return self.architectures() * len(self.input_sizes or [None])

    def describe_grid(self) -> str:
        parts = []
        if self.widths:
            parts.append(f"{len(self.widths)} widths x {len(self.depths)} depths")
        if self.models:
            parts.append(f"{len(self.models)} models")
        text = " + ".join(parts)
        sizes = len(self.input_sizes or [None])
        return f"{text}, x {sizes} input sizes" if sizes > 1 else text

    def table_for(self, target: str) -> Path | None:
        """The latency table given for `target` (a single path belongs to the only target)."""
        if isinstance(self.latency_table, dict):
            return self.latency_table.get(target)
        return self.latency_table


def _unique(values: list) -> list:
    seen = []
    for v in values:
        if v in seen:
            raise ValueError(f"{v!r} is listed twice")
        seen.append(v)
    return seen


# ---------------------------------------------------------------- rules across sections
def check_search(search: SearchConfig, targets: list["TargetProfile"]) -> None:
    """Rules that need the targets: runtimes, precisions, latency tables. Raises ConfigError."""
    for t in targets:
        if t.runtime not in SEARCHABLE_RUNTIMES:
            raise ConfigError(
                f"student.search cannot measure target {t.name!r}: it runs {t.runtime}; the search measures "
                f"{' and '.join(SEARCHABLE_RUNTIMES)} targets.",
                "Search against another target, or set student.width/depth (or model) for this one by hand.",
            )
        if t.runtime == "tensorrt":
            _check_tensorrt(search, t)
    for p in search.precisions or []:
        if not any(p in t.precisions for t in targets):
            offered = "; ".join(f"{t.name}: {', '.join(t.precisions)}" for t in targets)
            raise ConfigError(
                f"student.search.precisions lists {p!r}, which no target offers ({offered}).",
                "List only precisions the targets run, or leave precisions out to use theirs.",
            )
    for t in targets:
        if not precisions_for(search, t):
            raise ConfigError(f"Target {t.name!r} runs none of student.search.precisions {search.precisions}.",
                              f"Add one of {t.precisions}, or leave precisions out.")
    _check_tables(search, [t.name for t in targets])
    unknown = sorted(set(search.hosts) - {t.name for t in targets})
    if unknown:
        raise ConfigError(f"student.search.hosts names {', '.join(map(repr, unknown))}, not among the targets "
                          f"({', '.join(t.name for t in targets)}).", "Use the targets' names as keys.")


def _check_tensorrt(search: SearchConfig, target: "TargetProfile") -> None:
    """A TensorRT candidate is the FP32 file (FP16 and FP32 engines) or the TensorRT-form QDQ file (INT8):
    a strongly typed network's FP16 engine needs an FP16 ONNX, which candidates are not exported as."""
    from edgekd.trt.compat import VARIANT_FP16, plan_for_target

    for precision in precisions_for(search, target):
        if plan_for_target(target, precision).onnx_variant == VARIANT_FP16:
            raise ConfigError(
                f"student.search cannot measure target {target.name!r} in fp16: TensorRT "
                f"{target.tensorrt.version} builds it from an FP16-typed ONNX, which candidates are not made as.",
                f"Leave fp16 out of student.search.precisions for {target.name!r} (int8 is measured).")


def _check_tables(search: SearchConfig, names: list[str]) -> None:
    table = search.latency_table
    if table is None:
        return
    if not isinstance(table, dict) and len(names) > 1:
        raise ConfigError(
            f"student.search.latency_table is one file, but there are {len(names)} targets ({', '.join(names)}).",
            "Give a table per target that needs one: latency_table: {rpi5: rpi5-table.json}.",
        )
    tables = table if isinstance(table, dict) else {names[0]: table}
    for name, path in tables.items():
        if name not in names:
            raise ConfigError(f"student.search.latency_table names target {name!r}, which is not in targets "
                              f"({', '.join(names)}).", "Use the target's name as the key.")
        if not Path(path).is_file():
            raise ConfigError(f"student.search.latency_table for {name!r} points to {str(path)!r}, which does not exist.",
                              "Run `edgekd profile BUNDLE -o table.json` on the device and copy the table here.")


def precisions_for(search: SearchConfig, target: "TargetProfile") -> list[str]:
    """The precisions `target` is measured in, in the target's order."""
    wanted = search.precisions or target.precisions
    return [p for p in target.precisions if p in wanted]
