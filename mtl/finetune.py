"""Optional: unfreeze the top N transformer layers (small learning rate) together with the task heads.

The lower 6-N layers get no gradient; only the top layers and the heads train. Pooling is the
frozen path's (`layers`: the last layer, or the average of layers A..B), and the heads can start
from heads already trained on the frozen features ("linear probe, then fine-tune", Kumar et al.
2022), so the backbone starts moving from a good classifier instead of a random one. The result is
a *different backbone*, so its embeddings stay in memory and never enter the frozen cache.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass

import numpy as np

from mtl.tasks import Tasks


@dataclass(frozen=True)
class Adapt:
    """Backbone adaptation for sharing mode (b): fixed beforehand, not tuned on any test set."""

    unfreeze: int = 2  # top transformer layers that train (of 6)
    epochs: int = 3
    lr_backbone: float = 5e-5
    lr_heads: float = 1e-4  # the heads start from ones trained on the frozen features


def finetune(texts: list[str], y: dict[str, np.ndarray], tasks: Tasks, unfreeze: int = 2, epochs: int = 2, lr_backbone: float = 3e-5,
             lr_heads: float = 1e-3, batch_size: int = 32, balance: bool = True, seed: int = 0, device: str = "cpu",
             layers: str = "last", init_heads=None, verbose: bool = True):
    """Train the top `unfreeze` layers + heads on `texts`; return (model, heads, span, seconds).

    `init_heads`: torch heads trained on the frozen `layers` features to start from (copied, not changed).
    """
    import torch
    import torch.nn.functional as F

    from mtl.backbone import num_layers, parse_layers, resolve_backbone, torch_embedding
    from mtl.embed import backbone_text
    from mtl.heads import build_heads, forward
    from mtl.train import class_weights, seed_everything

    seed_everything(seed)
    texts = [backbone_text(t) for t in texts]  # read the text as the frozen path does
    backbone = resolve_backbone()
    span = parse_layers(layers, num_layers(backbone))
    model = load_sentence_transformer(backbone.path, device)
    bert = model[0].auto_model
    for p in bert.parameters():
        p.requires_grad = False
    for layer in bert.encoder.layer[len(bert.encoder.layer) - unfreeze :]:
        for p in layer.parameters():
            p.requires_grad = True
    dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    heads = copy.deepcopy(init_heads).to(device) if init_heads is not None else build_heads(tasks, dim).to(device)
    opt = torch.optim.AdamW([{"params": [p for p in bert.parameters() if p.requires_grad], "lr": lr_backbone},
                             {"params": heads.parameters(), "lr": lr_heads}])
    Y = {t: torch.as_tensor(v) for t, v in y.items()}
    weights = {t: class_weights(Y[t], len(labels)) if balance else None for t, labels in tasks.items()}
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        heads.train()
        perm = torch.randperm(len(texts), generator=gen)
        total = 0.0
        for b in range(0, len(texts), batch_size):
            idx = perm[b : b + batch_size]
            emb = torch_embedding(model, [texts[i] for i in idx], span)
            loss = torch.zeros(())
            out = forward(heads, emb, tasks)  # through the shared trunk when the heads have one
            for t in tasks:
                yt = Y[t][idx]
                if (yt >= 0).any():
                    loss = loss + F.cross_entropy(out[t], yt, weight=weights[t], ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if verbose:
            print(f"fine-tune epoch {epoch + 1}/{epochs}: loss {total / len(texts):.4f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    model.eval()
    heads.eval()
    return model, heads, span, time.perf_counter() - start


def load_sentence_transformer(path: str, device: str = "cpu"):
    """The backbone as a trainable SentenceTransformer (tokenizer + transformer + pooling modules)."""
    import os

    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return SentenceTransformer(path, device=device)


def predict_finetuned(model, heads, texts: list[str], tasks: Tasks, span: tuple[int, int] | None = None, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Class probabilities per task from a fine-tuned backbone + heads (same pooling as in training)."""
    import torch

    from mtl.backbone import torch_embedding
    from mtl.embed import backbone_text
    from mtl.encoders import length_batches
    from mtl.heads import forward

    texts = [backbone_text(t) for t in texts]
    out = {t: np.empty((len(texts), len(labels)), dtype=np.float32) for t, labels in tasks.items()}
    with torch.inference_mode():
        for idx in length_batches([len(t) for t in texts], max_rows=batch_size):  # similar lengths together: little padding
            emb = torch_embedding(model, [texts[i] for i in idx], span)
            logits = forward(heads, emb, tasks)
            for t in tasks:
                out[t][idx] = torch.softmax(logits[t], 1).cpu().numpy()
    return out
