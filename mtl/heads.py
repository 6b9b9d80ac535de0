"""One small classification head per task on the frozen embedding.

Training uses the torch module; inference (`logits`) runs the same weights in
numpy, so `mtl predict` never imports torch.
"""

from __future__ import annotations

import numpy as np

from mtl.tasks import Tasks


def build_heads(tasks: Tasks, dim: int, hidden: int = 0, dropout: float = 0.1):
    """`ModuleDict` task -> head: linear, or Linear-ReLU-Dropout-Linear when `hidden` > 0."""
    import torch.nn as nn

    def head(n_out: int) -> nn.Sequential:
        if hidden > 0:
            return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))
        return nn.Sequential(nn.Linear(dim, n_out))

    return nn.ModuleDict({task: head(len(labels)) for task, labels in tasks.items()})


def state_to_numpy(heads) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in heads.state_dict().items()}


def logits(state: dict[str, np.ndarray], task: str, x: np.ndarray) -> np.ndarray:
    """Forward pass of one head in numpy (linear layers with ReLU between; dropout is off at inference)."""
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith(f"{task}.")})
    h = x.astype(np.float32)
    for n, i in enumerate(layers):
        h = h @ state[f"{task}.{i}.weight"].T + state[f"{task}.{i}.bias"]
        if n < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_proba(state: dict[str, np.ndarray], tasks: Tasks, x: np.ndarray) -> dict[str, np.ndarray]:
    """Class probabilities per task, columns in the task's label order."""
    return {task: softmax(logits(state, task, x)) for task in tasks}
