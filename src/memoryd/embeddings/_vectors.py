"""Vector helpers shared by the providers."""

from __future__ import annotations

import math
from collections.abc import Sequence


def unit_normalize(values: Sequence[float]) -> list[float]:
    """`values` scaled to Euclidean norm 1, as Python floats.

    Raises `ValueError` when a value is not finite or the norm is zero, since
    such a vector has no direction to compare by cosine.
    """
    floats = [float(v) for v in values]
    if not all(math.isfinite(v) for v in floats):
        raise ValueError("the vector has a value that is not a finite number")
    norm = math.sqrt(math.fsum(v * v for v in floats))
    if norm == 0.0:
        raise ValueError("the vector is all zeros")
    return [v / norm for v in floats]
