"""The label descriptions as vectors: the zero-shot classifier, and the prior a linear head can start from.

`prototypes` embeds each task's label descriptions (`tasks.LABEL_DESCRIPTIONS`, else the label name)
with the same `EmbedSpec` as the data. Zero-shot predicts the most similar description. With
`TrainConfig.prior = "descriptions"` a linear head is W = s·P + Δ: it starts as the zero-shot classifier
(Δ = 0), learns one scale s per task, and weight decay shrinks Δ, so it pulls the head toward zero-shot
instead of toward zero (a Gaussian prior centred on the descriptions). After training, s·P is folded
into the plain linear head, so checkpoints and numpy inference do not change.
"""

from __future__ import annotations

import math

import numpy as np

from mtl.engine.embed import EmbedSpec
from mtl.errors import MTLError
from mtl.tasks import LABEL_DESCRIPTIONS, Tasks

# Starting scale of the cosine logits: cosines to the descriptions differ by ~0.05-0.2 here, so s = 10
# starts with logit gaps of ~0.5-2 (a soft, not a saturated, zero-shot classifier); s is then learned.
INIT_SCALE = 10.0


def descriptions(tasks: Tasks) -> dict[str, list[str]]:
    """Per task, one description per label (the label name where none is written)."""
    return {task: [LABEL_DESCRIPTIONS.get(task, {}).get(lab, lab) for lab in labels] for task, labels in tasks.items()}


def prototypes(tasks: Tasks, spec: EmbedSpec | None = None) -> dict[str, np.ndarray]:
    """task -> (n_labels, dim) description vectors, embedded like the data (same spec: backend, layers)."""
    from mtl.engine.embed import encode

    return {task: encode(desc, spec, verbose=False)[0] for task, desc in descriptions(tasks).items()}


def zero_shot(x: np.ndarray, protos: np.ndarray) -> np.ndarray:
    """Label ids: the description with the highest cosine (embeddings are L2-normalised)."""
    return (x @ protos.T).argmax(1)


def wrap(heads, tasks: Tasks, protos: dict[str, np.ndarray] | None, device):
    """`heads` (linear, from `heads.build_heads`) as W = s·P + Δ per task, Δ = 0; `fold(...)` undoes it."""
    import torch
    import torch.nn as nn

    if protos is None or any(t not in protos for t in tasks):
        raise MTLError("prior 'descriptions': training needs the label-description vectors (mtl.prior.prototypes)")

    class PriorLinear(nn.Module):
        def __init__(self, linear: nn.Linear, p: np.ndarray):
            super().__init__()
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
            self.linear = linear
            self.register_buffer("protos", torch.as_tensor(p, dtype=torch.float32, device=device))
            self.log_scale = nn.Parameter(torch.tensor(math.log(INIT_SCALE), device=device))

        def forward(self, x):
            return self.linear(x) + self.log_scale.exp() * (x @ self.protos.T)

    return nn.ModuleDict({t: PriorLinear(heads[t][0], protos[t]) for t in tasks})


def fold(wrapped, heads):
    """Write s·P + Δ back into the plain linear `heads` the wrapper was made from; returns `heads`."""
    import torch

    with torch.no_grad():
        for t, m in wrapped.items():
            heads[t][0].weight.copy_(m.linear.weight + m.log_scale.exp() * m.protos)
    return heads


def is_scale(name: str) -> bool:
    """Parameter names of the learned scales (not weight-decayed)."""
    return name.endswith("log_scale")
