"""Experiments on cached embeddings: learning-rate sweeps, model selection by k-fold CV, and the
comparison table (baselines vs single- vs multi-task heads). Every score comes from
`mtl.evaluate.task_metrics`, the one scoring path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.embed import EmbedSpec
from mtl.tasks import DEFAULT_TASKS, LABEL_DESCRIPTIONS, Tasks

METHODS = ("majority", "zero-shot", "logistic regression", "single-task heads", "multi-task heads")


def _score(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> dict:
    from mtl.evaluate import task_metrics

    return task_metrics(y, pred, labels)


def lr_sweep(data: list[str | Path] | None, lrs: list[float], config, spec: EmbedSpec | None = None,
             tasks: Tasks = DEFAULT_TASKS) -> dict[float, list[dict]]:
    """Train (without saving) at several learning rates on the train split; {lr: per-epoch history with held-out scores}."""
    from mtl.pipeline import load_encoded
    from mtl.train import train

    enc, _ = load_encoded([Path(p) for p in (data or [paths.DATA_CSV])], tasks, spec, verbose=False)
    tr, te = enc.split()
    return {lr: train(tr.x, tr.y, tasks, replace(config, lr=lr, device="cpu"), te.x, te.y)[1] for lr in lrs}


def cv_select(candidates: list[tuple[str, object]], rows_for: Callable[[str], tuple], task: str, metric: str = "macro_recall",
              folds: int = 5, seed: int = 0, tasks: Tasks = DEFAULT_TASKS):
    """Pick among (layers, TrainConfig) candidates by stratified k-fold CV on `task`'s `metric`.

    `rows_for(layers)` returns (base, pool) `Encoded` rows: the folds split `pool`; `base` rows are
    always in training. Returns (table of mean/sd per candidate, index of the best, the best candidate).
    """
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from mtl.heads import predict_proba, state_to_numpy
    from mtl.train import train

    rows = []
    for i, (layers, cfg) in enumerate(candidates):
        base, pool = rows_for(layers)
        scores = []
        for fit, hold in StratifiedKFold(folds, shuffle=True, random_state=seed).split(pool.x, pool.y[task]):
            x = np.concatenate([base.x, pool.x[fit]])
            y = {t: np.concatenate([base.y[t], pool.y[t][fit]]) for t in tasks}
            heads, _, _ = train(x, y, tasks, cfg)
            pred = predict_proba(state_to_numpy(heads), tasks, pool.x[hold])[task].argmax(1)
            scores.append(_score(pool.y[task][hold], pred, tasks[task])[metric])
        rows.append({"candidate": i, "layers": layers, "hidden": cfg.hidden, "lr": cfg.lr, "epochs": cfg.epochs, "balance": cfg.balance,
                     "weight_decay": cfg.weight_decay, f"cv_{metric}_mean": float(np.mean(scores)), f"cv_{metric}_sd": float(np.std(scores, ddof=1))})
    table = pd.DataFrame(rows).set_index("candidate")
    best = int(table[f"cv_{metric}_mean"].idxmax())
    return table, best, candidates[best]


def _zero_shot_prototypes(tasks: Tasks, spec: EmbedSpec | None) -> dict[str, np.ndarray]:
    from mtl.embed import encode

    out = {}
    for task, labels in tasks.items():
        desc = [LABEL_DESCRIPTIONS.get(task, {}).get(lab, lab) for lab in labels]
        out[task] = encode(desc, spec)[0]
    return out


def _fit_predict(method: str, x_tr, y_tr, x_te, tasks: Tasks, config, protos) -> dict[str, np.ndarray]:
    """Predicted label ids per task for x_te, training on rows with a label for that task."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from mtl.heads import predict_proba, state_to_numpy
    from mtl.train import train

    if method == "multi-task heads":
        heads, _, _ = train(x_tr, y_tr, tasks, config)
        return {t: p.argmax(1) for t, p in predict_proba(state_to_numpy(heads), tasks, x_te).items()}
    preds = {}
    for task, labels in tasks.items():
        m = y_tr[task] >= 0
        if method == "majority":
            preds[task] = DummyClassifier(strategy="most_frequent").fit(x_tr[m], y_tr[task][m]).predict(x_te)
        elif method == "zero-shot":
            preds[task] = (x_te @ protos[task].T).argmax(1)
        elif method == "logistic regression":
            preds[task] = LogisticRegression(max_iter=2000, C=1.0, random_state=config.seed).fit(x_tr[m], y_tr[task][m]).predict(x_te)
        elif method == "single-task heads":
            one = {task: labels}
            heads, _, _ = train(x_tr[m], {task: y_tr[task][m]}, one, config)
            preds[task] = predict_proba(state_to_numpy(heads), one, x_te)[task].argmax(1)
    return preds


def compare(data: list[str | Path] | None = None, model: str | Path | None = None, folds: int = 5, spec: EmbedSpec | None = None,
            out: str | Path | None = None):
    """The comparison table (saved as CSV): k-fold CV on the train split (mean, sd) and one score on the held-out split.

    The heads train with the checkpoint's own settings (its TrainConfig and layer choice), so the
    "multi-task heads" row is the model that `mtl train` / 03 trained. Returns a DataFrame.
    """
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from mtl.atomic import write_text
    from mtl.pipeline import load_encoded, load_model
    from mtl.train import TrainConfig

    ckpt = load_model(model)
    tasks = ckpt.tasks
    config = TrainConfig.from_meta(ckpt.meta["config"], device="cpu")
    spec = replace(spec or EmbedSpec(), layers=ckpt.meta.get("layers", "last"))
    enc, _ = load_encoded([Path(p) for p in (data or [paths.DATA_CSV])], tasks, spec, verbose=False)
    tr, te = enc.split()
    cell = ["/".join(str(v[i]) for v in tr.y.values()) for i in range(len(tr.x))]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    protos = _zero_shot_prototypes(tasks, spec)
    rows = []
    for method in METHODS:
        cv = {t: [] for t in tasks}
        for fit_idx, val_idx in splitter.split(tr.x, cell):
            pred = _fit_predict(method, tr.x[fit_idx], {t: v[fit_idx] for t, v in tr.y.items()}, tr.x[val_idx], tasks, config, protos)
            for t, labels in tasks.items():
                cv[t].append(_score(tr.y[t][val_idx], pred[t], labels))
        pred = _fit_predict(method, tr.x, tr.y, te.x, tasks, config, protos) if len(te.x) else {}
        for t, labels in tasks.items():
            acc = np.array([m["accuracy"] for m in cv[t]])
            f1 = np.array([m["macro_f1"] for m in cv[t]])
            test = _score(te.y[t], pred[t], labels) if len(te.x) else {"accuracy": np.nan, "macro_f1": np.nan}
            rows.append({"method": method, "task": t, "cv_accuracy_mean": acc.mean(), "cv_accuracy_sd": acc.std(ddof=1),
                         "cv_macro_f1_mean": f1.mean(), "cv_macro_f1_sd": f1.std(ddof=1),
                         "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"]})
    table = pd.DataFrame(rows).round(4)
    write_text(out or paths.COMPARISON_CSV, table.to_csv(index=False))
    return table
