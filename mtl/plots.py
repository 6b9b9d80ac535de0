"""Figures: loss/accuracy curves, confusion matrices, UMAP and PCA maps. Saved atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.atomic import atomic_path
from mtl.tasks import DEFAULT_TASKS

# UMAP compiles with numba; caching the JIT output makes later runs skip that cost.
os.environ.setdefault("NUMBA_CACHE_DIR", str(paths.CACHE_DIR / "numba"))


class Saved(type(Path())):
    """The path of a saved figure; as a notebook cell's value it shows one caption line, not `PosixPath(…)`."""

    def _ipython_display_(self) -> None:
        print(f"saved {self}")


def save_figure(fig, path: str | Path) -> Saved:
    """Write a matplotlib figure to PNG atomically, show it in the cell's output when in a notebook, and close it.

    Showing it here (rather than leaving it open for the inline backend) puts every figure in the output of the
    cell that drew it, whatever the cell does after; closing it keeps scripts and long runs from collecting figures.
    """
    import matplotlib.pyplot as plt

    from mtl.progress import in_kernel

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    if in_kernel():
        from IPython.display import Image, display

        # the file itself, so what the notebook shows is what was saved; the metadata names it for the tests
        display(Image(filename=str(path)), metadata={"mtl": {"figure": Path(path).name}})
    plt.close(fig)
    return Saved(path)


def loss_curves(history: list[dict], tasks: list[str], path: str | Path, title: str = ""):
    """Joint and per-task cross-entropy (train vs held-out test) and accuracy per epoch."""
    import matplotlib.pyplot as plt
    import pandas as pd

    h = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2 + len(tasks), figsize=(5 * (2 + len(tasks)), 4))
    ax = axes[0]
    ax.plot(h["epoch"], h["train_loss"], label="train (mean over batches)")
    if "test_loss" in h:
        ax.plot(h["epoch"], h["test_loss"], label="test (held out)")
    ax.set(title="joint loss", xlabel="epoch", ylabel="summed cross-entropy (nats)")
    ax.legend()
    for ax, task in zip(axes[1 : 1 + len(tasks)], tasks):
        for split in ("train", "test"):
            if f"{split}_loss_{task}" in h:
                ax.plot(h["epoch"], h[f"{split}_loss_{task}"], label=split)
        ax.set(title=f"{task} loss", xlabel="epoch", ylabel="cross-entropy (nats)")
        ax.legend()
    ax = axes[-1]
    for task in tasks:
        for split, style in (("train", "--"), ("test", "-")):
            if f"{split}_acc_{task}" in h:
                ax.plot(h["epoch"], h[f"{split}_acc_{task}"], style, label=f"{task} {split}")
    ax.set(title="accuracy", xlabel="epoch", ylabel="accuracy (fraction)", ylim=(0, 1.02))
    ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def confusion(cm: list[list[int]], labels: list[str], task: str, path: str | Path):
    """Seaborn heatmap of counts, true labels on rows."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2, 1.4 * len(labels) + 1.5))
    sns.heatmap(np.array(cm), annot=True, fmt="d", cmap="Blues", xticklabels=labels, yticklabels=labels, cbar=False, ax=ax)
    ax.tick_params(axis="y", labelrotation=0)
    n = int(np.sum(cm))
    acc = np.trace(np.array(cm)) / max(n, 1)
    ax.set(xlabel="predicted label", ylabel="true label", title=f"{task}: test split, n={n}, accuracy {acc:.3f}")
    fig.tight_layout()
    return save_figure(fig, path)


def project_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(UMAP or None, PCA, note). UMAP (cosine) needs a handful of points; below that only PCA."""
    from sklearn.decomposition import PCA

    n = len(x)
    pca = PCA(n_components=2, random_state=seed).fit_transform(x) if n >= 2 else np.zeros((n, 2))
    if n < 5:
        return None, pca, f"UMAP skipped: {n} points (needs at least 5); PCA only"
    import umap

    reducer = umap.UMAP(n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_jobs=1, init="random" if n < 20 else "spectral")
    return reducer.fit_transform(x), pca, ""


def embedding_map(x: np.ndarray, colour_by: dict[str, list[str]], path: str | Path, seed: int = 0):
    """UMAP and PCA of the frozen embeddings (fitted on every row), one row of panels per colouring (e.g. topic,
    sentiment); each row shows the points that carry that label (missing: None, NaN or "") and says how many."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    um, pca, note = project_2d(x, seed)
    fig, axes = plt.subplots(len(colour_by), 2, figsize=(11, 4.5 * len(colour_by)), squeeze=False)
    for row, (name, values) in enumerate(colour_by.items()):
        values = pd.Series(list(values), dtype=object)
        has = values.notna().to_numpy() & (values.astype(str) != "").to_numpy()
        for col, (method, xy) in enumerate((("UMAP (cosine)", um), ("PCA", pca))):
            ax = axes[row, col]
            if xy is None:
                ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
                ax.set_axis_off()
                continue
            shown = list(values[has])
            order = [v for v in DEFAULT_TASKS.get(name, sorted(set(shown))) if v in set(shown)]
            sns.scatterplot(x=xy[has, 0], y=xy[has, 1], hue=shown, hue_order=order, s=18, ax=ax, palette="deep")
            ax.set(title=f"{method}, coloured by {name} (n={int(has.sum())} with a {name} label)",
                   xlabel=f"{method.split()[0]} 1", ylabel=f"{method.split()[0]} 2")
            ax.legend(title=name, fontsize=8)
    fig.suptitle(f"Frozen all-MiniLM-L6-v2 embeddings (n={len(x)}, projected together)")
    fig.tight_layout()
    return save_figure(fig, path), note


def text_lengths(df, path: str | Path):
    """Histogram of words per text, stacked by topic."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    words = df["text"].str.split().str.len().rename("words")
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.histplot(x=words, hue=df["topic"] if "topic" in df else None, multiple="stack", binwidth=2, ax=ax)
    ax.set(title=f"Text length (n={len(df)})", xlabel="words per text", ylabel="number of texts")
    fig.tight_layout()
    return save_figure(fig, path)


def lr_comparison(results: dict[float, list[dict]], tasks: list[str], path: str | Path):
    """Held-out accuracy per epoch for several learning rates."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for lr, hist in results.items():
            ax.plot([r["epoch"] for r in hist], [r.get(f"test_acc_{task}", np.nan) for r in hist], label=f"lr={lr:g}")
        ax.set(title=f"{task}: held-out accuracy by learning rate", xlabel="epoch", ylabel="accuracy (fraction)", ylim=(0, 1.02))
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def forest(diffs, path: str | Path, title: str, label: str = "A - B"):
    """Paired differences with their 95 % CIs, one row per (pair, set): the answer to "does A beat B?" at a glance.

    `diffs` has columns `A`, `B`, `set`, `A_minus_B`, `ci_lo`, `ci_hi`, `p_adj` (`research.stats.paired_table`)."""
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(zip(diffs["A"], diffs["B"])))
    sets = list(dict.fromkeys(diffs["set"]))
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.4 * len(pairs), 0.45 * len(sets) + 1.6), sharey=True, squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        rows = diffs[(diffs["A"] == a) & (diffs["B"] == b)].set_index("set").reindex(sets)
        pos = np.arange(len(sets))[::-1]
        clear = rows["p_adj"] < 0.05  # what survives Holm's correction across the whole table
        for y, (_, r), c in zip(pos, rows.iterrows(), clear):
            ax.errorbar(r["A_minus_B"], y, xerr=[[r["A_minus_B"] - r["ci_lo"]], [r["ci_hi"] - r["A_minus_B"]]], fmt="o",
                        color="tab:red" if c else "tab:gray", capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(pos, sets, fontsize=8)
        ax.set_title(f"{a}\nminus {b}", fontsize=8)
        ax.set_xlabel(label, fontsize=8)
    fig.suptitle(title + " (95 % paired bootstrap CI; red: Holm-adjusted p < 0.05)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def effect_curves(effects, path: str | Path, title: str, panels: tuple[str, str] = ("few_task", "set")):
    """Differences against labels per class with their 95 % intervals as bands (the low-label effects table:
    columns comparison, mode, k, diff, lo, hi, p_adj and the `panels` columns); one panel per `panels` pair, one
    line per (comparison, mode); a filled marker where Holm's adjusted p < 0.05. Every panel shares one y-scale."""
    import textwrap

    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(zip(effects[panels[0]], effects[panels[1]])))
    cols = min(3, len(keys))
    rows_n = -(-len(keys) // cols)
    ks = list(dict.fromkeys(effects["k"]))  # in the table's order (4, 8, ..., all)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.4 * cols, 3.4 * rows_n), squeeze=False, sharey=True)
    for ax, (a, b) in zip(axes.flat, keys):
        sub = effects[(effects[panels[0]] == a) & (effects[panels[1]] == b)]
        for (comparison, mode), part in sub.groupby(["comparison", "mode"], sort=False):
            part = part.set_index("k").reindex([k for k in ks if k in set(part["k"])])
            xs = [ks.index(k) for k in part.index]
            line, = ax.plot(xs, part["diff"], marker="o", mfc="none", label=f"{comparison.replace('_', ' ')}, {mode}")
            ax.fill_between(xs, part["lo"].astype(float), part["hi"].astype(float), alpha=0.15, color=line.get_color())
            sig = part["p_adj"] < 0.05
            ax.plot([x for x, s in zip(xs, sig) if s], part["diff"][sig.to_numpy()], "o", color=line.get_color())
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(ks)), [str(k) for k in ks])
        ax.set_title("\n".join(textwrap.wrap(f"{a} few-labelled; scored on {b}", 40)), fontsize=8)
        ax.set_xlabel(f"{a} labels per class", fontsize=8)
        ax.set_ylabel("A − B (accuracy or macro-recall)", fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_axis_off()
    fig.suptitle(title + " (bands: 95 % CI over items and draws; filled: Holm-adjusted p < 0.05)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def tradeoff(scores, x_set: str, y_set: str, path: str | Path, title: str):
    """Each model's score on two sets with 95 % CIs (`research.external.score_table` rows): a trade-off at a glance."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    for model, part in scores.groupby("model", sort=False):
        px, py = part.set_index("set").loc[x_set], part.set_index("set").loc[y_set]
        ax.errorbar(px["estimate"], py["estimate"], xerr=[[px["estimate"] - px["ci_lo"]], [px["ci_hi"] - px["estimate"]]],
                    yerr=[[py["estimate"] - py["ci_lo"]], [py["ci_hi"] - py["estimate"]]], fmt="o", capsize=3, label=model)
    ax.set(xlabel=f"{x_set} ({scores.set_index('set').loc[x_set, 'metric'].iloc[0].replace('_', '-')})",
           ylabel=f"{y_set} ({scores.set_index('set').loc[y_set, 'metric'].iloc[0].replace('_', '-')})", title=title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def methods(comparison, path: str | Path):
    """The comparison table (`research.compare.compare`) at a glance: per task, each method's k-fold CV accuracy on
    the train split (mean ± sd over folds) and its held-out score with its 95 % bootstrap interval."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(comparison["task"]))
    names = list(dict.fromkeys(comparison["method"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 0.5 * len(names) + 1.6), sharey=True, squeeze=False)
    pos = np.arange(len(names))[::-1]
    for ax, task in zip(axes[0], tasks):
        rows = comparison[comparison["task"] == task].set_index("method").reindex(names)
        ax.errorbar(rows["cv_accuracy_mean"], pos + 0.12, xerr=rows["cv_accuracy_sd"], fmt="o", capsize=3, label="CV on train (mean ± sd)")
        err = np.abs(rows[["test_accuracy_lo", "test_accuracy_hi"]].to_numpy().T - rows["test_accuracy"].to_numpy())
        ax.errorbar(rows["test_accuracy"], pos - 0.12, xerr=err, fmt="D", color="tab:red", capsize=3, label="held-out (split=test, 95 % CI)")
        ax.set_yticks(pos, names, fontsize=8)
        ax.set(title=task, xlabel="accuracy (fraction)", xlim=(0, 1.02))
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Baselines vs single- vs multi-task on the same frozen embeddings", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
