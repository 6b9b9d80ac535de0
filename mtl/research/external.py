"""Real text the project did not write (`../shared/data/external/`, absent on users' machines): which files there are,
what each is for, loading them, and scoring models on them with 95 % CIs. What notebooks and tests share.

Training sources: BBC (topic) and TweetEval **val** (sentiment) may be trained and selected on.
Report-only: TweetEval **test**, Financial PhraseBank and AG News are scored after the fact and choose nothing
(no training, selection or threshold); only `REPORT_SETS` names them, and a test records that training and
selection code never opens them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.engine.embed import EmbedSpec
from mtl.tasks import DEFAULT_TASKS

BBC = "bbc_sport_politics.csv"
TWEET_VAL = "tweeteval_sentiment_val.csv"
TWEET_TEST = "tweeteval_sentiment_test.csv"
FPB = "financial_phrasebank_sentiment.csv"
AGNEWS = "agnews_sports_world.csv"
TRAINING_FILES = (BBC, TWEET_VAL)  # external files that may be trained and selected on

# How each external set is reported: (file, task, metric). TweetEval's official metric is macro-recall.
REPORT_SETS = {
    "TweetEval test": (TWEET_TEST, "sentiment", "macro_recall"),
    "BBC": (BBC, "topic", "accuracy"),
    "Financial PhraseBank": (FPB, "sentiment", "macro_recall"),
    "AG News": (AGNEWS, "topic", "accuracy"),
}

# Published TweetEval sentiment results (test split, macro-averaged recall), from the data folder's README.
LEADERBOARD = {"TimeLMs-2021": 0.737, "BERTweet": 0.734, "RoBERTa-Retrained": 0.728, "RoBERTa-Base": 0.713,
               "FastText": 0.629, "SVM": 0.629, "LSTM": 0.583}


def folder_or_none(external_dir: str | Path | None = None) -> Path | None:
    """The external folder, or None with one message when it is absent (as on a user's machine): the one guard."""
    folder = Path(external_dir or paths.EXTERNAL_DIR)
    if not folder.is_dir():
        print(f"external data not found at {folder} (it lives beside the repo, never inside it): the external sets are skipped")
        return None
    return folder


def report_sets(folder: str | Path | None = None, names: list[str] | None = None) -> dict[str, tuple[Path, str, str]]:
    """The report sets present in `folder`: name -> (path, task, metric); a message names any that are missing.

    `folder=None` (no external data): no sets, silently (`folder_or_none` has said why)."""
    if folder is None:
        return {}
    folder = Path(folder)
    out, missing = {}, []
    for name in names or list(REPORT_SETS):
        file, task, metric = REPORT_SETS[name]
        if (folder / file).is_file():
            out[name] = (folder / file, task, metric)
        else:
            missing.append(file)
    if missing:
        print(f"skipping {', '.join(missing)}: not found in {folder}")
    return out


@dataclass
class Scored:
    """One labelled set to score on: a task's label ids, the texts and their embeddings, and how it is reported."""

    name: str
    task: str
    metric: str
    y: np.ndarray
    texts: list[str]
    x: np.ndarray

    @property
    def n_labels(self) -> int:
        return len(DEFAULT_TASKS[self.task])


def curated_sets(held_out) -> dict[str, Scored]:
    """The curated held-out split (`data.Encoded` rows with split=test) as one scored set per task (accuracy)."""
    return {f"curated held-out {t}": Scored(f"curated held-out {t}", t, "accuracy", held_out.y[t][held_out.y[t] >= 0],
                                           list(held_out.frame["text"][held_out.y[t] >= 0]), held_out.x[held_out.y[t] >= 0])
            for t in DEFAULT_TASKS}


def training_files(folder: Path | None) -> list[Path]:
    """The external files that may be trained and selected on (BBC, TweetEval val); none without external data."""
    return [folder / f for f in TRAINING_FILES if (folder / f).is_file()] if folder is not None else []


def load_set(name: str, path: Path, task: str, metric: str, spec: EmbedSpec | None = None, sample: int | None = None) -> Scored:
    """A labelled file as a `Scored` set, embedded with `spec` (its `layers` included).

    `sample`: at most this many rows, drawn at random with a fixed seed (the same rows every run)."""
    from mtl.data import label_ids, load_dataset
    from mtl.engine.embed import encode

    frame = load_dataset(path, {task: DEFAULT_TASKS[task]}, warn_duplicates=False)
    if sample and len(frame) > sample:
        frame = frame.sample(n=sample, random_state=0).sort_index()
    texts = list(frame["text"])
    x, _ = encode(texts, spec or EmbedSpec(), verbose=False)
    return Scored(name, task, metric, label_ids(frame, {task: DEFAULT_TASKS[task]})[task], texts, x)


def load_sets(folder: Path | None, spec: EmbedSpec | None = None, names: list[str] | None = None, sample: int | None = None) -> dict[str, Scored]:
    """Every report set present, embedded with `spec` (empty without external data)."""
    return {name: load_set(name, *where, spec=spec, sample=sample) for name, where in report_sets(folder, names).items()}


def with_layers(sets: dict[str, Scored], layers: str, spec: EmbedSpec) -> dict[str, Scored]:
    """The same sets embedded with other frozen layers (same rows, same order)."""
    from mtl.engine.embed import encode

    return {k: replace(s, x=encode(s.texts, replace(spec, layers=layers), verbose=False)[0]) for k, s in sets.items()}


def score_table(predictions: dict[str, dict[str, np.ndarray]], sets: dict[str, Scored], n_boot: int = 1000, seed: int = 0):
    """Each model's predicted label ids (model -> set name -> ids) on each set: its metric with a 95 % percentile
    bootstrap CI over the set's items. Returns a DataFrame (model, set, task, metric, n, estimate, ci_lo, ci_hi)."""
    import pandas as pd

    from mtl.research.stats import bootstrap_ci

    rows: list[dict] = []
    for model, preds in predictions.items():
        for name, s in sets.items():
            ci = bootstrap_ci(s.y, preds[name], s.metric, n=n_boot, seed=seed, n_labels=s.n_labels)
            rows.append({"model": model, "set": name, "task": s.task, "metric": s.metric, "n": ci.n_items,
                         "estimate": ci.estimate, "ci_lo": ci.lo, "ci_hi": ci.hi})
    return pd.DataFrame(rows, columns=["model", "set", "task", "metric", "n", "estimate", "ci_lo", "ci_hi"])


def heads_predict(state: dict, tasks, sets: dict[str, Scored]) -> dict[str, np.ndarray]:
    """Label ids of heads `state` on every set (each set's own task)."""
    from mtl.heads import predict_proba

    return {name: predict_proba(state, {s.task: tasks[s.task]}, s.x)[s.task].argmax(1) for name, s in sets.items()}


def wide(table) -> object:
    """`score_table` as model x set, each cell "estimate [lo, hi]" (3 decimals): the form the docs show."""
    cells = table.assign(cell=[f"{r.estimate:.3f} [{r.ci_lo:.3f}, {r.ci_hi:.3f}]" for r in table.itertuples()])
    return cells.pivot(index="model", columns="set", values="cell").reindex(index=list(dict.fromkeys(table["model"])),
                                                                               columns=list(dict.fromkeys(table["set"])))
