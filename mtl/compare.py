"""One comparison table: baselines vs single-task vs multi-task heads, cross-validated on the
train split (mean ± sd) and scored once on the held-out test split. Same embeddings, same splits,
same metrics (accuracy and macro-F1 per task)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.tasks import DEFAULT_TASKS, LABEL_DESCRIPTIONS, Tasks

METHODS = ("majority", "zero-shot", "logistic regression", "single-task heads", "multi-task heads")


def _zero_shot_prototypes(tasks: Tasks, backend: str) -> dict[str, np.ndarray]:
    from mtl.embed import encode

    out = {}
    for task, labels in tasks.items():
        desc = [LABEL_DESCRIPTIONS.get(task, {}).get(lab, lab) for lab in labels]
        out[task] = encode(desc, backend=backend)[0]
    return out


def _fit_predict(method: str, x_tr, y_tr, x_te, tasks: Tasks, config, protos) -> dict[str, np.ndarray]:
    """Predicted label ids per task for x_te, training on rows with a label for that task."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from mtl.heads import predict_proba, state_to_numpy
    from mtl.train import train

    preds = {}
    if method == "multi-task heads":
        heads, _, _ = train(x_tr, y_tr, tasks, config)
        return {t: p.argmax(1) for t, p in predict_proba(state_to_numpy(heads), tasks, x_te).items()}
    for task, labels in tasks.items():
        m = y_tr[task] >= 0
        if method == "majority":
            preds[task] = DummyClassifier(strategy="most_frequent").fit(x_tr[m], y_tr[task][m]).predict(x_te)
        elif method == "zero-shot":
            preds[task] = (x_te @ protos[task].T).argmax(1)
        elif method == "logistic regression":
            clf = LogisticRegression(max_iter=2000, C=1.0, random_state=config.seed)
            preds[task] = clf.fit(x_tr[m], y_tr[task][m]).predict(x_te)
        elif method == "single-task heads":
            one = {task: labels}
            heads, _, _ = train(x_tr[m], {task: y_tr[task][m]}, one, config)
            preds[task] = predict_proba(state_to_numpy(heads), one, x_te)[task].argmax(1)
    return preds


def _scores(y: np.ndarray, pred: np.ndarray, n_labels: int) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    m = y >= 0
    return float(accuracy_score(y[m], pred[m])), float(f1_score(y[m], pred[m], labels=list(range(n_labels)), average="macro", zero_division=0))


def compare(data: list[str | Path] | None = None, tasks: Tasks = DEFAULT_TASKS, config=None, folds: int = 5,
            backend: str = "auto", out: str | Path | None = None):
    """Build (and save as CSV) the comparison table; returns a pandas DataFrame."""
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from mtl.atomic import write_text
    from mtl.pipeline import load_encoded
    from mtl.train import TrainConfig

    config = replace(config or TrainConfig(), device="cpu")
    enc, _ = load_encoded([Path(p) for p in (data or [paths.DATA_CSV])], tasks, backend=backend, device="cpu", verbose=False)
    tr, te = enc.split()
    cell = ["/".join(str(v[i]) for v in tr.y.values()) for i in range(len(tr.x))]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    protos = _zero_shot_prototypes(tasks, backend)
    rows = []
    for method in METHODS:
        cv = {t: [] for t in tasks}
        for fit_idx, val_idx in splitter.split(tr.x, cell):
            y_fit = {t: v[fit_idx] for t, v in tr.y.items()}
            pred = _fit_predict(method, tr.x[fit_idx], y_fit, tr.x[val_idx], tasks, config, protos)
            for t, labels in tasks.items():
                cv[t].append(_scores(tr.y[t][val_idx], pred[t], len(labels)))
        pred = _fit_predict(method, tr.x, tr.y, te.x, tasks, config, protos) if len(te.x) else {}
        for t, labels in tasks.items():
            acc = np.array([a for a, _ in cv[t]])
            f1 = np.array([f for _, f in cv[t]])
            test = _scores(te.y[t], pred[t], len(labels)) if len(te.x) else (np.nan, np.nan)
            rows.append({"method": method, "task": t, "cv_accuracy_mean": acc.mean(), "cv_accuracy_sd": acc.std(ddof=1),
                         "cv_macro_f1_mean": f1.mean(), "cv_macro_f1_sd": f1.std(ddof=1),
                         "test_accuracy": test[0], "test_macro_f1": test[1]})
    table = pd.DataFrame(rows).round(4)
    write_text(out or paths.COMPARISON_CSV, table.to_csv(index=False))
    return table
