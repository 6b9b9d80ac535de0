"""Metrics per task with scikit-learn; rows without a label for a task are skipped for it."""

from __future__ import annotations

import numpy as np

from mtl.tasks import Tasks

SCALAR_METRICS = ("accuracy", "macro_f1", "macro_recall")


def metric(name: str, y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> float:
    """One scalar metric of label ids (no -1 rows): the sklearn call `task_metrics` makes, reused by
    `mtl.research.stats` so bootstrap resamples are scored exactly like the point estimate."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    ids = list(range(n_labels))
    if name == "accuracy":
        return float(accuracy_score(y_true, y_pred))
    if name == "macro_f1":
        return float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0))
    if name == "macro_recall":
        return float(recall_score(y_true, y_pred, labels=ids, average="macro", zero_division=0))
    raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(SCALAR_METRICS)}")


def from_confusion(name: str, cm: np.ndarray) -> np.ndarray:
    """`metric` from confusion counts (..., k, k), rows = true labels, vectorised over leading axes: what the
    bootstrap uses for its thousands of resamples. Same conventions as the sklearn calls in `metric` (every label
    counts in a macro average; a label with no support or no predictions scores 0); a test checks they agree."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    true, pred = cm.sum(-1), cm.sum(-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "accuracy":
            return tp.sum(-1) / true.sum(-1)
        if name == "macro_recall":
            return np.where(true > 0, tp / true, 0.0).mean(-1)
        if name == "macro_f1":
            return np.where(true + pred > 0, 2 * tp / (true + pred), 0.0).mean(-1)
    raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(SCALAR_METRICS)}")


def task_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, macro-F1, macro-recall, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    mask = y_true >= 0
    yt, yp = y_true[mask], y_pred[mask]
    ids = list(range(len(labels)))
    if len(yt) == 0:
        return {"n": 0}
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=ids, zero_division=0)
    return {
        "n": int(len(yt)),
        **{name: metric(name, yt, yp, len(labels)) for name in SCALAR_METRICS},
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
        "confusion": confusion_matrix(yt, yp, labels=ids).tolist(),
    }


def evaluate(probs: dict[str, np.ndarray], y: dict[str, np.ndarray], tasks: Tasks) -> dict[str, dict]:
    """Metrics for every task that has at least one label in `y`."""
    out = {}
    for task, labels in tasks.items():
        if task in y and (y[task] >= 0).any():
            out[task] = task_metrics(y[task], probs[task].argmax(1), labels)
    return out


def evaluate_by_source(state: dict[str, np.ndarray], tasks: Tasks, train, test) -> dict:
    """Heads `state` on `data.Encoded` train and held-out rows: {"train", "test"} and, with several sources
    (files), {"by_source": {"<file>:<split>": ...}}, the training report of `mtl train`."""
    from mtl.heads import predict_proba

    metrics: dict = {"train": evaluate(predict_proba(state, tasks, train.x), train.y, tasks)}
    if len(test.x):
        metrics["test"] = evaluate(predict_proba(state, tasks, test.x), test.y, tasks)
    sources = list(dict.fromkeys([*train.frame["source"], *test.frame["source"]]))
    if len(sources) > 1:
        metrics["by_source"] = {}
        for source in sources:
            for split, part in (("train", train), ("test", test)):
                sel = (part.frame["source"] == source).to_numpy()
                if sel.any():
                    sub = part.rows(sel)
                    metrics["by_source"][f"{source}:{split}"] = evaluate(predict_proba(state, tasks, sub.x), sub.y, tasks)
    return metrics


def summary(metrics: dict[str, dict]):
    """One row per task: n, accuracy, macro-F1, macro-recall (a DataFrame, rounded to 3 places)."""
    import pandas as pd

    cols = ("n", "accuracy", "macro_f1", "macro_recall")
    return pd.DataFrame({t: {k: m[k] for k in cols} for t, m in metrics.items() if m.get("n")}).T.astype({"n": int}).round(3)


def by_group(frame, probs: dict[str, np.ndarray], tasks: Tasks, column: str = "domain"):
    """Per value of `column` (e.g. the data card's domains): each task's labelled rows and accuracy (blank: no labels)."""
    import pandas as pd

    from mtl.data import label_ids

    y = label_ids(frame, tasks)
    rows = []
    for group, idx in sorted(frame.groupby(column).indices.items()):
        row = {column: group}
        for task in tasks:
            m = idx[y[task][idx] >= 0]
            row[f"{task} n"] = len(m) if len(m) else ""
            row[f"{task} accuracy"] = f"{metric('accuracy', y[task][m], probs[task][m].argmax(1), len(tasks[task])):.3f}" if len(m) else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index(column)


def misclassified(frame, probs: dict[str, np.ndarray], tasks: Tasks):
    """Rows whose predicted label differs from the labelled one, with the predicted probability."""
    import pandas as pd

    rows = []
    for task, labels in tasks.items():
        pred = probs[task].argmax(1)
        for i, true in enumerate(frame[task]):
            if isinstance(true, str) and labels[pred[i]] != true:
                rows.append({"task": task, "text": frame["text"].iloc[i], "true": true, "predicted": labels[pred[i]],
                             "p(predicted)": round(float(probs[task][i].max()), 3)})
    return pd.DataFrame(rows, columns=["task", "text", "true", "predicted", "p(predicted)"])


def format_table(metrics: dict[str, dict], title: str = "") -> str:
    """A small plain-text table: task, n, accuracy, macro-F1, macro-recall."""
    lines = [title] if title else []
    lines.append(f"{'task':<12}{'n':>7}{'accuracy':>10}{'macro-F1':>10}{'macro-rec':>11}")
    for task, m in metrics.items():
        if m.get("n"):
            lines.append(f"{task:<12}{m['n']:>7}{m['accuracy']:>10.3f}{m['macro_f1']:>10.3f}{m['macro_recall']:>11.3f}")
    return "\n".join(lines)


def cell_similarity(x: np.ndarray, groups: list[str]):
    """Mean cosine similarity within each group vs between groups (embeddings are unit length)."""
    import pandas as pd

    groups = np.asarray(groups)
    sims = x @ x.T
    rows = []
    for g in sorted(set(groups)):
        inside = groups == g
        block = sims[np.ix_(inside, inside)]
        n = int(inside.sum())
        within = (block.sum() - np.trace(block)) / max(n * (n - 1), 1)
        between = sims[np.ix_(inside, ~inside)].mean() if (~inside).any() else np.nan
        rows.append({"cell": g, "n": n, "within": float(within), "between": float(between)})
    return pd.DataFrame(rows).set_index("cell")
