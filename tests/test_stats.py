"""Bootstrap CIs on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.evaluate import task_metrics
from mtl.research.stats import bootstrap_ci, paired_bootstrap


def _labels(n: int = 300, k: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


def test_perfect_predictor_has_ci_one_to_one():
    y = _labels()
    for metric in ("accuracy", "macro_recall", "macro_f1"):
        ci = bootstrap_ci(y, y.copy(), metric, n=200, n_labels=3)
        assert (ci.estimate, ci.lo, ci.hi) == (1.0, 1.0, 1.0)


def test_point_estimate_is_task_metrics_and_ci_brackets_it_with_binomial_width():
    y = _labels(1000, 2, seed=1)
    rng = np.random.default_rng(2)
    pred = np.where(rng.random(1000) < 0.8, y, 1 - y)  # about 80 % right
    ci = bootstrap_ci(y, pred, "accuracy", n=1000, seed=0, n_labels=2)
    assert ci.estimate == task_metrics(y, pred, ["a", "b"])["accuracy"]
    assert ci.lo < ci.estimate < ci.hi
    half = 1.96 * np.sqrt(ci.estimate * (1 - ci.estimate) / 1000)  # normal approximation of a proportion
    assert abs((ci.hi - ci.lo) / 2 - half) < 0.006, (ci, half)


def test_unlabelled_rows_are_dropped_and_seed_fixes_the_draws():
    y = np.array([0, 1, 2, -1, -1] * 40)
    pred = np.array([0, 1, 1, 2, 2] * 40)
    a = bootstrap_ci(y, pred, "macro_recall", n=100, seed=3, n_labels=3)
    assert a.n_items == 120 and a.estimate == pytest.approx(2 / 3)
    assert a == bootstrap_ci(y, pred, "macro_recall", n=100, seed=3, n_labels=3)


def test_identical_predictors_give_a_zero_paired_difference():
    y = _labels()
    pred = np.where(np.random.default_rng(4).random(300) < 0.6, y, (y + 1) % 3)
    ci = paired_bootstrap(y, [pred, pred], [pred.copy(), pred.copy()], "macro_recall", n=200)
    assert (ci.estimate, ci.lo, ci.hi) == (0.0, 0.0, 0.0) and ci.per_seed == [0.0, 0.0]


def test_a_clearly_better_predictor_has_a_paired_ci_above_zero_and_the_reverse_below():
    y = _labels(500, 3, seed=5)
    rng = np.random.default_rng(6)
    good = [np.where(rng.random(500) < 0.9, y, (y + 1) % 3) for _ in range(3)]
    bad = [np.where(rng.random(500) < 0.6, y, (y + 2) % 3) for _ in range(3)]
    up = paired_bootstrap(y, good, bad, "accuracy", n=300)
    assert up.lo > 0.2 and up.excludes_zero() and len(up.per_seed) == 3
    assert up.estimate == pytest.approx(np.mean(up.per_seed))
    down = paired_bootstrap(y, bad, good, "accuracy", n=300)
    assert down.hi < 0 and down.estimate == pytest.approx(-up.estimate)


def test_paired_ci_is_narrower_than_the_unpaired_intervals_when_predictors_agree():
    """Pairing cancels item difficulty: two predictors that differ on 10 of 400 items."""
    y = _labels(400, 2, seed=7)
    a = np.where(np.random.default_rng(8).random(400) < 0.75, y, 1 - y)
    b = a.copy()
    b[:10] = y[:10]  # b fixes up to ten of a's items
    paired = paired_bootstrap(y, [b], [a], "accuracy", n=500, n_labels=2)
    single = bootstrap_ci(y, a, "accuracy", n=500, n_labels=2)
    assert paired.lo >= 0 and paired.hi - paired.lo < (single.hi - single.lo) / 3


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci(np.array([0, 1]), np.array([0]), "accuracy")
    with pytest.raises(ValueError, match="one per seed"):
        paired_bootstrap(np.array([0, 1]), [np.array([0, 1])], [], "accuracy")
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(np.array([0, 1]), np.array([0, 1]), "auc", n=2)


@pytest.mark.parametrize("metric", ["accuracy", "macro_recall", "macro_f1"])
def test_resample_scores_from_confusion_counts_equal_sklearn(metric):
    """The bootstrap scores resamples from confusion counts; they must be what `metric` (sklearn) gives, also with a
    class that is never true or never predicted."""
    from sklearn.metrics import confusion_matrix

    from mtl.evaluate import from_confusion
    from mtl.evaluate import metric as sklearn_metric

    rng = np.random.default_rng(7)
    for trial in range(30):
        y = rng.integers(0, 3, 40)
        p = rng.integers(0, 3, 40)
        if trial % 3 == 0:
            y[y == 2] = 0  # class 2 never true
        if trial % 3 == 1:
            p[p == 1] = 0  # class 1 never predicted
        cm = confusion_matrix(y, p, labels=[0, 1, 2])
        assert from_confusion(metric, cm) == pytest.approx(sklearn_metric(metric, y, p, 3), abs=1e-12)


def test_resampling_the_seeds_widens_the_paired_interval_when_seeds_disagree():
    y = _labels(400, 3, seed=8)
    rng = np.random.default_rng(9)
    a = [np.where(rng.random(400) < q, y, (y + 1) % 3) for q in (0.9, 0.6, 0.85, 0.65)]  # draws that differ a lot
    b = [np.where(rng.random(400) < 0.75, y, (y + 2) % 3) for _ in range(4)]
    items = paired_bootstrap(y, a, b, "accuracy", n=400)
    both = paired_bootstrap(y, a, b, "accuracy", n=400, resample_seeds=True)
    assert both.estimate == items.estimate and (both.hi - both.lo) > (items.hi - items.lo)
