"""Baselines vs single- vs multi-task on the same embeddings and rows: `fit_predict` trains one method and predicts,
`compare` makes the comparison table (k-fold CV on the train split, one score on the held-out split), `lr_sweep`
the learning-rate curves. Every score comes from `mtl.evaluate.task_metrics`, the one scoring path.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.config import FOLDS, TrainConfig
from mtl.data import load_encoded
from mtl.engine.embed import EmbedSpec
from mtl.evaluate import task_metrics
from mtl.prior import prototypes, zero_shot
from mtl.research.jobs import parallel
from mtl.research.stats import bootstrap_ci
from mtl.tasks import DEFAULT_TASKS, Tasks

METHODS = ("majority", "zero-shot", "logistic regression", "single-task heads", "multi-task heads")
# How each trained method shares: the TrainConfig fields it sets. A single-task method trains the same modules
# on one task's rows alone; the uncertainty-weighted trunk asks whether loss weighting matters.
SHARING = {"single-task heads": {"share": "none"}, "multi-task heads": {"share": "none"}, "single-task trunk": {"share": "trunk"},
           "multi-task trunk": {"share": "trunk"}, "multi-task trunk, uncertainty weighting": {"share": "trunk", "weighting": "uncertainty"}}


def fit_predict(method: str, x_tr, y_tr, x_te, tasks: Tasks, config: TrainConfig, protos=None, sources=None) -> dict[str, np.ndarray]:
    """Predicted label ids per task for `x_te`; each task learns from the rows labelled for it.

    `protos` (label-description vectors) serve zero-shot and, when `config.prior` asks, the prior.
    """
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from mtl.heads import predict_proba, state_to_numpy
    from mtl.train import train

    if method in SHARING:
        config = replace(config, **SHARING[method])
    if method.startswith("multi-task"):
        heads, _, _ = train(x_tr, y_tr, tasks, config, prior=protos, sources=sources)
        return {t: p.argmax(1) for t, p in predict_proba(state_to_numpy(heads), tasks, x_te).items()}
    preds = {}
    for task, labels in tasks.items():
        m = y_tr[task] >= 0
        if method == "majority":
            preds[task] = DummyClassifier(strategy="most_frequent").fit(x_tr[m], y_tr[task][m]).predict(x_te)
        elif method == "zero-shot":
            preds[task] = zero_shot(x_te, protos[task])
        elif method == "logistic regression":
            preds[task] = LogisticRegression(max_iter=2000, C=1.0, random_state=config.seed).fit(x_tr[m], y_tr[task][m]).predict(x_te)
        elif method.startswith("single-task"):
            one = {task: labels}
            heads, _, _ = train(x_tr[m], {task: y_tr[task][m]}, one, config, prior=protos, sources=None if sources is None else sources[m])
            preds[task] = predict_proba(state_to_numpy(heads), one, x_te)[task].argmax(1)
        else:
            raise ValueError(f"unknown method {method!r}")
    return preds


ADAPTED = ("single-task adapted", "multi-task adapted")  # the top layers train too (`research.adapt`)


def predict_sets(method: str, rows, sets: dict, tasks: Tasks, recipe, adapt=None, prefix=None) -> dict[str, np.ndarray]:
    """Train `method` on `rows` (`data.Encoded`) and predict each scored set's task (`research.external.Scored`):
    frozen methods on the cached vectors, adapted ones on the texts (through `prefix`, the frozen layers' states)."""
    names = list(sets)
    cuts = np.cumsum([0] + [len(sets[n].y) for n in names])
    if method in ADAPTED:
        from mtl.research.adapt import adapt_predict

        preds = adapt_predict(method, rows, [t for n in names for t in sets[n].texts], tasks, recipe, adapt, prefix)
    else:
        x = np.concatenate([sets[n].x for n in names]) if names else np.zeros((0, rows.x.shape[1]), np.float32)
        preds = fit_predict(method, rows.x, rows.y, x, tasks, recipe.train, sources=rows.sources)
    return {n: preds[sets[n].task][cuts[i]:cuts[i + 1]] for i, n in enumerate(names)}


def compare(data: list[str | Path] | None = None, model: str | Path | None = None, folds: int = FOLDS, spec: EmbedSpec | None = None,
            out: str | Path | None = None, methods: tuple[str, ...] = METHODS):
    """The comparison table (saved as CSV): k-fold CV on the train split (mean, sd) and one score on the held-out split,
    with its 95 % percentile bootstrap interval over the held-out rows (`test_accuracy_lo`, `_hi`).

    The heads train with the checkpoint's own settings (its TrainConfig and layer choice), so the
    "multi-task heads" row is the model that `mtl train` / 03 trained. Returns a DataFrame.
    """
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from mtl.atomic import write_text
    from mtl.predict import load_model

    ckpt = load_model(model)
    tasks = ckpt.tasks
    config = TrainConfig.from_meta(ckpt.meta["config"], device="cpu")
    spec = replace(spec or EmbedSpec(), layers=ckpt.layers)
    enc, _ = load_encoded([Path(p) for p in (data or [paths.DATA_CSV])], tasks, spec, verbose=False)
    tr, te = enc.split()
    cell = ["/".join(str(v[i]) for v in tr.y.values()) for i in range(len(tr.x))]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    protos = prototypes(tasks, spec)
    splits = list(splitter.split(tr.x, cell))

    def fit(job: tuple[str, int | None]) -> dict:
        """One method on one fold (predicting its validation rows), or on all train rows (fold None: the held-out split)."""
        method, fold = job
        if fold is None:
            return fit_predict(method, tr.x, tr.y, te.x, tasks, config, protos, tr.sources) if len(te.x) else {}
        fit_idx, val_idx = splits[fold]
        return fit_predict(method, tr.x[fit_idx], {t: v[fit_idx] for t, v in tr.y.items()}, tr.x[val_idx], tasks, config, protos,
                           tr.sources[fit_idx])

    jobs = [(method, fold) for method in methods for fold in [*range(folds), None]]
    done = dict(zip(jobs, parallel(fit, jobs)))  # one fit per core; each is seeded, so the table doesn't depend on the workers
    rows = []
    for method in methods:
        cv = {t: [task_metrics(tr.y[t][val_idx], done[method, f][t], labels) for f, (_, val_idx) in enumerate(splits)]
              for t, labels in tasks.items()}
        pred = done[method, None]
        for t, labels in tasks.items():
            acc = np.array([m["accuracy"] for m in cv[t]])
            f1 = np.array([m["macro_f1"] for m in cv[t]])
            test = task_metrics(te.y[t], pred[t], labels) if len(te.x) else {"accuracy": np.nan, "macro_f1": np.nan}
            ci = bootstrap_ci(te.y[t], pred[t], "accuracy", n_labels=len(labels)) if (te.y[t] >= 0).any() else None
            rows.append({"method": method, "task": t, "cv_accuracy_mean": acc.mean(), "cv_accuracy_sd": acc.std(ddof=1),
                         "cv_macro_f1_mean": f1.mean(), "cv_macro_f1_sd": f1.std(ddof=1),
                         "test_accuracy": test["accuracy"], "test_accuracy_lo": ci.lo if ci else np.nan,
                         "test_accuracy_hi": ci.hi if ci else np.nan, "test_macro_f1": test["macro_f1"]})
    table = pd.DataFrame(rows)  # full precision: readers round once (a 4-decimal table would round 0.98449 to 0.9845, then 0.985)
    write_text(out or paths.COMPARISON_CSV, table.to_csv(index=False))
    return table


def lr_sweep(data: list[str | Path] | None, lrs: list[float], config: TrainConfig, spec: EmbedSpec | None = None,
             tasks: Tasks = DEFAULT_TASKS) -> dict[float, list[dict]]:
    """Train (without saving) at several learning rates on the train split; {lr: per-epoch history with held-out scores}."""
    from mtl.train import train

    enc, _ = load_encoded([Path(p) for p in (data or [paths.DATA_CSV])], tasks, spec, verbose=False)
    tr, te = enc.split()
    prior = prototypes(tasks, spec) if config.prior != "none" else None
    return {lr: train(tr.x, tr.y, tasks, replace(config, lr=lr, device="cpu"), te.x, te.y, prior=prior, sources=tr.sources)[1] for lr in lrs}
