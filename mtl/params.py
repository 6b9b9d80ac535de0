"""The one validator for settings, whoever passes them: CLI flags, notebook parameters, `TrainConfig`.

Each rule says what a value must be, in the words the error message uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from mtl.encoders import BACKENDS, DEVICES
from mtl.errors import MTLError


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _choices(*names: str) -> tuple[Callable[[object], bool], str]:
    return (lambda v: v in names), f"one of {', '.join(names)}"


POSITIVE_INT = (lambda v: _int(v) and v > 0), "a positive integer"
NONNEG_INT = (lambda v: _int(v) and v >= 0), "an integer >= 0"
POSITIVE_NUMBER = (lambda v: _num(v) and v > 0), "a positive number"

RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "cv_epochs": POSITIVE_INT,
    "lr": POSITIVE_NUMBER,
    "seed": NONNEG_INT,
    "hidden": NONNEG_INT,
    "folds": ((lambda v: _int(v) and v >= 2), "an integer >= 2"),
    "dropout": ((lambda v: _num(v) and 0 <= v < 1), "a number in [0, 1)"),
    "weight_decay": ((lambda v: _num(v) and v >= 0), "a number >= 0"),
    "weighting": _choices("static", "uncertainty"),
    "device": _choices(*DEVICES),
    "backend": _choices(*BACKENDS),
    "balance": ((lambda v: isinstance(v, bool)), "true or false"),
    "chunk_size": POSITIVE_INT,
    "workers": POSITIVE_INT,
    "max_entries": NONNEG_INT,
    "max_mb": POSITIVE_NUMBER,
    "older_than": NONNEG_INT,
    "share": _choices("none", "trunk"),
    "prior": _choices("none", "descriptions"),
    "trunk_hidden": POSITIVE_INT,
}


def problem(name: str, value) -> str | None:
    """None if `value` is fine for setting `name` (or there is no rule for it), else what was expected."""
    rule = RULES.get(name)
    if rule is None or rule[0](value):
        return None
    return f"expected {rule[1]}, got {value!r}"


def check(prefix: str = "", **values) -> None:
    """Raise one MTLError naming the first bad setting, e.g. `parameter epochs: expected a positive integer, got 'ten'`."""
    for name, value in values.items():
        if (why := problem(name, value)) is not None:
            raise MTLError(f"{prefix}{name}: {why}")


def flag(name: str, cast: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse `type=` for setting `name`: cast the text, then apply the same rule."""
    import argparse

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {RULES[name][1]}, got {text!r}") from None
        if (why := problem(name, value)) is not None:
            raise argparse.ArgumentTypeError(why.replace(repr(value), repr(text)))
        return value

    return parse
