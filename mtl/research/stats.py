"""Uncertainty of scores over test items: percentile bootstrap CIs, and paired bootstrap CIs of a difference
between two predictors scored on the same items.

Point estimates are `mtl.evaluate.metric`, the sklearn call every score uses. The thousands of resamples are
scored from confusion counts (`mtl.evaluate.from_confusion`, vectorised; a test checks it equals sklearn), which
is what lets every table carry an interval in seconds. Rows with label -1 (no label for the task) are dropped
before resampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mtl.evaluate import from_confusion
from mtl.evaluate import metric as score

N_BOOT = 1000
BLOCK = 100  # resamples counted at once (memory: BLOCK x items indices)


@dataclass(frozen=True)
class CI:
    """A point estimate with a 95 % (or `level`) percentile interval."""

    estimate: float
    lo: float
    hi: float
    n_items: int
    level: float = 0.95
    per_seed: list[float] = field(default_factory=list)  # paired differences: each seed's own point difference

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.lo:.3f}, {self.hi:.3f}]"

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "n_items": self.n_items, "level": self.level,
                **({"per_seed": self.per_seed} if self.per_seed else {})}


def _labelled(y: np.ndarray, preds: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    y = np.asarray(y)
    if any(np.shape(p) != y.shape for p in preds):
        raise ValueError("predictions and labels must have the same length")
    keep = y >= 0
    if not keep.any():
        raise ValueError("no labelled items to resample")
    return y[keep], [np.asarray(p)[keep] for p in preds]


def _n_labels(y: np.ndarray, preds: Sequence[np.ndarray], n_labels: int | None) -> int:
    return n_labels if n_labels is not None else int(max(y.max(), *(p.max() for p in preds))) + 1


def _interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return float(lo), float(hi)


def _resampled(metric: str, codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """`metric` on each row of item indices `idx` (resamples x items), from confusion codes (true * k + predicted)."""
    n = len(idx)
    flat = (codes[idx] + np.arange(n)[:, None] * k * k).ravel()
    cm = np.bincount(flat, minlength=n * k * k).reshape(n, k, k)
    return from_confusion(metric, cm)


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, metric: str, n: int = N_BOOT, seed: int = 0, n_labels: int | None = None,
                 level: float = 0.95) -> CI:
    """Percentile bootstrap CI of `metric` ("accuracy", "macro_recall", "macro_f1") over test items.

    Items are resampled with replacement `n` times; `n_labels` is the task's label count (macro
    metrics average over every label, as `task_metrics` does; default: the largest id seen + 1).
    """
    y, (pred,) = _labelled(y, [pred])
    k = _n_labels(y, [pred], n_labels)
    rng = np.random.default_rng(seed)
    codes = y * k + pred
    draws = np.concatenate([_resampled(metric, codes, rng.integers(0, len(y), (min(BLOCK, n - b), len(y))), k) for b in range(0, n, BLOCK)])
    return CI(score(metric, y, pred, k), *_interval(draws, level), n_items=len(y), level=level)


def paired_bootstrap(y: np.ndarray, preds_a: Sequence[np.ndarray], preds_b: Sequence[np.ndarray], metric: str, n: int = N_BOOT, seed: int = 0,
                     n_labels: int | None = None, level: float = 0.95, resample_seeds: bool = False) -> CI:
    """CI of metric(A) - metric(B) on the same items, A and B each given once per training seed.

    Seeds are **pooled**: the estimate is the mean over seeds of each seed's difference, and every
    bootstrap draw resamples the items once and applies that one resample to every seed of both
    predictors (so item difficulty cancels in the difference). The interval therefore covers item
    sampling with the seed noise averaged out; `per_seed` holds each seed's own difference, whose
    spread shows the seed noise. A and B pair seed i with seed i, so they need equal counts.

    `resample_seeds`: each draw also resamples the seeds (a two-level bootstrap), so the interval covers
    the seed-to-seed spread too: for training sets that are themselves random draws (learning curves).
    """
    if len(preds_a) != len(preds_b) or not preds_a:
        raise ValueError("paired_bootstrap needs the same number (>= 1) of predictions for A and B, one per seed")
    y, preds = _labelled(y, [*preds_a, *preds_b])
    a, b = preds[: len(preds_a)], preds[len(preds_a):]
    k = _n_labels(y, preds, n_labels)
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, n, BLOCK):
        idx = rng.integers(0, len(y), (min(BLOCK, n - start), len(y)))
        per = np.stack([_resampled(metric, y * k + pa, idx, k) - _resampled(metric, y * k + pb, idx, k) for pa, pb in zip(a, b)], 1)
        if resample_seeds:
            pick = rng.integers(0, len(a), (len(idx), len(a)))
            per = np.take_along_axis(per, pick, 1)
        draws.append(per.mean(1))
    per_seed = [score(metric, y, pa, k) - score(metric, y, pb, k) for pa, pb in zip(a, b)]
    return CI(float(np.mean(per_seed)), *_interval(np.concatenate(draws), level), n_items=len(y), level=level, per_seed=per_seed)


def paired_table(targets: dict, preds: dict[str, dict[str, list[np.ndarray]]], pairs: Sequence[tuple[str, str]], n: int = N_BOOT,
                 resample_seeds: bool = False, **extra):
    """`paired_bootstrap` of A - B for every pair and target set: one row each (A, B, set, metric, n, seeds,
    A_minus_B, ci_lo, ci_hi, per_seed), plus the `extra` columns given. `targets`: name -> an object with `y`,
    `metric` and `n_labels` (e.g. `research.external.Scored`); `preds[method][name]`: label ids, one array per seed."""
    import pandas as pd

    rows = []
    for name, t in targets.items():
        for a, b in pairs:
            d = paired_bootstrap(t.y, preds[a][name], preds[b][name], t.metric, n=n, n_labels=t.n_labels, resample_seeds=resample_seeds)
            rows.append({**extra, "A": a, "B": b, "set": name, "metric": t.metric, "n": d.n_items, "seeds": len(preds[a][name]),
                         "A_minus_B": d.estimate, "ci_lo": d.lo, "ci_hi": d.hi, "per_seed": [round(v, 4) for v in d.per_seed]})
    return pd.DataFrame(rows)


def verdict(diffs, what: str = "A") -> str:
    """One sentence from a `paired_table`: where A - B's interval lies above zero, below zero, or contains it."""
    def where(rows) -> str:
        return "; ".join(f"{r.set} ({r.A} − {r.B} {r.A_minus_B:+.3f} [{r.ci_lo:+.3f}, {r.ci_hi:+.3f}])" for r in rows.itertuples()) or "nowhere"

    better, worse = diffs[diffs["ci_lo"] > 0], diffs[diffs["ci_hi"] < 0]
    level = diffs[(diffs["ci_lo"] <= 0) & (diffs["ci_hi"] >= 0)]
    width = float((level["ci_hi"] - level["ci_lo"]).max()) if len(level) else 0.0
    return (f"{what} helps (95 % CI above 0): {where(better)}. It hurts (CI below 0): {where(worse)}. "
            f"Elsewhere ({len(level)} of {len(diffs)} comparisons) the interval contains 0 (widest {width:.3f}).")
