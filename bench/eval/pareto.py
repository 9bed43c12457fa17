"""Accuracy-vs-sparsity bookkeeping: the Pareto front and the sparsity reached under an error bound.

A point is (sparsity, error). It is on the front when no other point has at least its sparsity
and at most its error with one of the two strictly better. Along the front, sorted by sparsity,
the error strictly increases.
"""
import math
from typing import List, Optional, Sequence, Tuple

BOUNDS = (0.02, 0.05, 0.1)  # the relative L1 bounds the report's headline table uses


def _usable(point) -> bool:
    sparsity, error = point
    return sparsity is not None and error is not None and not math.isnan(sparsity) \
        and not math.isnan(error)


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the non-dominated points, by ascending sparsity (points with NaN or None
    are ignored)."""
    candidates = [i for i, p in enumerate(points) if _usable(p)]
    # Highest sparsity first, lowest error first among equal sparsities: a point joins the
    # front exactly when its error is below that of every point at least as sparse.
    candidates.sort(key=lambda i: (-points[i][0], points[i][1], i))
    front, best = [], math.inf
    for i in candidates:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front[::-1]


def sparsity_at_bound(points: Sequence[Tuple[float, float]],
                      bound: float) -> Tuple[Optional[float], Optional[int]]:
    """The largest sparsity among points whose error is <= bound, and that point's index
    (the lowest-error one on ties); (None, None) when no point is under the bound."""
    best = None
    for i, p in enumerate(points):
        if not _usable(p) or p[1] > bound:
            continue
        if best is None or (p[0], -p[1]) > (points[best][0], -points[best][1]):
            best = i
    return (None, None) if best is None else (points[best][0], best)
