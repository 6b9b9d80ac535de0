"""Checks on real text the project did not write (`../shared/data/external/`, absent on users' machines).

TweetEval **test** is for final reporting only: settings are chosen by k-fold CV on TweetEval val.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.embed import EmbedSpec
from mtl.tasks import DEFAULT_TASKS

BBC = "bbc_sport_politics.csv"
TWEET_VAL = "tweeteval_sentiment_val.csv"
TWEET_TEST = "tweeteval_sentiment_test.csv"
# Cross-domain, report-only: nothing is trained, selected or thresholded on these two (their README says so).
# Only the report functions below name them; training and selection code never opens them (a test checks).
FPB = "financial_phrasebank_sentiment.csv"
AGNEWS = "agnews_sports_world.csv"

# How each external set is reported: (file, task, metric).
REPORT_SETS = {
    "TweetEval test": (TWEET_TEST, "sentiment", "macro_recall"),
    "BBC": (BBC, "topic", "accuracy"),
    "Financial PhraseBank": (FPB, "sentiment", "macro_recall"),
    "AG News": (AGNEWS, "topic", "accuracy"),
}

# Published TweetEval sentiment results (test split, macro-averaged recall), from the data folder's README.
LEADERBOARD = {"TimeLMs-2021": 0.737, "BERTweet": 0.734, "RoBERTa-Retrained": 0.728, "RoBERTa-Base": 0.713,
               "FastText": 0.629, "SVM": 0.629, "LSTM": 0.583}


def available(external_dir: str | Path | None = None) -> Path | None:
    """The external folder if all three files are there, else None (with a message saying why)."""
    folder = Path(external_dir or paths.EXTERNAL_DIR)
    missing = [f for f in (BBC, TWEET_VAL, TWEET_TEST) if not (folder / f).is_file()]
    if missing:
        print(f"skipping external benchmark: {', '.join(missing)} not found in {folder} (it lives beside the repo, never inside it)")
        return None
    return folder


def _sentiment_scores(y: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy, macro-recall (TweetEval's official metric) and macro-F1 of sentiment label ids."""
    from mtl.evaluate import task_metrics

    m = task_metrics(y, pred, DEFAULT_TASKS["sentiment"])
    return {"accuracy": m["accuracy"], "macro_recall": m["macro_recall"], "macro_f1": m["macro_f1"]}


def _sentiment_of(state, x, y) -> dict:
    """Sentiment scores of heads `state` on embeddings `x` with label ids `y`."""
    from mtl.heads import predict_proba

    return _sentiment_scores(y, predict_proba(state, {"sentiment": DEFAULT_TASKS["sentiment"]}, x)["sentiment"].argmax(1))


def _describe(layers: str, cfg) -> str:
    head = f"hidden={cfg.hidden}" if cfg.hidden else "linear"
    return f"layers={layers}, {head}, balance={cfg.balance}, wd={cfg.weight_decay:g}"


def tweeteval_report(folder: Path, model_path: str | Path, candidates: list, folds: int = 5, seed: int = 0, spec: EmbedSpec | None = None):
    """(a) default model, (b) heads trained on curated + TweetEval val + BBC with CV-chosen settings,
    (c) logistic regression on TweetEval val; all scored once on TweetEval test.
    Returns (table, cv table, the chosen (layers, TrainConfig), model (b) as a Checkpoint for checkpoint_report).

    `candidates` are (layers, TrainConfig) pairs; CV on val picks one, and only that one sees test.
    """
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from mtl.checkpoint import Checkpoint
    from mtl.experiments import cv_select
    from mtl.heads import state_to_numpy
    from mtl.pipeline import load_encoded, load_model
    from mtl.train import train

    spec = spec or EmbedSpec()

    @functools.cache  # each (file, layer choice) is loaded and encoded, or read from the cache, once
    def encoded(files: tuple, layers: str):
        return load_encoded(list(files), spec=replace(spec, layers=layers), verbose=False)[0]

    def base_and_val(layers: str):
        return encoded((paths.DATA_CSV, folder / BBC), layers).split()[0], encoded((folder / TWEET_VAL,), layers)  # curated test rows stay held out

    cv, _, (best_layers, best) = cv_select(candidates, base_and_val, "sentiment", "macro_recall", folds, seed)
    base, val = base_and_val(best_layers)
    x = np.concatenate([base.x, val.x])
    y = {t: np.concatenate([base.y[t], val.y[t]]) for t in DEFAULT_TASKS}
    heads, _, _ = train(x, y, DEFAULT_TASKS, replace(best, seed=seed))

    default = load_model(model_path)
    test_a, test_b, test_c = (encoded((folder / TWEET_TEST,), lay) for lay in (default.meta.get("layers", "last"), best_layers, "last"))
    rows = {
        "(a) default model (curated data only)": _sentiment_of(default.state, test_a.x, test_a.y["sentiment"]),
        f"(b) multi-task heads, curated + TweetEval val + BBC ({_describe(best_layers, best)})":
            _sentiment_of(state_to_numpy(heads), test_b.x, test_b.y["sentiment"]),
    }
    val_c = encoded((folder / TWEET_VAL,), "last")
    lr = LogisticRegression(max_iter=3000, random_state=seed).fit(val_c.x, val_c.y["sentiment"])
    rows["(c) logistic regression on TweetEval val"] = _sentiment_scores(test_c.y["sentiment"], lr.predict(test_c.x))
    table = pd.DataFrame(rows).T
    board = pd.DataFrame({"macro_recall": LEADERBOARD}).rename(index=lambda n: f"leaderboard: {n} (45k training tweets)")
    model_b = Checkpoint(state_to_numpy(heads), {"tasks": DEFAULT_TASKS, "layers": best_layers, "config": best.as_dict()})
    return pd.concat([table, board]), cv, (best_layers, best), model_b


def finetune_report(folder: Path, unfreeze: int, epochs: int = 2, lr_backbone: float = 3e-5, seed: int = 0,
                    chosen: tuple | None = None, spec: EmbedSpec | None = None):
    """Optional: unfreeze the top `unfreeze` layers, train on curated train + TweetEval val + BBC,
    score TweetEval test once. Returns metrics plus the training and test-encoding time in seconds.

    `chosen`: the (layers, TrainConfig) that CV picked for (b). Its heads are trained on the frozen
    features first and fine-tuning starts from them, with the same pooling; without it, heads start
    from scratch on the last layer.
    """
    import time

    import pandas as pd

    from mtl.data import label_ids, load_dataset
    from mtl.finetune import finetune, predict_finetuned
    from mtl.pipeline import load_encoded
    from mtl.train import train

    layers, head_cfg = chosen or ("last", None)
    enc, _ = load_encoded([paths.DATA_CSV, folder / BBC, folder / TWEET_VAL], spec=replace(spec or EmbedSpec(), layers=layers), verbose=False)
    enc = enc.split()[0]  # curated test rows stay held out
    init = train(enc.x, enc.y, DEFAULT_TASKS, replace(head_cfg, seed=seed))[0] if head_cfg else None
    model, heads, prefix, train_s = finetune(list(enc.frame["text"]), enc.y, DEFAULT_TASKS, unfreeze=unfreeze, epochs=epochs,
                                           lr_backbone=lr_backbone, lr_heads=1e-4 if init is not None else 1e-3, seed=seed,
                                           layers=layers, init_heads=init)
    test = load_dataset(folder / TWEET_TEST)
    start = time.perf_counter()
    probs = predict_finetuned(model, heads, list(test["text"]), DEFAULT_TASKS, prefix)
    scores = _sentiment_scores(label_ids(test, DEFAULT_TASKS)["sentiment"], probs["sentiment"].argmax(1))
    return pd.Series({"unfreeze": unfreeze, "epochs": epochs, "layers": layers, "heads_start": "frozen (b) heads" if init is not None else "random",
                      **scores,
                      "train_seconds": train_s, "test_encode_seconds": time.perf_counter() - start})


def adapt_cv_report(folder: Path, chosen: tuple, model_b=None, unfreezes: tuple[int, ...] = (2, 3), max_epochs: int = 4, folds: int = 3,
                    lr_backbone: float = 3e-5, seed: int = 0, n_boot: int = 1000, spec: EmbedSpec | None = None):
    """The stretch recipe: one adapted backbone shared by both tasks, trained on curated train + BBC + TweetEval
    val with the masked joint loss, its settings chosen by k-fold CV on **val only**, then scored once on test.

    CV: val is split into `folds` (stratified); curated train + BBC are always in training. Each fold and each
    `unfreezes` value trains once for `max_epochs` epochs and scores the held-out val fold after every
    epoch, so (unfreeze, epochs) is chosen from one run per fold. Heads start from the frozen `chosen`
    (layers, TrainConfig) heads (linear probe, then fine-tune). The winner is trained on all rows (timed)
    and scored on TweetEval test with a bootstrap CI, and paired against `model_b` (frozen (b)) if given.
    Returns (cv table, result Series).
    """
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from mtl.evaluate import metric as metric_of
    from mtl.finetune import Prefix, finetune, predict_finetuned
    from mtl.heads import predict_proba
    from mtl.pipeline import load_encoded
    from mtl.stats import bootstrap_ci, paired_bootstrap
    from mtl.train import train

    layers, head_cfg = chosen
    spec = replace(spec or EmbedSpec(), layers=layers)
    base = load_encoded([paths.DATA_CSV, folder / BBC], spec=spec, verbose=False)[0].split()[0]  # curated test rows stay held out
    val = load_encoded([folder / TWEET_VAL], spec=spec, verbose=False)[0]
    k = len(DEFAULT_TASKS["sentiment"])
    prefixes = {u: Prefix(u, layers) for u in unfreezes}  # one per unfreeze value, shared by its folds and the final fit

    def fit(rows_base, rows_val, unfreeze: int, epochs: int, on_epoch=None):
        x = np.concatenate([rows_base.x, rows_val.x])
        y = {t: np.concatenate([rows_base.y[t], rows_val.y[t]]) for t in DEFAULT_TASKS}
        texts = list(rows_base.frame["text"]) + list(rows_val.frame["text"])
        init, _, _ = train(x, y, DEFAULT_TASKS, replace(head_cfg, seed=seed))
        return finetune(texts, y, DEFAULT_TASKS, unfreeze=unfreeze, epochs=epochs, lr_backbone=lr_backbone, lr_heads=1e-4,
                        balance=True, seed=seed, layers=layers, init_heads=init, verbose=False, prefix=prefixes[unfreeze], on_epoch=on_epoch)

    scores = {(u, e): [] for u in unfreezes for e in range(1, max_epochs + 1)}
    y_val = val.y["sentiment"]
    for fit_idx, hold_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(val.x, y_val):
        hold = val.rows(np.isin(np.arange(len(val.x)), hold_idx))
        for u in unfreezes:
            def score(epoch, model, heads, prefix, u=u, hold=hold):
                p = predict_finetuned(model, heads, list(hold.frame["text"]), DEFAULT_TASKS, prefix)["sentiment"].argmax(1)
                scores[(u, epoch)].append(metric_of("macro_recall", hold.y["sentiment"], p, k))
            fit(base, val.rows(np.isin(np.arange(len(val.x)), fit_idx)), u, max_epochs, score)
    cv = pd.DataFrame([{"unfreeze": u, "epochs": e, "cv_macro_recall_mean": float(np.mean(v)), "cv_macro_recall_sd": float(np.std(v, ddof=1))}
                       for (u, e), v in scores.items()])
    best = cv.loc[cv["cv_macro_recall_mean"].idxmax()]
    unfreeze, epochs = int(best["unfreeze"]), int(best["epochs"])
    prefixes[unfreeze] = Prefix(unfreeze, layers)  # fresh, so the time below includes running the frozen layers once
    model, heads, prefix, train_s = fit(base, val, unfreeze, epochs)
    test = load_encoded([folder / TWEET_TEST], spec=spec, verbose=False)[0]
    y = test.y["sentiment"]
    pred = predict_finetuned(model, heads, list(test.frame["text"]), DEFAULT_TASKS, prefix)["sentiment"].argmax(1)
    ci = bootstrap_ci(y, pred, "macro_recall", n=n_boot, n_labels=k, seed=seed)
    out = {"unfreeze": unfreeze, "epochs": epochs, "layers": layers, "lr_backbone": lr_backbone, "cv_macro_recall": float(best["cv_macro_recall_mean"]),
           "test_macro_recall": ci.estimate, "ci_lo": ci.lo, "ci_hi": ci.hi, "n_test": ci.n_items, "n_train": len(base.x) + len(val.x),
           "train_seconds": train_s}
    if model_b is not None:
        frozen = predict_proba(model_b.state, {"sentiment": DEFAULT_TASKS["sentiment"]}, test.x)["sentiment"].argmax(1)
        d = paired_bootstrap(y, [pred], [frozen], "macro_recall", n=n_boot, n_labels=k, seed=seed)
        out.update({"minus_frozen_b": d.estimate, "minus_frozen_b_lo": d.lo, "minus_frozen_b_hi": d.hi})
    return cv, pd.Series(out)


def report_sets(folder: str | Path | None = None, names: list[str] | None = None) -> dict[str, tuple[Path, str, str]]:
    """The external sets present in `folder`: name -> (path, task, metric); a message names any that are missing."""
    folder = Path(folder or paths.EXTERNAL_DIR)
    out, missing = {}, []
    for name in names or list(REPORT_SETS):
        file, task, metric = REPORT_SETS[name]
        if (folder / file).is_file():
            out[name] = (folder / file, task, metric)
        else:
            missing.append(file)
    if missing:
        print(f"skipping {', '.join(missing)}: not found in {folder} (it lives beside the repo, never inside it)")
    return out


def _labels_and_x(path: Path, task: str, layers: str, spec: EmbedSpec | None, sample: int | None = None):
    """Label ids of `task`, embeddings (with `layers`) and texts of a labelled external file.

    `sample`: at most this many rows, drawn at random with a fixed seed (the same rows every run)."""
    from mtl.data import label_ids, load_dataset
    from mtl.embed import encode

    frame = load_dataset(path, {task: DEFAULT_TASKS[task]})
    if sample and len(frame) > sample:
        frame = frame.sample(n=sample, random_state=0).sort_index()
    texts = list(frame["text"])
    x, _ = encode(texts, replace(spec or EmbedSpec(), layers=layers), verbose=False)
    return label_ids(frame, {task: DEFAULT_TASKS[task]})[task], x, texts


def checkpoint_report(models: dict, folder: str | Path | None = None, names: list[str] | None = None,
                      spec: EmbedSpec | None = None, n_boot: int = 1000, seed: int = 0):
    """Each model (a checkpoint path or a loaded Checkpoint) on each external set: its metric with a 95 %
    percentile bootstrap CI over the set's items.

    Returns a DataFrame (model, set, task, metric, n, estimate, ci_lo, ci_hi). Report only: no choice is made here.
    """
    import pandas as pd

    from mtl.heads import predict_proba
    from mtl.pipeline import load_model
    from mtl.stats import bootstrap_ci

    rows = []
    for model_name, path in models.items():
        ckpt = path if hasattr(path, "state") else load_model(path)
        for set_name, (file, task, metric) in report_sets(folder, names).items():
            y, x, _ = _labels_and_x(file, task, ckpt.meta.get("layers", "last"), spec)
            pred = predict_proba(ckpt.state, ckpt.tasks, x)[task].argmax(1)
            ci = bootstrap_ci(y, pred, metric, n=n_boot, seed=seed, n_labels=len(DEFAULT_TASKS[task]))
            rows.append({"model": model_name, "set": set_name, "task": task, "metric": metric, "n": ci.n_items,
                         "estimate": ci.estimate, "ci_lo": ci.lo, "ci_hi": ci.hi})
    return pd.DataFrame(rows)


SHARING_PAIRS = (("multi-task heads", "single-task heads"), ("multi-task trunk", "single-task trunk"),
                 ("multi-task adapted", "single-task adapted"), ("multi-task trunk, uncertainty weighting", "multi-task trunk"))


def sharing_report(config, seeds: tuple[int, ...] = (0, 1, 2), folder: str | Path | None = None, names: list[str] | None = None,
                   spec: EmbedSpec | None = None, n_boot: int = 1000, pairs: tuple[tuple[str, str], ...] = SHARING_PAIRS,
                   sample: int | None = None, adapt=None):
    """Multi- vs single-task for each sharing mode, each trained on the curated **train** split once per seed
    with `config`, scored on the curated held-out split and the external sets.

    Modes: linear heads (`share="none"`), a shared trunk (`share="trunk"`) and an adapted backbone
    (`experiments.adapt_predict` with `adapt`). `sample`: score at most this many items of each external
    set (a fixed random subset; TweetEval test has 12,284, which the adapted mode would re-encode per model).

    Returns (scores, diffs). scores: per method and set, the mean and sd over seeds and the seed-0
    model's 95 % bootstrap CI. diffs: per pair (A, B) and set, the paired bootstrap CI of A - B on the
    same items with seeds pooled (`mtl.stats.paired_bootstrap`), plus each seed's own difference.
    """
    import pandas as pd

    from mtl.evaluate import metric as metric_of
    from mtl.experiments import ADAPTED_METHODS, _fit_predict, adapt_predict
    from mtl.pipeline import load_encoded
    from mtl.stats import bootstrap_ci, paired_bootstrap

    spec = replace(spec or EmbedSpec(), layers="last")
    enc, _ = load_encoded([paths.DATA_CSV], DEFAULT_TASKS, spec, verbose=False)
    tr, te = enc.split()
    texts_tr = list(tr.frame["text"])
    targets = {f"curated held-out {task}": (te.y[task], te.x, list(te.frame["text"]), task, "accuracy") for task in DEFAULT_TASKS}
    for set_name, (file, task, metric) in report_sets(folder, names).items():
        targets[set_name] = (*_labels_and_x(file, task, spec.layers, spec, sample), task, metric)
    x_all = np.concatenate([t[1] for t in targets.values()])  # one prediction pass per trained model
    texts_all = [text for t in targets.values() for text in t[2]]
    cuts = np.cumsum([0] + [len(t[1]) for t in targets.values()])
    methods = list(dict.fromkeys(m for pair in pairs for m in pair))
    preds: dict[str, dict[str, list]] = {m: {name: [] for name in targets} for m in methods}
    prefix = None  # the frozen layers' states: computed by the first adapted model, reused by the rest
    if any(m in ADAPTED_METHODS for m in methods):
        from mtl.finetune import Adapt, Prefix

        prefix = Prefix((adapt or Adapt()).unfreeze, "last")
    for seed in seeds:
        for method in methods:
            cfg = replace(config, seed=seed)
            out = (adapt_predict(method, texts_tr, tr.x, tr.y, texts_all, DEFAULT_TASKS, cfg, adapt, prefix) if method in ADAPTED_METHODS
                   else _fit_predict(method, tr.x, tr.y, x_all, DEFAULT_TASKS, cfg, None))
            for i, (name, target) in enumerate(targets.items()):
                preds[method][name].append(out[target[3]][cuts[i]:cuts[i + 1]])
    scores, diffs = [], []
    for name, (y, _, _, task, metric) in targets.items():
        k = len(DEFAULT_TASKS[task])
        for method in methods:
            per_seed = [metric_of(metric, y[y >= 0], p[y >= 0], k) for p in preds[method][name]]
            ci = bootstrap_ci(y, preds[method][name][0], metric, n=n_boot, n_labels=k)
            scores.append({"method": method, "set": name, "metric": metric, "n": ci.n_items, "mean_over_seeds": float(np.mean(per_seed)),
                           "sd_over_seeds": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                           "seed0": ci.estimate, "seed0_ci_lo": ci.lo, "seed0_ci_hi": ci.hi})
        for a, b in pairs:
            d = paired_bootstrap(y, preds[a][name], preds[b][name], metric, n=n_boot, n_labels=k)
            diffs.append({"A": a, "B": b, "set": name, "metric": metric, "n": d.n_items, "seeds": len(seeds), "A_minus_B": d.estimate,
                          "ci_lo": d.lo, "ci_hi": d.hi, "per_seed": [round(v, 4) for v in d.per_seed]})
    return pd.DataFrame(scores), pd.DataFrame(diffs)
