"""One check for every number a user gives, by option or by argument: finite, of the right kind, in range.

``nan`` and ``inf`` parse as floats and compare False with everything, so plain ``x < low`` range
checks let them through; this is where they are stopped. The CLI's option types
(``gpt2reg.cli.options``) and the API's config validation call the same function.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import Gpt2regError, InputError


def describe_range(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                   high_open: bool = False, integer: bool = False) -> str:
    """``an integer >= 1``, ``a number in [0, 1)``, ``a finite number > 0``..."""
    kind = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{kind} {'<' if high_open else '<='} {high:g}"
    return kind


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 error: type[Gpt2regError] = InputError) -> Any:
    """``value`` if it is a finite number (an int if ``integer``) within the bounds; else ``error`` saying so."""
    expected = describe_range(low, high, low_open=low_open, high_open=high_open, integer=integer)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and integer:
        ok = isinstance(value, numbers.Integral)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise error(f"{name}={value!r}: must be {expected}")
    return value
