"""One small classification head per task on the frozen embedding.

Training uses the torch module; inference (`logits`) runs the same weights in
numpy, so `mtl predict` never imports torch.
"""

from __future__ import annotations

import numpy as np

from mtl.tasks import Tasks

TRUNK = "trunk"  # state-dict prefix of the shared layer; a task may not be called this


def build_heads(tasks: Tasks, dim: int, hidden: int = 0, dropout: float = 0.1, trunk_hidden: int = 0):
    """`ModuleDict` task -> head: linear, or Linear-ReLU-Dropout-Linear when `hidden` > 0.

    With `trunk_hidden` > 0 a shared `trunk` (Linear dim->H, ReLU, Dropout) comes first and every
    head reads its H-d output, so the tasks' losses meet in the trunk's weights; run it with `forward`.
    """
    import torch.nn as nn

    from mtl.errors import MTLError

    if trunk_hidden > 0 and TRUNK in tasks:
        raise MTLError(f"--share trunk: a task may not be named {TRUNK!r}")
    width = trunk_hidden if trunk_hidden > 0 else dim

    def head(n_out: int) -> nn.Sequential:
        if hidden > 0:
            return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))
        return nn.Sequential(nn.Linear(width, n_out))

    modules = {TRUNK: nn.Sequential(nn.Linear(dim, trunk_hidden), nn.ReLU(), nn.Dropout(dropout))} if trunk_hidden > 0 else {}
    return nn.ModuleDict({**modules, **{task: head(len(labels)) for task, labels in tasks.items()}})


def forward(heads, x, tasks) -> dict:
    """Torch logits per task; the trunk (if any) runs once per batch for all heads."""
    h = heads[TRUNK](x) if TRUNK in heads else x
    return {t: heads[t](h) for t in tasks}


def state_to_numpy(heads) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in heads.state_dict().items()}


def _chain(state: dict[str, np.ndarray], prefix: str, h: np.ndarray, relu_last: bool) -> np.ndarray:
    """Linear layers `prefix.<i>` in order with ReLU between them (and after the last if `relu_last`)."""
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith(f"{prefix}.")})
    for n, i in enumerate(layers):
        h = h @ state[f"{prefix}.{i}.weight"].T + state[f"{prefix}.{i}.bias"]
        if relu_last or n < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def has_trunk(state: dict[str, np.ndarray]) -> bool:
    return f"{TRUNK}.0.weight" in state


def logits(state: dict[str, np.ndarray], task: str, x: np.ndarray) -> np.ndarray:
    """Forward pass of one head in numpy (linear layers with ReLU between; dropout is off at inference).

    A shared trunk, when the state has one (checkpoints from before it have none), runs first.
    """
    h = np.asarray(x, dtype=np.float32)  # no copy when it is float32 already
    if has_trunk(state):
        h = _chain(state, TRUNK, h, relu_last=True)
    return _chain(state, task, h, relu_last=False)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_proba(state: dict[str, np.ndarray], tasks: Tasks, x: np.ndarray) -> dict[str, np.ndarray]:
    """Class probabilities per task, columns in the task's label order."""
    if has_trunk(state):  # run the shared trunk once, not once per task
        x = _chain(state, TRUNK, np.asarray(x, dtype=np.float32), relu_last=True)
        state = {k: v for k, v in state.items() if not k.startswith(f"{TRUNK}.")}
    return {task: softmax(logits(state, task, x)) for task in tasks}
