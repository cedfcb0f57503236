"""Plain statistics every room shares: percentiles of measured figures.

One definition (linear interpolation, numpy's default), so a replay summary, the evidence of a
route and the projection report the same p95 for the same latencies.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def percentile(values: Iterable[float | None], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation) of the values that are present; None
    when there are none."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return float(np.percentile(arr, q)) if arr.size else None
