"""Model selection by cross-validation on training rows only: the candidate grid, `cv_select` (k-fold, leave one
domain out, scored pooled or per source), `tune` for `mtl train --tune`, and how the defaults were chosen.

A candidate is a `Recipe` (frozen layers + TrainConfig). Every score comes from `mtl.evaluate.metric`, the one
scoring path. Report-only sets (`research.external`) are never opened here; a test records every file read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from mtl.config import FOLDS, Recipe, TrainConfig
from mtl.data import Encoded, load_encoded
from mtl.engine.embed import EmbedSpec
from mtl.errors import MTLError
from mtl.prior import prototypes
from mtl.tasks import DEFAULT_TASKS, Tasks

MIXES = ("rows", "2", "equal")  # source mixes a search compares: proportional, temperature 2, equal


def candidates(epochs: int = 30, batch_size: int = 64, seed: int = 0, trunk: bool = True, mixes: tuple[str, ...] = ("rows",),
               device: str = "auto") -> list[Recipe]:
    """The grid that `mtl train --tune` (and the external-sets notebook) choose from by CV.

    Frozen features (`last`, mean of layers 3-6 or 4-6) x linear heads with two weight decays, plus
    one-hidden-layer heads (512, dropout 0.5); all class-balanced, since the metric is macro-recall. With
    `trunk`, the same 512 units as one shared trunk (`share="trunk"`) that both tasks train: per task the same
    capacity as the 512-hidden heads, its single-task counterpart. Each is tried with every source mix in `mixes`.
    """
    def recipe(layers: str, **kw) -> list[Recipe]:
        return [Recipe(layers, TrainConfig(**{"epochs": epochs, "lr": 1e-2, "batch_size": batch_size, "balance": True, "seed": seed,
                                              "device": device, "mix": mix, **kw})) for mix in mixes]

    grid = [r for layers in ("last", "3-6", "4-6") for wd in (1e-4, 1e-3) for r in recipe(layers, weight_decay=wd)]
    grid += [r for layers in ("last", "4-6") for r in recipe(layers, lr=1e-3, hidden=512, dropout=0.5)]
    if trunk:
        grid += [r for layers in ("last", "4-6") for r in recipe(layers, lr=1e-3, share="trunk", trunk_hidden=512, dropout=0.5)]
    return grid


def folds_of(pool: Encoded, folds: int, seed: int, task: str | None = None, by_domain: bool = False, tasks: Tasks = DEFAULT_TASKS):
    """(fit, held-out) index pairs over `pool`: stratified k-fold by `task`'s labels, or (task None) by each row's
    source and combination of labels, so every fold holds out a share of every source; or one domain at a time."""
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

    if by_domain:
        return list(LeaveOneGroupOut().split(pool.x, groups=pool.frame["domain"]))
    strata = pool.y[task] if task else [f"{s}/" + "/".join(str(pool.y[t][i]) for t in tasks) for i, s in enumerate(pool.sources)]
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(pool.x, strata))


def score_rows(state: dict, x: np.ndarray, y: dict[str, np.ndarray], sources: np.ndarray, tasks: Tasks, scored: list[str], metric: str,
               per_source: bool, target: str | None = None) -> dict[str, float]:
    """`metric` of heads `state` on rows `x`/`y`, per task (pooled) or per source/task ("<source>:<task>"); with `target`
    (a source name), only that source's rows are scored."""
    from mtl.evaluate import metric as metric_of
    from mtl.heads import predict_proba

    probs = predict_proba(state, tasks, x)
    groups = {s: sources == s for s in dict.fromkeys(sources) if target in (None, s)} if per_source or target else {"": np.ones(len(x), bool)}
    out = {}
    for name, sel in groups.items():
        for t in scored:
            keep = sel & (y[t] >= 0)
            if keep.any():
                out[f"{name}:{t}" if per_source or target else t] = metric_of(metric, y[t][keep], probs[t][keep].argmax(1), len(tasks[t]))
    return out


def fold_score(scores: dict[str, float], per_source: bool) -> float:
    """One number per fold: the mean over tasks, or over sources of each source's mean over its tasks (every source counts the same)."""
    if not per_source:
        return float(np.mean(list(scores.values())))
    by_source: dict[str, list[float]] = {}
    for key, v in scores.items():
        by_source.setdefault(key.rsplit(":", 1)[0], []).append(v)
    return float(np.mean([np.mean(v) for v in by_source.values()]))


def cv_select(recipes: list[Recipe], rows_for: Callable[[str], tuple[Encoded, Encoded]], task: str | None, metric: str = "macro_recall",
              folds: int = FOLDS, seed: int = 0, tasks: Tasks = DEFAULT_TASKS, by_domain: bool = False,
              prior_for: Callable[[str], dict] | None = None, per_source: bool = False, jobs: int | None = None, target: str | None = None):
    """Pick among recipes by cross-validation; returns (table of mean/sd per recipe, index of the best, the best recipe).

    `rows_for(layers)` returns (base, pool) `Encoded` rows: the folds split `pool`; `base` rows are always in
    training. `task` scores that task's `metric`; `task=None` scores every task with labels in a held-out fold,
    averaged over tasks, or with `per_source` over sources first (each source's mean over its tasks), so a big
    source cannot outvote a small one. `by_domain`: leave one domain out instead of k-fold (`pool`'s `domain`).
    `prior_for(layers)`: label-description vectors for recipes with `prior="descriptions"`. `jobs`: worker
    processes for the fold trainings (default: one per core, `research.jobs`). `target` (a source name): every fold
    still trains on every source, but only that source's held-out rows are scored.
    """
    import pandas as pd

    from mtl.research.jobs import parallel

    scored = [task] if task else list(tasks)
    work = []  # one training per (recipe, fold), run side by side: heads train on one core each
    for i, recipe in enumerate(recipes):
        base, pool = rows_for(recipe.layers)
        prior = prior_for(recipe.layers) if prior_for and recipe.train.prior != "none" else None
        for fit, hold in folds_of(pool, folds, seed, task, by_domain, tasks):
            work.append((i, recipe, base, pool, fit, hold, prior))
    # the rows travel as arrays (joblib memory-maps the big ones once), the folds as indices
    results = parallel(lambda w: (w[0], _fit_and_score(w[1], _arrays(w[2]), _arrays(w[3]), w[4], w[5], w[6], tasks, scored, metric,
                                                       per_source, target)), work, jobs)
    rows = []
    for i, recipe in enumerate(recipes):
        cfg = recipe.train
        folds_done = [fold for j, fold in results if j == i]
        parts = {key: [f[key] for f in folds_done if key in f] for key in dict.fromkeys(k for f in folds_done for k in f)}
        scores = [fold_score(f, per_source or target is not None) for f in folds_done]
        rows.append({"candidate": i, "layers": recipe.layers, "hidden": cfg.hidden, "share": cfg.share, "trunk_hidden": cfg.trunk_width,
                     "dropout": cfg.dropout, "lr": cfg.lr, "epochs": cfg.epochs, "balance": cfg.balance, "mix": cfg.mix,
                     "weight_decay": cfg.weight_decay, "prior": cfg.prior,
                     f"cv_{metric}_mean": float(np.mean(scores)), f"cv_{metric}_sd": float(np.std(scores, ddof=1)),
                     **({f"cv_{key}_{metric}": float(np.mean(v)) for key, v in parts.items()} if task is None or target else {})})
    table = pd.DataFrame(rows).set_index("candidate")
    best = int(table[f"cv_{metric}_mean"].idxmax())
    return table, best, recipes[best]


def _arrays(rows: Encoded) -> tuple:
    return rows.x, rows.y, rows.sources


def _fit_and_score(recipe: Recipe, base: tuple, pool: tuple, fit: np.ndarray, hold: np.ndarray, prior, tasks: Tasks, scored: list[str],
                   metric: str, per_source: bool, target: str | None = None) -> dict[str, float]:
    """Train one fold's heads on base + pool[fit] and score pool[hold] (what each worker does)."""
    from mtl.heads import state_to_numpy
    from mtl.train import train

    (bx, by, bs), (px, py, ps) = base, pool
    x, src = np.concatenate([bx, px[fit]]), np.concatenate([bs, ps[fit]])
    y = {t: np.concatenate([by[t], py[t][fit]]) for t in tasks}
    heads, _, _ = train(x, y, tasks, recipe.train, prior=prior, sources=src)
    return score_rows(state_to_numpy(heads), px[hold], {t: py[t][hold] for t in tasks}, ps[hold], tasks, scored, metric, per_source, target)


def all_in_folds(rows: Encoded) -> tuple[Encoded, Encoded]:
    """`cv_select`'s (base, pool) with nothing fixed in training: the folds split every row."""
    return rows.rows(np.zeros(len(rows.x), bool)), rows


def train_rows(files: list[str | Path], tasks: Tasks, spec: EmbedSpec, sample: int | None = None, seed: int = 0) -> Encoded:
    """The train rows of `files` (held-out `split=test` rows never enter selection), embedded with `spec`;
    `sample`: that many of them, drawn with `seed` before encoding (a quick form's sample).

    Quiet about repeated texts: selection reads the same files many times, and `mtl train` warns once when it trains."""
    return load_encoded([Path(p) for p in files], tasks, spec, verbose=False, warn_duplicates=False, sample=sample, seed=seed)[0].split()[0]


def target_source(data: list[str | Path], target: str | Path) -> str:
    """The source name (`Encoded.sources`: the file name) of `target`, which must be one of the `data` files."""
    same = [Path(p) for p in data if Path(p).resolve() == Path(target).resolve()]
    if not same:
        raise MTLError(f"--target {target}: not one of the --data files ({', '.join(str(p) for p in data)})")
    if sum(Path(p).name == same[0].name for p in data) > 1:
        raise MTLError(f"--target {target}: several --data files are named {same[0].name}; rename one")
    return same[0].name


def tune(data: list[str | Path], tasks: Tasks = DEFAULT_TASKS, spec: EmbedSpec | None = None, folds: int = FOLDS, seed: int = 0,
         grid: list[Recipe] | None = None, metric: str = "macro_recall", device: str = "auto", target: str | Path | None = None):
    """`mtl train --tune`: choose a Recipe by k-fold CV on the **train rows of `data`** only, scoring `metric`
    per source and task (every source counts the same, as for the defaults). The grid (`candidates`) covers
    layers, heads, weight decay, sharing and, with several files, the source mix.

    `target` (`--tune --target FILE`, one of `data`): the folds still train on every file, but only that file's
    held-out rows are scored, for a user who cares about one domain.

    Returns (CV table, index of the chosen candidate, the chosen Recipe).
    """
    spec = spec or EmbedSpec()
    scored_source = target_source(data, target) if target is not None else None
    mixes = MIXES if len(data) > 1 else ("rows",)

    @functools.cache  # each layer choice is loaded and encoded (or read from the cache) once
    def rows_for(layers: str):
        return all_in_folds(train_rows(data, tasks, replace(spec, layers=layers)))

    return cv_select(grid or candidates(seed=seed, mixes=mixes, device=device), rows_for, None, metric, folds, seed, tasks,
                     prior_for=functools.cache(lambda layers: prototypes(tasks, replace(spec, layers=layers))), per_source=True,
                     target=scored_source)
