"""Using a trained checkpoint: embed texts as it was trained (`embed_for`), label them (`label`), score a labelled file
(`evaluate_csv`). `Predictions` is the one place output rows are made, for `mtl predict` on a few sentences, the
corpus shards and the Ray actors alike: labels, probabilities, and "empty text" for an empty line.

Needs numpy only (heads run in numpy; the ONNX backend has no torch), so `mtl predict` starts fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mtl import paths
from mtl.checkpoint import Checkpoint, check_compatible, load_checkpoint
from mtl.engine.embed import EmbedSpec
from mtl.errors import MTLError
from mtl.tasks import Tasks

if TYPE_CHECKING:
    import pyarrow as pa

EMPTY = "empty text"  # the error of a row whose text is empty: no prediction, the row stays in place
DECIMALS = 4  # probabilities in text outputs (table, CSV, JSONL)


def load_model(model: str | Path | None = None) -> Checkpoint:
    """Load a checkpoint (numpy only; default: saved_models/multi_task_model.safetensors)."""
    return load_checkpoint(model or paths.CHECKPOINT)


def embed_for(ckpt: Checkpoint, model_path: str | Path, texts: list[str], spec: EmbedSpec | None = None, progress=None):
    """Embed texts as the checkpoint expects: its backbone and layers, after checking they fit together.

    The backend: `devices.checkpoint_backend` (with `auto`, a checkpoint trained on int8 vectors gets int8 again).
    """
    from dataclasses import replace

    from mtl.engine.backbone import resolve_backbone
    from mtl.engine.devices import checkpoint_backend
    from mtl.engine.embed import encode

    spec = spec or EmbedSpec()
    backbone = resolve_backbone(ckpt.backbone)
    spec = replace(spec, backbone=backbone.name, backend=checkpoint_backend(spec.backend, ckpt.meta.get("backend")), layers=ckpt.layers)
    check_compatible(ckpt, model_path, backbone.identity, ckpt.meta.get("embedding_dim"))  # before paying for encoding
    x, stats = encode(texts, spec, progress=progress)
    if len(texts):
        check_compatible(ckpt, model_path, backbone.identity, int(x.shape[1]))
    return x, stats


@dataclass
class Predictions:
    """Per input text, in order: whether it had text, each task's class probabilities (with a checkpoint) and/or its vector."""

    texts: list[str]
    ok: np.ndarray  # False for an empty text: no prediction
    tasks: Tasks
    probs: dict[str, np.ndarray]  # task -> (n, labels), zeros where not ok
    x: np.ndarray | None = None  # (n, dim) embeddings, zeros where not ok

    def labels(self, task: str) -> list[str | None]:
        best = self.probs[task].argmax(1)
        return [self.tasks[task][b] if k else None for b, k in zip(best, self.ok)]

    def columns(self, sources: bool = True, with_embeddings: bool = False) -> list[str]:
        """The output columns, in order (rows, CSV, JSONL and Parquet alike): source, text, each task's label and
        probabilities, the vector, and `error` ("empty text", else missing)."""
        return [*(["source"] if sources else []), "text", *(c for t in self.tasks for c in (t, f"{t}_probs")),
                *(["embedding"] if with_embeddings and self.x is not None else []), "error"]

    def rows(self, sources: list[str] | None = None, with_embeddings: bool = False) -> list[dict]:
        """One dict per text (table, CSV and JSONL outputs): labels, rounded probabilities, `error` only for an empty text."""
        values: dict[str, list] = {"source": sources, "text": self.texts, "error": [None if k else EMPTY for k in self.ok]}
        for task, names in self.tasks.items():
            values[task] = self.labels(task)
            values[f"{task}_probs"] = [{lab: round(float(p), DECIMALS) for lab, p in zip(names, probs)} if k else None
                                       for probs, k in zip(self.probs[task], self.ok)]
        if with_embeddings and self.x is not None:
            values["embedding"] = [[float(v) for v in x] if k else None for x, k in zip(self.x, self.ok)]
        cols = self.columns(sources is not None, with_embeddings)
        return [{c: values[c][i] for c in cols if c != "error" or not k} for i, k in enumerate(self.ok)]

    def table(self, sources: list[str], with_embeddings: bool = False) -> pa.Table:
        """The same rows as an Arrow table (Parquet shards): probabilities as a struct per task, full precision."""
        import pyarrow as pa

        missing = pa.array(~self.ok)
        values: dict[str, pa.Array] = {"source": pa.array(sources, pa.string()), "text": pa.array(self.texts, pa.string()),
                                       "error": pa.array([None if k else EMPTY for k in self.ok], pa.string())}
        for task, names in self.tasks.items():
            values[task] = pa.array(self.labels(task), pa.string())
            fields = [pa.array(self.probs[task][:, j], pa.float32()) for j in range(len(names))]
            values[f"{task}_probs"] = pa.StructArray.from_arrays(fields, names=list(names), mask=missing)
        if with_embeddings and self.x is not None:
            values["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(self.x.reshape(-1)), self.x.shape[1], mask=missing)
        return pa.table({c: values[c] for c in self.columns(True, with_embeddings)})


def to_jsonl(rows: list[dict]) -> str:
    """One JSON object per row (`Predictions.rows`): `mtl predict --format jsonl` and JSONL shards alike."""
    import json

    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def label(texts: list[str], encode: Callable[[list[str]], np.ndarray], ckpt: Checkpoint | None = None, dim: int = 384) -> Predictions:
    """Embed the non-empty texts with `encode` and, with a checkpoint, run its heads: the one prediction path."""
    from mtl.heads import predict_proba

    ok = np.array([bool(t.strip()) for t in texts], dtype=bool)
    good = [t for t, k in zip(texts, ok) if k]
    x_good = encode(good) if good else None
    dim = x_good.shape[1] if x_good is not None else int(ckpt.meta.get("embedding_dim", dim)) if ckpt is not None else dim
    x = np.zeros((len(texts), dim), dtype=np.float32)
    if x_good is not None:
        x[ok] = x_good
    tasks = ckpt.tasks if ckpt is not None else {}
    probs = {t: np.zeros((len(texts), len(labels)), dtype=np.float32) for t, labels in tasks.items()}
    if ckpt is not None and x_good is not None:
        for t, p in predict_proba(ckpt.state, tasks, x_good).items():
            probs[t][ok] = p
    return Predictions(texts, ok, tasks, probs, x)


def predictions(texts: list[str], model: str | Path | None = None, spec: EmbedSpec | None = None) -> Predictions:
    """Label `texts` with a checkpoint (default: saved_models/...), embedded as it was trained."""
    ckpt = load_model(model)
    return label(texts, lambda good: embed_for(ckpt, model or paths.CHECKPOINT, good, spec)[0], ckpt)


def predict(texts: list[str], model: str | Path | None = None, spec: EmbedSpec | None = None) -> list[dict]:
    """One row per input text, in order: label and probabilities per task (or an error for empty text)."""
    return predictions(texts, model, spec).rows()


def evaluate_csv(data: str | Path, model: str | Path | None = None, spec: EmbedSpec | None = None, split: str | None = None) -> dict:
    """Score every task whose column is in `data` (rows without a label skipped for that task).

    `split="test"` scores only that split's rows. Returns {"metrics", "frame", "probs", "tasks"}: the
    metrics per task, the rows and class probabilities behind them (for confusion matrices and error
    lists), and the checkpoint's tasks.
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
