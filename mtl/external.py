"""Checks on real text the project did not write (`../shared/data/external/`, absent on users' machines).

TweetEval **test** is for final reporting only: settings are chosen by k-fold CV on TweetEval val.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.tasks import DEFAULT_TASKS

BBC = "bbc_sport_politics.csv"
TWEET_VAL = "tweeteval_sentiment_val.csv"
TWEET_TEST = "tweeteval_sentiment_test.csv"

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


def _sentiment_macro_recall(state, x, y) -> dict:
    from mtl.heads import predict_proba

    return _sentiment_scores(y, predict_proba(state, {"sentiment": DEFAULT_TASKS["sentiment"]}, x)["sentiment"].argmax(1))


def select_by_cv(base_x, base_y, val_x, val_y, candidates: list, folds: int = 5, seed: int = 0):
    """k-fold CV on TweetEval val (the curated/BBC rows always train): mean macro-recall per candidate config."""
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from mtl.heads import state_to_numpy
    from mtl.train import train

    rows = []
    for cfg in candidates:
        scores = []
        for fit, hold in StratifiedKFold(folds, shuffle=True, random_state=seed).split(val_x, val_y["sentiment"]):
            x = np.concatenate([base_x, val_x[fit]])
            y = {t: np.concatenate([base_y[t], val_y[t][fit]]) for t in DEFAULT_TASKS}
            heads, _, _ = train(x, y, DEFAULT_TASKS, cfg)
            scores.append(_sentiment_macro_recall(state_to_numpy(heads), val_x[hold], val_y["sentiment"][hold])["macro_recall"])
        rows.append({"hidden": cfg.hidden, "lr": cfg.lr, "epochs": cfg.epochs, "balance": cfg.balance, "weight_decay": cfg.weight_decay,
                     "cv_macro_recall_mean": float(np.mean(scores)), "cv_macro_recall_sd": float(np.std(scores, ddof=1))})
    return pd.DataFrame(rows)


def _describe(layers: str, cfg) -> str:
    head = f"hidden={cfg.hidden}" if cfg.hidden else "linear"
    return f"layers={layers}, {head}, balance={cfg.balance}, wd={cfg.weight_decay:g}"


def tweeteval_report(folder: Path, model_path: str | Path, candidates: list, folds: int = 5, seed: int = 0, backend: str = "auto"):
    """(a) default model, (b) heads trained on curated + TweetEval val + BBC with CV-chosen settings,
    (c) logistic regression on TweetEval val; all scored once on TweetEval test.
    Returns (table, cv table, the chosen (layers, TrainConfig)).

    `candidates` are (layers, TrainConfig) pairs; CV on val picks one, and only that one sees test.
    """
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from mtl.heads import state_to_numpy
    from mtl.pipeline import load_encoded, load_model
    from mtl.train import train

    @functools.cache  # each (file, layer choice) is loaded and encoded, or read from the cache, once
    def encoded(files: tuple, layers: str):
        return load_encoded(list(files), backend=backend, device="cpu", verbose=False, layers=layers)[0]

    def base_and_val(layers: str):
        return encoded((paths.DATA_CSV, folder / BBC), layers).split()[0], encoded((folder / TWEET_VAL,), layers)  # curated test rows stay held out

    rows = []
    for i, (layers, cfg) in enumerate(candidates):
        base, val = base_and_val(layers)
        rows.append({"candidate": i, "layers": layers, **select_by_cv(base.x, base.y, val.x, val.y, [cfg], folds, seed).iloc[0]})
    cv = pd.DataFrame(rows).set_index("candidate")
    best_layers, best = candidates[int(cv["cv_macro_recall_mean"].idxmax())]
    base, val = base_and_val(best_layers)
    x = np.concatenate([base.x, val.x])
    y = {t: np.concatenate([base.y[t], val.y[t]]) for t in DEFAULT_TASKS}
    heads, _, _ = train(x, y, DEFAULT_TASKS, replace(best, seed=seed))

    default = load_model(model_path)
    test_a, test_b, test_c = (encoded((folder / TWEET_TEST,), lay) for lay in (default.meta.get("layers", "last"), best_layers, "last"))
    rows = {
        "(a) default model (curated data only)": _sentiment_macro_recall(default.state, test_a.x, test_a.y["sentiment"]),
        f"(b) multi-task heads, curated + TweetEval val + BBC ({_describe(best_layers, best)})":
            _sentiment_macro_recall(state_to_numpy(heads), test_b.x, test_b.y["sentiment"]),
    }
    val_c = encoded((folder / TWEET_VAL,), "last")
    lr = LogisticRegression(max_iter=3000, random_state=seed).fit(val_c.x, val_c.y["sentiment"])
    rows["(c) logistic regression on TweetEval val"] = _sentiment_scores(test_c.y["sentiment"], lr.predict(test_c.x))
    table = pd.DataFrame(rows).T
    board = pd.DataFrame({"macro_recall": LEADERBOARD}).rename(index=lambda n: f"leaderboard: {n} (45k training tweets)")
    return pd.concat([table, board]), cv, (best_layers, best)


def finetune_report(folder: Path, unfreeze: int, epochs: int = 2, lr_backbone: float = 3e-5, seed: int = 0,
                    chosen: tuple | None = None, backend: str = "auto"):
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
    enc, _ = load_encoded([paths.DATA_CSV, folder / BBC, folder / TWEET_VAL], backend=backend, device="cpu", verbose=False, layers=layers)
    enc = enc.split()[0]  # curated test rows stay held out
    init = train(enc.x, enc.y, DEFAULT_TASKS, replace(head_cfg, seed=seed))[0] if head_cfg else None
    model, heads, span, train_s = finetune(list(enc.frame["text"]), enc.y, DEFAULT_TASKS, unfreeze=unfreeze, epochs=epochs,
                                           lr_backbone=lr_backbone, lr_heads=1e-4 if init is not None else 1e-3, seed=seed,
                                           layers=layers, init_heads=init)
    test = load_dataset(folder / TWEET_TEST)
    start = time.perf_counter()
    probs = predict_finetuned(model, heads, list(test["text"]), DEFAULT_TASKS, span)
    scores = _sentiment_scores(label_ids(test, DEFAULT_TASKS)["sentiment"], probs["sentiment"].argmax(1))
    return pd.Series({"unfreeze": unfreeze, "epochs": epochs, "layers": layers, "heads_start": "frozen (b) heads" if init is not None else "random",
                      **scores,
                      "train_seconds": train_s, "test_encode_seconds": time.perf_counter() - start})
