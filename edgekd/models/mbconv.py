"""timm's MobileNetV3 / EfficientNet families at any width and depth, as a timm entrypoint.

timm builds these networks with a generator (`_gen_mobilenet_v3`,
`_gen_efficientnet`, ...) that each named entrypoint calls with its own
multipliers, positionally or by keyword: `create_model("efficientnet_b0",
channel_multiplier=0.5)` is a TypeError ("multiple values"), and no other
kwarg reaches the block definitions. So edgekd registers one more timm
entrypoint, `edgekd_mbconv`, that calls the *same* generator with multipliers
of its choosing. The network is timm's own class (MobileNetV3 / EfficientNet):
feature_info, state-dict keys and ONNX export are those of the named model.

    timm.create_model("edgekd_mbconv", variant="mobilenetv3_large_100",
                      gen_args={"channel_multiplier": 0.25, "depth_multiplier": 0.5}, num_classes=10)

Everything in the kwargs is plain JSON, so an edgekd checkpoint rebuilds from
(arch, kwargs) alone. Importing this module registers the entrypoint;
`edgekd.models.io.build` does so before every build.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from functools import lru_cache
from typing import Any, Callable

from timm.models import model_entrypoint, register_model

from edgekd.errors import ModelError

ARCH = "edgekd_mbconv"


@lru_cache(maxsize=None)
def generator_call(variant: str) -> tuple[Callable, dict[str, Any], dict[str, Any]]:
    """Read a timm entrypoint's source: (generator, the constant arguments it
    passes, the kwargs it `setdefault`s, e.g. tf_ variants' bn_eps/pad_type).

    timm's mobilenetv3/efficientnet entrypoints are each one generator call
    with literal arguments, so the AST says exactly what they build.
    """
    entry = model_entrypoint(variant)
    module = sys.modules[entry.__module__]
    tree = ast.parse(textwrap.dedent(inspect.getsource(entry)))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    gen_calls = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id.startswith("_gen_")]
    if len(gen_calls) != 1:
        raise ModelError(f"Cannot read how timm builds {variant!r} (no single _gen_* call).",
                         "Set `student.model:` to a timm model name instead of deriving one.")
    call = gen_calls[0]
    generator = getattr(module, call.func.id)
    args = [_value(a, module) for a in call.args]
    kw = {k.arg: _value(k.value, module) for k in call.keywords if k.arg not in (None, "pretrained")}
    bound = inspect.signature(generator).bind_partial(*args, **kw).arguments
    bound.pop("variant", None)
    defaults = {_value(c.args[0], module): _value(c.args[1], module) for c in calls
                if isinstance(c.func, ast.Attribute) and c.func.attr == "setdefault" and len(c.args) == 2}
    return generator, dict(bound), defaults


def _value(node: ast.AST, module) -> Any:
    if isinstance(node, ast.Name):  # a module constant such as BN_EPS_TF_DEFAULT
        return getattr(module, node.id)
    return ast.literal_eval(node)


def scalable_args(variant: str) -> tuple[str | None, str | None]:
    """Names of the generator's width and depth multipliers (None where it has none)."""
    params = inspect.signature(generator_call(variant)[0]).parameters
    width = next((k for k in ("channel_multiplier", "model_width") if k in params), None)
    return width, "depth_multiplier" if "depth_multiplier" in params else None


def multiplier(variant: str, gen_args: dict, name: str) -> float:
    """A multiplier's value: as passed, else the generator's default."""
    if name in gen_args:
        return float(gen_args[name])
    return float(inspect.signature(generator_call(variant)[0]).parameters[name].default)


@register_model
def edgekd_mbconv(pretrained: bool = False, variant: str = "mobilenetv3_large_100", gen_args: dict | None = None,
                  **kwargs):
    """`variant`'s timm generator called with `gen_args` (multipliers and the like)."""
    if pretrained:
        raise ModelError(f"{ARCH} has no pretrained weights.", "Initialise it from a teacher or train it.")
    generator, _, _ = generator_call(variant)
    return generator(variant, **(gen_args or {}), pretrained=False, **kwargs)
