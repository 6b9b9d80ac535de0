"""Independent trainings side by side: CV folds, seeds and low-label draws run in worker processes, one per core.

Heads train on one thread each (`mtl.train` sets it: their matmuls are too small to share), so on a 2-core
machine two trainings at once take about as long as one. Every training is seeded, so results do not depend on
how many workers ran them. `$MTL_JOBS` caps the workers (1: everything in this process, e.g. to profile).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence


def default_jobs() -> int:
    return max(1, int(os.environ.get("MTL_JOBS") or os.cpu_count() or 1))


def parallel(fn: Callable, items: Sequence, jobs: int | None = None) -> list:
    """`[fn(item) for item in items]`, in `jobs` worker processes (joblib/loky) when there are several items."""
    jobs = min(jobs or default_jobs(), len(items))
    if jobs <= 1:
        return [fn(item) for item in items]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=jobs)(delayed(fn)(item) for item in items)
