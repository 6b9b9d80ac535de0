"""Experiments on cached embeddings: learning-rate sweeps, model selection by k-fold CV, and the
comparison table (baselines vs single- vs multi-task heads). Every score comes from
`mtl.evaluate.task_metrics`, the one scoring path."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.embed import EmbedSpec
from mtl.prior import prototypes, zero_shot
from mtl.tasks import DEFAULT_TASKS, Tasks

METHODS = ("majority", "zero-shot", "logistic regression", "single-task heads", "multi-task heads")
# The shared-trunk pair is opt-in (`compare(methods=ALL_METHODS)`, `external.sharing_report`), so the default
# comparison table, whose printed output nbval checks in 04, keeps its rows.
TRUNK_METHODS = ("single-task trunk", "multi-task trunk")
ALL_METHODS = METHODS + TRUNK_METHODS
# Which sharing each trained row uses; a single-task row trains the same modules on one task's rows alone.
# Method name -> the TrainConfig fields it sets. The uncertainty-weighted trunk answers "does loss weighting matter?"
# (paired against the static-weighted trunk in `external.sharing_report`).
SHARING = {"single-task heads": {"share": "none"}, "multi-task heads": {"share": "none"}, "single-task trunk": {"share": "trunk"},
           "multi-task trunk": {"share": "trunk"}, "multi-task trunk, uncertainty weighting": {"share": "trunk", "weighting": "uncertainty"}}
# (b) backbone adaptation: the top layers train with the heads, shared by both tasks or one adapted copy per
# task. It needs the texts, not cached vectors, so it has its own path (`adapt_predict`), used by sharing_report.
ADAPTED_METHODS = ("single-task adapted", "multi-task adapted")


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
    prior = prototypes(tasks, spec) if config.prior != "none" else None
    return {lr: train(tr.x, tr.y, tasks, replace(config, lr=lr, device="cpu"), te.x, te.y, prior=prior)[1] for lr in lrs}


def candidates(epochs: int = 30, batch_size: int = 64, seed: int = 0, trunk: bool = True) -> list[tuple[str, object]]:
    """The (layers, TrainConfig) grid that 05 and `mtl train --tune` choose from by CV.

    Frozen features (`last`, mean of layers 3-6 or 4-6) x linear heads with two weight decays, plus
    one-hidden-layer heads (512, dropout 0.5); all class-balanced, since the metric is macro-recall.
    With `trunk`, the same 512 units as one shared trunk (`share="trunk"`) that both tasks train:
    per task the same capacity as the 512-hidden heads, which are its single-task counterpart.
    """
    from mtl.train import TrainConfig

    def head(**kw) -> TrainConfig:
        return TrainConfig(**{"epochs": epochs, "lr": 1e-2, "batch_size": batch_size, "balance": True, "seed": seed, **kw})

    grid = [(layers, head(weight_decay=wd)) for layers in ("last", "3-6", "4-6") for wd in (1e-4, 1e-3)]
    grid += [(layers, head(lr=1e-3, hidden=512, dropout=0.5)) for layers in ("last", "4-6")]
    if trunk:
        grid += [(layers, head(lr=1e-3, share="trunk", trunk_hidden=512, dropout=0.5)) for layers in ("last", "4-6")]
    return grid


def cv_select(candidates: list[tuple[str, object]], rows_for: Callable[[str], tuple], task: str | None, metric: str = "macro_recall",
              folds: int = 5, seed: int = 0, tasks: Tasks = DEFAULT_TASKS, by_domain: bool = False,
              prior_for: Callable[[str], dict] | None = None):
    """Pick among (layers, TrainConfig) candidates by stratified k-fold CV on `task`'s `metric`.

    `rows_for(layers)` returns (base, pool) `Encoded` rows: the folds split `pool`; `base` rows are
    always in training. `task=None` scores the mean of `metric` over the tasks that have labels in a
    held-out fold (folds stratified by the combination of labels). `by_domain`: leave one domain out
    instead (`pool`'s `domain` column; `folds` is then the number of domains), which measures how a
    setting carries to text unlike its training rows. `prior_for(layers)`: the label-description vectors
    for candidates with `prior="descriptions"` (`mtl.prior.prototypes`). Returns (table of mean/sd per candidate, with
    per-task means when `task` is None; index of the best; the best candidate).
    """
    import pandas as pd
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

    from mtl.heads import predict_proba, state_to_numpy
    from mtl.train import train

    rows = []
    for i, (layers, cfg) in enumerate(candidates):
        base, pool = rows_for(layers)
        scored = [task] if task else list(tasks)
        strata = pool.y[task] if task else ["/".join(str(pool.y[t][i]) for t in tasks) for i in range(len(pool.x))]
        scores, per_task = [], {t: [] for t in scored}
        splits = (LeaveOneGroupOut().split(pool.x, groups=pool.frame["domain"]) if by_domain
                  else StratifiedKFold(folds, shuffle=True, random_state=seed).split(pool.x, strata))
        for fit, hold in splits:
            x = np.concatenate([base.x, pool.x[fit]])
            y = {t: np.concatenate([base.y[t], pool.y[t][fit]]) for t in tasks}
            heads, _, _ = train(x, y, tasks, cfg, prior=prior_for(layers) if prior_for and cfg.prior != "none" else None)
            probs = predict_proba(state_to_numpy(heads), tasks, pool.x[hold])
            fold = {t: _score(pool.y[t][hold], probs[t].argmax(1), tasks[t]) for t in scored}
            fold = {t: m[metric] for t, m in fold.items() if m["n"]}  # a task without labels in this fold is not scored
            for t, v in fold.items():
                per_task[t].append(v)
            scores.append(float(np.mean(list(fold.values()))))
        rows.append({"candidate": i, "layers": layers, "hidden": cfg.hidden, "share": cfg.share,
                     "trunk_hidden": cfg.trunk_hidden if cfg.share == "trunk" else 0, "dropout": cfg.dropout, "lr": cfg.lr,
                     "epochs": cfg.epochs, "balance": cfg.balance, "weight_decay": cfg.weight_decay, "prior": cfg.prior,
                     f"cv_{metric}_mean": float(np.mean(scores)), f"cv_{metric}_sd": float(np.std(scores, ddof=1)),
                     **({f"cv_{t}_{metric}": float(np.mean(v)) for t, v in per_task.items()} if task is None else {})})
    table = pd.DataFrame(rows).set_index("candidate")
    best = int(table[f"cv_{metric}_mean"].idxmax())
    return table, best, candidates[best]


def _fit_predict(method: str, x_tr, y_tr, x_te, tasks: Tasks, config, protos) -> dict[str, np.ndarray]:
    """Predicted label ids per task for x_te, training on rows with a label for that task."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from mtl.heads import predict_proba, state_to_numpy
    from mtl.train import train

    if method in SHARING:
        config = replace(config, **SHARING[method])
    if method.startswith("multi-task"):  # `protos` double as the prior when config.prior asks for one
        heads, _, _ = train(x_tr, y_tr, tasks, config, prior=protos)
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
            heads, _, _ = train(x_tr[m], {task: y_tr[task][m]}, one, config, prior=protos)
            preds[task] = predict_proba(state_to_numpy(heads), one, x_te)[task].argmax(1)
    return preds


def adapt_predict(method: str, texts_tr: list[str], x_tr: np.ndarray, y_tr: dict, texts_te: list[str], tasks: Tasks, config,
                  adapt=None, prefix=None) -> dict[str, np.ndarray]:
    """Predicted label ids per task for `texts_te` from an adapted backbone (sharing mode (b)).

    Heads are first trained on the frozen features `x_tr` with `config`, then the top `adapt.unfreeze`
    layers and the heads train together (linear probe, then fine-tune). "multi-task adapted": one backbone
    copy for all tasks, masked joint loss on all rows. "single-task adapted": one copy per task, trained on
    that task's rows only; each copy has the same trainable capacity as the shared one. `prefix`
    (`finetune.Prefix`, last layer pooled): the frozen layers' states, shared by every call that passes it.
    """
    from mtl.finetune import Adapt, finetune, predict_finetuned
    from mtl.train import train

    adapt = adapt or Adapt()
    groups = [tasks] if method == "multi-task adapted" else [{t: labels} for t, labels in tasks.items()]
    preds = {}
    for group in groups:
        rows = np.flatnonzero(np.any([y_tr[t] >= 0 for t in group], axis=0))
        ys = {t: y_tr[t][rows] for t in group}
        init, _, _ = train(x_tr[rows], ys, group, replace(config, share="none"))
        model, heads, prefix, _ = finetune([texts_tr[i] for i in rows], ys, group, unfreeze=adapt.unfreeze, epochs=adapt.epochs,
                                           lr_backbone=adapt.lr_backbone, lr_heads=adapt.lr_heads, balance=config.balance,
                                           seed=config.seed, init_heads=init, verbose=False, prefix=prefix)
        probs = predict_finetuned(model, heads, texts_te, group, prefix)
        preds.update({t: p.argmax(1) for t, p in probs.items()})
    return preds


def compare(data: list[str | Path] | None = None, model: str | Path | None = None, folds: int = 5, spec: EmbedSpec | None = None,
            out: str | Path | None = None, methods: tuple[str, ...] = METHODS):
    """The comparison table (saved as CSV): k-fold CV on the train split (mean, sd) and one score on the held-out split.

    The heads train with the checkpoint's own settings (its TrainConfig and layer choice), so the
    "multi-task heads" row is the model that `mtl train` / 03 trained (when it has no trunk); the
    trunk rows use the same settings with `share="trunk"`. Returns a DataFrame.
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
    protos = prototypes(tasks, spec)
    rows = []
    for method in methods:
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


def tune(data: list[str | Path], tasks: Tasks = DEFAULT_TASKS, spec: EmbedSpec | None = None, folds: int = 5, seed: int = 0,
         grid: list[tuple[str, object]] | None = None, metric: str = "macro_recall"):
    """`mtl train --tune`: choose (layers, TrainConfig) by k-fold CV on the **train rows of `data`** only
    (held-out `split=test` rows never enter), scoring the mean `metric` over tasks.

    Returns (CV table, index of the chosen candidate, (layers, TrainConfig)); `grid` defaults to `candidates(seed=seed)`.
    """
    from mtl.pipeline import load_encoded

    spec = spec or EmbedSpec()
    files = [Path(p) for p in data]

    @functools.cache  # each layer choice is loaded and encoded (or read from the cache) once
    def rows_for(layers: str):
        return _all_in_folds(load_encoded(files, tasks, replace(spec, layers=layers), verbose=False)[0].split()[0])

    return cv_select(grid or candidates(seed=seed), rows_for, None, metric, folds, seed, tasks,
                     prior_for=functools.cache(lambda layers: prototypes(tasks, replace(spec, layers=layers))))


# The grid behind TrainConfig's default weight decay and prior (README "Default model").
DEFAULT_CV_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def default_cv(weight_decays: tuple[float, ...] = DEFAULT_CV_WEIGHT_DECAYS, priors: tuple[str, ...] = ("none", "descriptions"),
               data: str | Path | None = None, spec: EmbedSpec | None = None):
    """How the default head was chosen: leave-one-domain-out CV on the curated **train** rows.

    Each held-out fold is one `domain` of the data card (sport, politics, news wire, markets, ...), so
    the score is sentiment accuracy on a domain the head never saw: what item "generalise without
    peeking" asks of the default sentiment head. Candidates: `TrainConfig()` with each prior x weight
    decay. Report-only sets play no part. Returns `cv_select`'s (table, index of the best, candidate).
    """
    from mtl.pipeline import load_encoded
    from mtl.train import TrainConfig

    spec = replace(spec or EmbedSpec(backend="onnx"), layers="last")
    train_rows = load_encoded([Path(data or paths.DATA_CSV)], DEFAULT_TASKS, spec, verbose=False)[0].split()[0]
    grid = [("last", TrainConfig(prior=p, weight_decay=wd)) for p in priors for wd in weight_decays]
    protos = prototypes(DEFAULT_TASKS, spec)
    return cv_select(grid, lambda _: _all_in_folds(train_rows), "sentiment", "accuracy", seed=0, by_domain=True, prior_for=lambda _: protos)


def _all_in_folds(rows):
    """`cv_select`'s (base, pool) with nothing fixed in training: the folds split every row."""
    return rows.rows(np.zeros(len(rows.x), bool)), rows
