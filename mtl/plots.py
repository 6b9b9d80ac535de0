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


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


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


def confusion(cm: list[list[int]], labels: list[str], task: str, path: str | Path, split: str = "test"):
    """Seaborn heatmap of counts, true labels on rows."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2, 1.4 * len(labels) + 1.5))
    sns.heatmap(np.array(cm), annot=True, fmt="d", cmap="Blues", xticklabels=labels, yticklabels=labels, cbar=False, ax=ax)
    ax.tick_params(axis="y", labelrotation=0)
    n = int(np.sum(cm))
    acc = np.trace(np.array(cm)) / max(n, 1)
    ax.set(xlabel="predicted label", ylabel="true label", title=f"{task}: {split} split, n={n}, accuracy {acc:.3f}")
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
    """UMAP and PCA of the frozen embeddings, one row per colouring (e.g. topic, sentiment)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    um, pca, note = project_2d(x, seed)
    fig, axes = plt.subplots(len(colour_by), 2, figsize=(11, 4.5 * len(colour_by)), squeeze=False)
    for row, (name, values) in enumerate(colour_by.items()):
        for col, (method, xy) in enumerate((("UMAP (cosine)", um), ("PCA", pca))):
            ax = axes[row, col]
            if xy is None:
                ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
                ax.set_axis_off()
                continue
            order = [v for v in DEFAULT_TASKS.get(name, sorted(set(values))) if v in set(values)]
            sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=values, hue_order=order, s=18, ax=ax, palette="deep")
            ax.set(title=f"{method}, coloured by {name}", xlabel=f"{method.split()[0]} 1", ylabel=f"{method.split()[0]} 2")
            ax.legend(title=name, fontsize=8)
    fig.suptitle(f"Frozen all-MiniLM-L6-v2 embeddings (n={len(x)})")
    fig.tight_layout()
    return save_figure(fig, path), note


def text_lengths(df, path: str | Path, by: str = "topic"):
    """Histogram of words per text, split by one label column."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    words = df["text"].str.split().str.len().rename("words")
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.histplot(x=words, hue=df[by] if by in df else None, multiple="stack", binwidth=2, ax=ax)
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


def sharing_scores(scores, path: str | Path):
    """Each sharing mode's score on each set with its 95 % bootstrap CI (seed-0 model), multi- next to single-task."""
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(scores["set"]))
    methods = list(dict.fromkeys(scores["method"]))
    fig, axes = plt.subplots(1, len(sets), figsize=(2.6 * len(sets), 3.6), squeeze=False, sharey=False)
    for ax, name in zip(axes[0], sets):
        rows = scores[scores["set"] == name].set_index("method").loc[methods]
        pos = np.arange(len(methods))
        colours = ["tab:blue" if m.startswith("multi") else "tab:orange" for m in methods]
        err = np.vstack([rows["seed0"] - rows["seed0_ci_lo"], rows["seed0_ci_hi"] - rows["seed0"]])
        for i in pos:
            ax.errorbar(i, rows["seed0"].iloc[i], yerr=err[:, i : i + 1], fmt="o", color=colours[i], capsize=3)
        ax.set_xticks(pos, [m.replace("-task ", "\n") for m in methods], fontsize=7, rotation=90)
        ax.set_title(f"{name}\n({rows['metric'].iloc[0].replace('_', '-')}, n={rows['n'].iloc[0]})", fontsize=8)
    axes[0][0].set_ylabel("score, 95 % bootstrap CI (seed 0)")
    fig.suptitle("Sharing modes: multi-task (blue) vs single-task (orange), trained on curated train only", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
