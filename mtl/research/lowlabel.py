"""Notebook 07's experiment: one task keeps k labels per class (a *draw*), the other keeps all of its labels. Does
training with the other task help the few-labelled one, when the design gives it every chance to?

Arms, on the same draw, seed and few-task batches:
- **single**: the few task alone.
- **multi**: both tasks, task-balanced batches (every step carries rows of each task; the few task's rows are
  drawn at every step), the other task's loss weighted by λ. λ ∈ `LAMBDAS` is chosen per draw by k-fold CV on
  that draw's own few-task rows (other-task rows always in training): best mean held-fold accuracy, ties broken
  by lower log-loss. λ = 0 *is* single-task (`batched.Member`: a weight-0 task is absent), so CV can always
  fall back to it.
- **sequential**: the other task first, then the few task starting from those weights (intermediate training,
  as Weller et al. 2022 compare it with multi-task), the same number of steps in each stage.

Frozen modes (`heads`: linear heads, which cannot share; `trunk`: a shared Linear-ReLU before the heads) train
thousands of models as one batched program (`research.batched`). The adapted mode (top layers of the backbone
train too) runs one model at a time (`research.adapt`, task-balanced batches from the same sampler); it takes
λ from the trunk's CV on the same draw rather than running its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mtl.config import Adapt, Recipe, TrainConfig
from mtl.data import Encoded
from mtl.research import batched
from mtl.research.curves import few_labels
from mtl.tasks import Tasks

LAMBDAS = (0.0, 0.03, 0.1, 0.3, 1.0)  # the other task's loss weight; 0: single-task
CV_FOLDS = 3  # folds over a draw's few-task rows (stratified; at k = 4 each holds out one or two rows per class)
CHUNK = 600  # models per batched call: bounds memory (a 256-wide trunk model with Adam state is ~1.6 MB)


@dataclass(frozen=True)
class Draw:
    """k labels per class of the few task, drawn with `seed` (which also seeds every model trained on it)."""

    k: int | str
    seed: int

    def rows(self, y_few: np.ndarray) -> np.ndarray:
        """Row indices the draw keeps (`curves.few_labels`: the same rows on every machine)."""
        return np.flatnonzero(few_labels(y_few, self.k, self.seed))

    def folds(self, y_rows: np.ndarray, folds: int = CV_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
        """Stratified folds (positions into the draw's rows) for choosing λ: as many as the smallest class allows."""
        from sklearn.model_selection import StratifiedKFold

        n = min(folds, int(np.bincount(y_rows).min()))
        return list(StratifiedKFold(n, shuffle=True, random_state=self.seed).split(np.zeros(len(y_rows)), y_rows))


def _chosen(acc: np.ndarray, loss: np.ndarray) -> int:
    """Index of the best λ: highest mean CV accuracy, ties broken by lower mean log-loss (then the smaller λ)."""
    return int(np.lexsort((np.arange(len(acc)), loss.round(9), -acc.round(9)))[0])


def frozen_arms(x: np.ndarray, y: dict[str, np.ndarray], tasks: Tasks, few: str, draws: Sequence[Draw], config: TrainConfig,
                steps: int, x_eval: np.ndarray, lambdas: Sequence[float] = LAMBDAS, folds: int = CV_FOLDS,
                threads: int | None = 1, progress: str | None = None) -> list[dict]:
    """Single, multi (λ by CV) and sequential arms of every draw, trained as batched programs (`config.share`: heads
    or a trunk). One dict per draw: k, seed, lambda (chosen), cv (λ -> mean held-fold accuracy), and the few
    task's predicted label ids on `x_eval` per arm ("single", "multi", "sequential")."""
    if lambdas[0] != 0:
        raise ValueError(f"lambdas must start with 0 (the single-task arm), got {lambdas}")
    other = next(t for t in tasks if t != few)
    other_rows = np.flatnonzero(y[other] >= 0)
    b = config.batch_size
    plans = []  # per draw: its rows and folds
    cv_members, cv_held, final_members = [], [], []
    for d in draws:
        rows = d.rows(y[few])
        splits = d.folds(y[few][rows], folds)
        plans.append((d, rows, len(splits)))
        # task-balanced: each step takes as many rows of the other task as of the few one (min(batch_size, few rows))
        for fit, held in splits:
            for lam in lambdas:
                cv_members.append(batched.Member({few: rows[fit], other: other_rows}, {other: lam}, d.seed, min(b, len(fit))))
                cv_held.append(rows[held])
        final_members += [batched.Member({few: rows, other: other_rows}, {other: lam}, d.seed, min(b, len(rows))) for lam in lambdas]
    first = {d.seed: batched.Member({other: other_rows}, {}, d.seed) for d in draws}  # sequential stage 1: the other task alone

    def fit(members, init=None):
        out = []
        for lo in range(0, len(members), CHUNK):
            out += batched.train_many(x, y, tasks, members[lo:lo + CHUNK], config, steps, init=None if init is None else init[lo:lo + CHUNK],
                                      threads=threads, progress=progress)
        return out

    cv_states, final_states = fit(cv_members), fit(final_members)
    stage1 = dict(zip(first, fit(list(first.values()))))
    second = [batched.Member({few: rows}, {}, d.seed) for d, rows, _ in plans]
    seq_states = fit(second, init=[stage1[d.seed] for d, _, _ in plans])

    cv_probs = batched.predict(cv_states, x, [few])[few]
    out, i, j = [], 0, 0
    for n, (d, _, n_folds) in enumerate(plans):
        acc = np.zeros((n_folds, len(lambdas)))
        loss = np.zeros_like(acc)
        for f in range(n_folds):
            for m in range(len(lambdas)):
                held = cv_held[i]
                p = cv_probs[i][held]
                acc[f, m] = float((p.argmax(1) == y[few][held]).mean())
                loss[f, m] = float(-np.log(np.clip(p[np.arange(len(held)), y[few][held]], 1e-12, None)).mean())
                i += 1
        best = _chosen(acc.mean(0), loss.mean(0))
        finals = final_states[j:j + len(lambdas)]
        j += len(lambdas)
        probs = batched.predict([finals[0], finals[best], seq_states[n]], x_eval, [few])[few]
        out.append({"k": d.k, "seed": d.seed, "lambda": float(lambdas[best]), "cv": dict(zip(map(float, lambdas), acc.mean(0).round(4))),
                    "single": probs[0].argmax(1), "multi": probs[1].argmax(1), "sequential": probs[2].argmax(1)})
    return out


def balanced_schedule(rows: dict[str, np.ndarray], tasks: Tasks, batch: int, steps: int, seed: int) -> list:
    """Task-balanced batches for one model, as `batched` draws them: per step min(batch, n) rows of each task in
    `rows` (task -> row indices), from that task's stream (seeded by the seed and the task's position in `tasks`)."""
    import torch

    streams = [torch.as_tensor(r, dtype=torch.long)[batched.index_stream(seed, list(tasks).index(t), len(r), min(batch, len(r)), steps).long()]
               for t, r in rows.items()]
    return [torch.cat([s[step] for s in streams]) for step in range(steps)]


def adapted_arms(train: Encoded, tasks: Tasks, few: str, draws: Sequence[Draw], lambdas: dict[Draw, float], recipe: Recipe, adapt: Adapt,
                 prefix, steps: int, texts_eval: list[str]) -> list[dict]:
    """Single, multi (λ from `lambdas[draw]`) and sequential adapted arms of every draw, one model at a time: the top
    `adapt.unfreeze` layers train with the heads (linear probe, then fine-tune) on task-balanced batches, `steps`
    updates per stage; the sequential arm's first stage (the other task alone) is trained once per seed and serves
    every k. Returns dicts like `frozen_arms`' (no cv)."""
    from mtl.research.adapt import predict_finetuned, probe_then_adapt

    other = next(t for t in tasks if t != few)
    other_rows = np.flatnonzero(train.y[other] >= 0)
    first: dict[int, object] = {}  # sequential stage 1 per seed: the other task alone (the same for every k)

    def fit(rows: Encoded, use: dict[str, np.ndarray], seed: int, weights: dict[str, float] | None = None, init_model=None):
        sub = {t: tasks[t] for t in use}
        fit_recipe = Recipe(recipe.layers, replace(recipe.train, seed=seed, task_weights=weights or {}))
        schedule = balanced_schedule(use, tasks, min(adapt.batch_size, len(use[few] if few in use else use[other])), steps, seed)
        return probe_then_adapt(Encoded(rows.frame, rows.x, {t: rows.y[t] for t in sub}), sub, fit_recipe, adapt, prefix,
                                init_model=init_model, batches=schedule)

    def predict(model, heads, sub_tasks) -> np.ndarray:
        return predict_finetuned(model, heads, texts_eval, sub_tasks, prefix)[few].argmax(1)

    out = []
    for d in draws:
        rows = d.rows(train.y[few])
        y_multi = {few: np.where(np.isin(np.arange(len(train.x)), rows), train.y[few], -1), other: train.y[other]}
        multi = Encoded(train.frame, train.x, y_multi)
        only = train.rows(np.isin(np.arange(len(train.x)), rows))  # the few rows alone, in the same order
        positions = np.arange(len(rows))
        lam = lambdas[d]
        m_model, m_heads, _ = fit(multi, {few: rows, other: other_rows}, d.seed, {other: lam})
        s_model, s_heads, _ = fit(only, {few: positions}, d.seed)
        if d.seed not in first:
            before = train.rows(train.y[other] >= 0)
            first[d.seed] = fit(before, {other: np.arange(len(before.x))}, d.seed)[0]
        q_model, q_heads, _ = fit(only, {few: positions}, d.seed, init_model=first[d.seed])
        sub = {few: tasks[few]}
        out.append({"k": d.k, "seed": d.seed, "lambda": lam, "single": predict(s_model, s_heads, sub),
                    "multi": predict(m_model, m_heads, {**sub, other: tasks[other]}), "sequential": predict(q_model, q_heads, sub)})
    return out


# Comparisons of the effects table: name -> (arm A, arm B); each row is A − B on the same items and draws.
COMPARISONS = {"multi_vs_single": ("multi", "single"), "sequential_vs_single": ("sequential", "single"),
               "multi_vs_sequential": ("multi", "sequential")}


def effects(runs: list[dict], targets: dict, n_boot: int) -> object:
    """The effects table: one row per (comparison, mode, few task, k, scored set): A − B with a two-level bootstrap
    95 % interval (items and draws resampled, `stats.paired_bootstrap`), its p-value, and Holm's adjustment across
    every row of the table (`p_adj`).

    `runs`: dicts with mode, few, k, `arms` (a list over draws of `frozen_arms`/`adapted_arms` dicts), `sets`
    (scored-set name -> slice of the arms' predictions) and `comparisons` (name -> (arm A, arm B)). The runs are
    bootstrapped one per core."""
    import pandas as pd

    from mtl.research.jobs import parallel
    from mtl.research.stats import holm, paired_bootstrap

    def rows_of(run: dict) -> list[dict]:
        rows = []
        for name, cut in run["sets"].items():
            t = targets[name]
            for comparison, (a, b) in run["comparisons"].items():
                d = paired_bootstrap(t.y, [r[a][cut] for r in run["arms"]], [r[b][cut] for r in run["arms"]], t.metric, n=n_boot,
                                     n_labels=t.n_labels, resample_seeds=True)
                rows.append({"comparison": comparison, "mode": run["mode"], "few_task": run["few"], "k": str(run["k"]), "set": name,
                             "metric": t.metric, "n": d.n_items, "draws": len(run["arms"]), "diff": d.estimate, "lo": d.lo, "hi": d.hi,
                             "p": d.p, "lambda_median": float(np.median([r["lambda"] for r in run["arms"]]))})
        return rows

    table = pd.DataFrame([row for rows in parallel(rows_of, runs) for row in rows])
    table.insert(table.columns.get_loc("p") + 1, "p_adj", holm(table["p"]))
    return table


def scores(runs: list[dict], targets: dict, n_boot: int, arms: Sequence[str] = ("single", "multi", "sequential")) -> object:
    """Each arm's own score per run and scored set: the mean over draws with a 95 % interval over items and draws
    (`stats.bootstrap_ci` on one prediction per draw). One row per (run, set, arm)."""
    import pandas as pd

    from mtl.research.jobs import parallel
    from mtl.research.stats import bootstrap_ci

    def rows_of(run: dict) -> list[dict]:
        return [{"group": run["group"], "mode": run["mode"], "few_task": run["few"], "k": str(run["k"]), "set": name, "arm": arm,
                 "metric": targets[name].metric, "draws": len(run["arms"]),
                 **bootstrap_ci(targets[name].y, [a[arm][cut] for a in run["arms"]], targets[name].metric, n=n_boot,
                                n_labels=targets[name].n_labels).as_dict()}
                for name, cut in run["sets"].items() for arm in arms]

    return pd.DataFrame([row for rows in parallel(rows_of, runs) for row in rows])
