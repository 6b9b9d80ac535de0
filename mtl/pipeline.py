"""The end-to-end steps the CLI and the notebooks share: train from CSVs, evaluate a file, predict."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.embed import EmbedSpec
from mtl.errors import MTLError
from mtl.tasks import DEFAULT_TASKS, Tasks


@dataclass
class Encoded:
    """A labelled table with its embeddings and label ids (-1 = no label)."""

    frame: "object"  # pandas.DataFrame with text, line, task columns, domain, split, source
    x: np.ndarray
    y: dict[str, np.ndarray]

    def rows(self, mask: np.ndarray) -> "Encoded":
        return Encoded(self.frame[mask].reset_index(drop=True), self.x[mask], {t: v[mask] for t, v in self.y.items()})

    def split(self) -> tuple["Encoded", "Encoded"]:
        """(train rows, held-out `split=test` rows)."""
        is_train = (self.frame["split"] == "train").to_numpy()
        return self.rows(is_train), self.rows(~is_train)


def load_encoded(data: list[str | Path], tasks: Tasks = DEFAULT_TASKS, spec: EmbedSpec | None = None, verbose: bool = True):
    """Load, validate and embed one or more CSVs (files may carry different task columns).

    Returns (Encoded, EncodeStats); files without a `split` column count as train rows.
    """
    import pandas as pd

    from mtl.data import label_ids, load_dataset
    from mtl.embed import encode

    frames = []
    for path in data:
        df = load_dataset(path, tasks)
        df["source"] = Path(path).name
        if "split" not in df.columns:
            df["split"] = "train"
        if "domain" not in df.columns:  # a file without domains is one domain (for leave-one-domain-out CV)
            df["domain"] = Path(path).stem
        frames.append(df)
    frame = pd.concat(frames, ignore_index=True)
    x, stats = encode(list(frame["text"]), spec, verbose=verbose)
    return Encoded(frame, x, label_ids(frame, tasks)), stats


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def train_from_csv(
    data: list[str | Path] | None = None,
    tasks: Tasks = DEFAULT_TASKS,
    config=None,
    spec: EmbedSpec | None = None,
    out: str | Path | None = None,
    metrics_out: str | Path | None = None,
    log_every: int = 10,
    verbose: bool = True,
    record: dict | None = None,
) -> dict:
    """Train heads on the train rows, score train and held-out (split=test) rows, save checkpoint + metrics.

    `config` (TrainConfig) says how the heads train, `spec` (EmbedSpec) how texts are embedded.
    `record` (e.g. `{"tune": ...}`: the choice and CV table of `--tune`) is stored in the checkpoint
    metadata and metrics.json as is.
    Returns a dict with `history`, `metrics` (train/test, per task, and per source) and `meta`.
    """
    from dataclasses import replace

    from mtl.backbone import resolve_backbone
    from mtl.checkpoint import save_checkpoint
    from mtl.encoders import resolve_device
    from mtl.evaluate import evaluate
    from mtl.heads import predict_proba, state_to_numpy
    from mtl.train import TrainConfig, train

    config = config or TrainConfig()
    config = replace(config, device=resolve_device(config.device))  # the caller's config is left as it was
    spec = spec or EmbedSpec(device=config.device)
    data = [Path(p) for p in (data or [paths.DATA_CSV])]
    enc, stats = load_encoded(data, tasks, spec, verbose)
    tr, te = enc.split()
    if len(tr.x) == 0:
        raise MTLError(f"{', '.join(map(str, data))}: no rows with split=train")
    for task in tasks:
        if not (tr.y[task] >= 0).any():
            print(f"warning: no training labels for task {task!r}; its head stays untrained", file=sys.stderr)

    def report(row: dict) -> None:
        if verbose and log_every and (row["epoch"] % log_every == 0 or row["epoch"] == 1):
            accs = "  ".join(
                f"{s} {t} {row[f'{s}_acc_{t}']:.3f}" for s in ("train", "test") for t in tasks if f"{s}_acc_{t}" in row
            )
            print(f"epoch {row['epoch']:>4}/{config.epochs}  loss {row['train_loss']:.4f}  {accs}", file=sys.stderr)

    prior = None
    if config.prior == "descriptions":
        from mtl.prior import prototypes

        prior = prototypes(tasks, spec)
    heads, history, log_vars = train(tr.x, tr.y, tasks, config, te.x if len(te.x) else None, te.y if len(te.x) else None, report, prior)
    state = state_to_numpy(heads)
    metrics: dict = {"train": evaluate(predict_proba(state, tasks, tr.x), tr.y, tasks)}
    if len(te.x):
        metrics["test"] = evaluate(predict_proba(state, tasks, te.x), te.y, tasks)
    if enc.frame["source"].nunique() > 1:
        metrics["by_source"] = {}
        for source in enc.frame["source"].unique():
            for split, part in (("train", tr), ("test", te)):
                sel = (part.frame["source"] == source).to_numpy()
                if sel.any():
                    sub = part.rows(sel)
                    metrics["by_source"][f"{source}:{split}"] = evaluate(predict_proba(state, tasks, sub.x), sub.y, tasks)
    backbone = resolve_backbone(spec.backbone)
    meta = {
        "tasks": tasks,
        "backbone": backbone.name,
        "backbone_identity": backbone.identity,
        "backend": stats.mode,
        "layers": stats.layers,
        "embedding_dim": int(enc.x.shape[1]),
        "config": config.as_dict(),
        "data": {str(p): file_digest(p) for p in data},
        "n_train": int(len(tr.x)),
        "n_test": int(len(te.x)),
        "metrics": metrics,
        "learned_log_vars": log_vars,
        **(record or {}),
    }
    save_checkpoint(out or paths.CHECKPOINT, state, meta)
    from mtl.atomic import write_text

    write_text(metrics_out or paths.METRICS_JSON, json.dumps({"metrics": metrics, "meta": {k: v for k, v in meta.items() if k != "metrics"}, "history": history}, indent=2))
    return {"history": history, "metrics": metrics, "meta": meta, "state": state}


def load_model(model: str | Path | None = None):
    """Load a checkpoint (numpy only)."""
    from mtl.checkpoint import load_checkpoint

    return load_checkpoint(model or paths.CHECKPOINT)


def embed_for(ckpt, model_path, texts: list[str], spec: EmbedSpec | None = None):
    """Embed texts as the checkpoint expects: its backbone and layers, after checking they fit together.

    With `backend="auto"`, a checkpoint trained on int8 vectors gets int8 again; any other gets
    this machine's default (fp32-exact on every CPU).
    """
    from dataclasses import replace

    from mtl.backbone import DEFAULT_BACKBONE, resolve_backbone
    from mtl.checkpoint import check_compatible
    from mtl.embed import encode

    spec = spec or EmbedSpec()
    backbone = resolve_backbone(ckpt.meta.get("backbone", DEFAULT_BACKBONE))
    backend = "int8" if spec.backend == "auto" and ckpt.meta.get("backend") == "onnx-int8" else spec.backend
    spec = replace(spec, backbone=backbone.name, backend=backend, layers=ckpt.meta.get("layers", "last"))
    check_compatible(ckpt, model_path, backbone.identity, ckpt.meta.get("embedding_dim"))  # before paying for encoding
    x, stats = encode(texts, spec)
    if len(texts):
        check_compatible(ckpt, model_path, backbone.identity, int(x.shape[1]))
    return x, stats


def predict(texts: list[str], model: str | Path | None = None, spec: EmbedSpec | None = None) -> list[dict]:
    """One row per input text, in order: label and probabilities per task (or an error for empty text)."""
    from mtl.heads import predict_proba

    ckpt = load_model(model)
    tasks = ckpt.tasks
    good = [i for i, t in enumerate(texts) if t.strip()]
    x, _ = embed_for(ckpt, model or paths.CHECKPOINT, [texts[i] for i in good], spec)
    probs = predict_proba(ckpt.state, tasks, x) if good else {}
    rows: list[dict] = []
    pos = {i: j for j, i in enumerate(good)}
    for i, text in enumerate(texts):
        row: dict = {"text": text}
        if i in pos:
            for task, labels in tasks.items():
                p = probs[task][pos[i]]
                row[task] = labels[int(p.argmax())]
                row[f"{task}_probs"] = {lab: round(float(v), 4) for lab, v in zip(labels, p)}
        else:
            for task in tasks:
                row[task] = None
                row[f"{task}_probs"] = None
            row["error"] = "empty text"
        rows.append(row)
    return rows


def evaluate_csv(data: str | Path, model: str | Path | None = None, spec: EmbedSpec | None = None, split: str | None = None) -> dict:
    """Score every task whose column is in `data` (rows without a label skipped for that task).

    `split="test"` scores only that split's rows. Returns {"metrics", "frame", "probs", "tasks"}:
    the metrics per task, the rows and class probabilities behind them (for confusion matrices
    and error lists), and the checkpoint's tasks.
    """
    from mtl.data import label_ids, load_dataset
    from mtl.evaluate import evaluate
    from mtl.heads import predict_proba

    ckpt = load_model(model)
    df = load_dataset(data, ckpt.tasks)
    if split is not None:
        if "split" not in df.columns:
            raise MTLError(f"{data}: no split column, so no {split!r} rows")
        df = df[df["split"] == split].reset_index(drop=True)
    x, _ = embed_for(ckpt, model or paths.CHECKPOINT, list(df["text"]), spec)
    probs = predict_proba(ckpt.state, ckpt.tasks, x)
    return {"metrics": evaluate(probs, label_ids(df, ckpt.tasks), ckpt.tasks), "frame": df, "probs": probs, "tasks": ckpt.tasks}
