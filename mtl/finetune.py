"""Optional: unfreeze the top N transformer layers (small learning rate) together with the task heads.

The lower 6-N layers stay frozen, so their outputs are computed under `no_grad`; only the top
layers, the pooling and the heads train. The result is a *different backbone*, so its
embeddings are kept in memory for the caller and never written to the frozen backbone's cache.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from mtl.tasks import Tasks


def finetune(texts: list[str], y: dict[str, np.ndarray], tasks: Tasks, unfreeze: int = 2, epochs: int = 2, lr_backbone: float = 2e-5,
             lr_heads: float = 1e-3, batch_size: int = 32, balance: bool = True, seed: int = 0, device: str = "cpu", verbose: bool = True):
    """Train top `unfreeze` layers + linear heads on `texts`; return (model, heads, seconds)."""
    import torch
    import torch.nn.functional as F

    from mtl.backbone import TorchEncoder, resolve_backbone
    from mtl.embed import backbone_text
    from mtl.heads import build_heads
    from mtl.train import class_weights, seed_everything

    seed_everything(seed)
    texts = [backbone_text(t) for t in texts]  # read the text as the frozen path does
    st = TorchEncoder(resolve_backbone(), "torch-fp32", device).model
    bert = st[0].auto_model
    layers = bert.encoder.layer
    for p in bert.parameters():
        p.requires_grad = False
    for layer in layers[len(layers) - unfreeze :]:
        for p in layer.parameters():
            p.requires_grad = True
    dim = (getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)()
    heads = build_heads(tasks, dim).to(device)
    opt = torch.optim.AdamW([{"params": [p for p in bert.parameters() if p.requires_grad], "lr": lr_backbone},
                             {"params": heads.parameters(), "lr": lr_heads}])
    Y = {t: torch.as_tensor(v) for t, v in y.items()}
    weights = {t: class_weights(Y[t], len(labels)) if balance else None for t, labels in tasks.items()}
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        st.train()
        perm = torch.randperm(len(texts), generator=gen)
        total = 0.0
        for b in range(0, len(texts), batch_size):
            idx = perm[b : b + batch_size]
            feats = getattr(st, "preprocess", st.tokenize)([texts[i] for i in idx])
            feats = {k: v.to(device) if hasattr(v, "to") else v for k, v in feats.items()}
            emb = F.normalize(st(feats)["sentence_embedding"], dim=1)
            loss = torch.zeros(())
            for t in tasks:
                yt = Y[t][idx]
                if (yt >= 0).any():
                    loss = loss + F.cross_entropy(heads[t](emb), yt, weight=weights[t], ignore_index=-1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if verbose:
            print(f"fine-tune epoch {epoch + 1}/{epochs}: loss {total / len(texts):.4f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    st.eval()
    heads.eval()
    return st, heads, time.perf_counter() - start


def predict_finetuned(model, heads, texts: list[str], tasks: Tasks, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Class probabilities per task from a fine-tuned backbone + heads."""
    import torch

    from mtl.embed import backbone_text

    with torch.inference_mode():
        x = model.encode([backbone_text(t) for t in texts], batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
        return {t: torch.softmax(heads[t](x), 1).numpy() for t in tasks}
