"""Low-label draws for learning curves: one task keeps k labels per class, the other keeps all of its labels.

A draw is reproducible from its seed: the same (labels, k, seed) keep the same rows on every machine.
"""

from __future__ import annotations

import numpy as np


def few_labels(y: np.ndarray, k: int | str, seed: int) -> np.ndarray:
    """Boolean mask of the rows whose label (of one task, -1 = none) a draw keeps: `k` per class at random
    (all of a class that has fewer), or every labelled row for k = "all"."""
    y = np.asarray(y)
    labelled = y >= 0
    if k == "all":
        return labelled
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(y), dtype=bool)
    for c in np.unique(y[labelled]):
        rows = np.flatnonzero(y == c)
        keep[rng.choice(rows, size=min(int(k), len(rows)), replace=False)] = True
    return keep


def with_few(y: dict[str, np.ndarray], task: str, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Label ids with `task`'s labels hidden (-1) outside `keep`; the other tasks keep theirs."""
    return {t: np.where(keep, v, -1) if t == task else v for t, v in y.items()}
