"""The two tests every argument check starts with, defined once (the lowest layer: anything may
import this).

Python's ``bool`` is an ``int`` (``True == 1``), so ``isinstance(x, int)`` would take
``vcpus=True`` for one vCPU; and a float NaN slips through every comparison, while infinity only
fails later, deep inside a sleep or an allocation.
"""

from __future__ import annotations

import math


def is_whole_number(value) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """An int or float that is neither a bool, NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
