"""Argument checks shared by every entry point (one wording for each kind of bad value)."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union


def is_int(value) -> bool:
    """``True`` for an integer (Python's or numpy's) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(value, name: str, *, minimum: int = 1, allow_none: bool = False) -> Optional[int]:
    """Return ``value`` as a Python int if it is an integer ``>= minimum`` (or ``None`` when ``allow_none``).

    Raises:
        ValueError: naming ``name``, the expectation and the value that came.
    """
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {expected}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def per_item_ints(value: Union[int, Sequence[int]], count: int, name: str, item: str) -> list[int]:
    """``value`` as ``count`` positive ints: an int repeated, or a sequence of ``count`` ints (one per ``item``)."""
    values = [value] * count if is_int(value) else list(value) if isinstance(value, (list, tuple)) else None
    if values is None or len(values) != count or not all(is_int(v) and v >= 1 for v in values):
        raise ValueError(f"{name} must be a positive int or one int per {item} ({count} values), got {value!r}")
    return values


def positive_float(value, name: str) -> float:
    """``value`` as a float if it is a positive finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)
