"""Uncertainty of scores over test items: percentile bootstrap CIs, and paired bootstrap CIs of a difference
between two predictors scored on the same items, with a p-value per difference and Holm's correction across a
table of them.

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
    p: float | None = None  # paired differences: two-sided p-value of "no difference" (`p_value`)

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.lo:.3f}, {self.hi:.3f}]"

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "n_items": self.n_items, "level": self.level,
                **({"per_seed": self.per_seed} if self.per_seed else {}), **({"p": self.p} if self.p is not None else {})}


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


def p_value(estimate: float, draws: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from the bootstrap distribution of a difference: the normal
    approximation 2·Φ(−|estimate| / sd(draws)). Unlike counting draws beyond 0 it resolves small p-values (a
    Holm correction over a hundred comparisons needs p < 0.0005) from a few thousand draws; 1 when the two
    predictors never differ."""
    from scipy.stats import norm

    sd = float(np.std(draws, ddof=1)) if len(draws) > 1 else 0.0
    if sd == 0.0:
        return 1.0 if estimate == 0 else 0.0
    return float(2 * norm.sf(abs(estimate) / sd))


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error across all the given comparisons): the i-th smallest
    p times (m − i + 1), made monotone, capped at 1. A comparison is significant at 5 % when its adjusted p < 0.05."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p)))))
    out = np.empty_like(p)
    out[order] = scaled
    return out


def _resampled(metric: str, codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """`metric` on each row of item indices `idx` (resamples x items), from confusion codes (true * k + predicted)."""
    n = len(idx)
    flat = (codes[idx] + np.arange(n)[:, None] * k * k).ravel()
    cm = np.bincount(flat, minlength=n * k * k).reshape(n, k, k)
    return from_confusion(metric, cm)


def _draws(rng, n_items: int, n: int, per_seed, resample_seeds: bool) -> np.ndarray:
    """`n` bootstrap draws of a mean over seeds: each draw resamples the items once, for every seed alike
    (`per_seed(idx)`: resamples x seeds scores of item-index rows `idx`), and with `resample_seeds` the seeds too."""
    out = []
    for start in range(0, n, BLOCK):
        per = per_seed(rng.integers(0, n_items, (min(BLOCK, n - start), n_items)))
        if resample_seeds:
            per = np.take_along_axis(per, rng.integers(0, per.shape[1], per.shape), 1)
        out.append(per.mean(1))
    return np.concatenate(out)


def bootstrap_ci(y: np.ndarray, pred, metric: str, n: int = N_BOOT, seed: int = 0, n_labels: int | None = None,
                 level: float = 0.95) -> CI:
    """Percentile bootstrap CI of `metric` ("accuracy", "macro_recall", "macro_f1") over test items.

    Items are resampled with replacement `n` times; `n_labels` is the task's label count (macro
    metrics average over every label, as `task_metrics` does; default: the largest id seen + 1).
    `pred` may be a list of predictions, one per training seed (or draw): the estimate is then the mean
    over seeds, and each resample draws the items once for all seeds and the seeds too (two levels), so the
    interval covers seed-to-seed spread as well as item sampling.
    """
    preds = list(pred) if isinstance(pred, (list, tuple)) else [pred]
    y, preds = _labelled(y, preds)
    k = _n_labels(y, preds, n_labels)
    def scores(idx):
        return np.stack([_resampled(metric, y * k + p, idx, k) for p in preds], 1)

    draws = _draws(np.random.default_rng(seed), len(y), n, scores, resample_seeds=len(preds) > 1)
    estimate = float(np.mean([score(metric, y, p, k) for p in preds]))
    return CI(estimate, *_interval(draws, level), n_items=len(y), level=level)


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

    def differences(idx):
        return np.stack([_resampled(metric, y * k + pa, idx, k) - _resampled(metric, y * k + pb, idx, k) for pa, pb in zip(a, b)], 1)

    draws = _draws(np.random.default_rng(seed), len(y), n, differences, resample_seeds)
    per_seed = [score(metric, y, pa, k) - score(metric, y, pb, k) for pa, pb in zip(a, b)]
    estimate = float(np.mean(per_seed))
    return CI(estimate, *_interval(draws, level), n_items=len(y), level=level, per_seed=per_seed, p=p_value(estimate, draws))


def paired_table(targets: dict, preds: dict[str, dict[str, list[np.ndarray]]], pairs: Sequence[tuple[str, str]], n: int = N_BOOT,
                 resample_seeds: bool = False, **extra):
    """`paired_bootstrap` of A - B for every pair and target set: one row each (A, B, set, metric, n, seeds,
    A_minus_B, ci_lo, ci_hi, p, p_adj, per_seed), plus the `extra` columns given. `p_adj`: Holm across the rows of
    this table. `targets`: name -> an object with `y`, `metric` and `n_labels` (e.g. `research.external.Scored`);
    `preds[method][name]`: label ids, one array per seed."""
    import pandas as pd

    rows = []
    for name, t in targets.items():
        for a, b in pairs:
            d = paired_bootstrap(t.y, preds[a][name], preds[b][name], t.metric, n=n, n_labels=t.n_labels, resample_seeds=resample_seeds)
            rows.append({**extra, "A": a, "B": b, "set": name, "metric": t.metric, "n": d.n_items, "seeds": len(preds[a][name]),
                         "A_minus_B": d.estimate, "ci_lo": d.lo, "ci_hi": d.hi, "p": d.p, "per_seed": [round(v, 4) for v in d.per_seed]})
    table = pd.DataFrame(rows)
    if len(table):
        table.insert(table.columns.get_loc("p") + 1, "p_adj", holm(table["p"]))
    return table


ALPHA = 0.05  # family-wise error rate of every "helps" / "hurts" claim (Holm-adjusted p below it)


def verdict(diffs, what: str = "A", diff: str = "A_minus_B", lo: str = "ci_lo", hi: str = "ci_hi", label=None, family: int | None = None) -> str:
    """One sentence from a table of differences with Holm-adjusted p-values (`p_adj`, e.g. `paired_table`): where
    A − B is above zero, below zero, or not distinguishable from it after the correction (family-wise 5 %).
    `family`: how many comparisons the correction ran over (default: the rows given)."""
    label = label or (lambda r: f"{r.set} ({r.A} − {r.B}")

    def where(rows) -> str:
        return "; ".join(f"{label(r)} {getattr(r, diff):+.3f} [{getattr(r, lo):+.3f}, {getattr(r, hi):+.3f}])" for r in rows.itertuples()) or "nowhere"

    sig = diffs["p_adj"] < ALPHA
    better, worse = diffs[sig & (diffs[diff] > 0)], diffs[sig & (diffs[diff] < 0)]
    level = diffs[~sig]
    width = float((level[hi] - level[lo]).max()) if len(level) else 0.0
    return (f"{what} helps (Holm-adjusted p < {ALPHA:g}, {family or len(diffs)} comparisons corrected together): {where(better)}. "
            f"It hurts: {where(worse)}. Elsewhere ({len(level)} of {len(diffs)}) no difference can be told apart from zero "
            f"(95 % intervals at most {width:.3f} wide).")
