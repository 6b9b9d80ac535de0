"""Optional: unfreeze the top N transformer layers (small learning rate) together with the task heads.

The lower 6-N layers get no gradient; only the top layers and the heads train. Pooling is the
frozen path's (`layers`: the last layer, or the average of layers A..B), and the heads can start
from heads already trained on the frozen features ("linear probe, then fine-tune", Kumar et al.
2022), so the backbone starts moving from a good classifier instead of a random one. The result is
a *different backbone*, so its embeddings stay in memory and never enter the frozen cache.

The frozen lower layers give the same output every epoch and for every adapted model, so `Prefix`
runs them once per text (eval mode: a frozen layer is a fixed feature extractor, no dropout) and
training runs only the top layers on the stored states: with 2 of 6 layers trainable, about a third
of the forward work per epoch. A test checks the result equals the whole backbone's.
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


class Prefix:
    """The frozen lower layers' hidden states per text (unpadded), computed once, read every epoch.

    For a model whose top `unfreeze` layers train and whose embedding pools `layers`: keeps the output
    of layer `frozen` (where the trainable layers start) and of any frozen layer the pooling `span`
    averages. One Prefix serves every model adapted with the same `unfreeze` and `layers`, since their
    lower layers are the unchanged backbone's.
    """

    def __init__(self, unfreeze: int, layers: str = "last", device: str = "cpu"):
        from mtl.backbone import resolve_backbone

        self.frozen, self.span = self.shape(unfreeze, layers)
        self.n_layers = self.frozen + unfreeze
        lo, hi = self.span or (self.n_layers, self.n_layers)
        self.keep = sorted({self.frozen} | {i for i in range(lo, hi + 1) if i <= self.frozen})
        self.model = load_sentence_transformer(resolve_backbone().path, device).eval()
        self.states: dict[str, dict[int, object]] = {}

    @staticmethod
    def shape(unfreeze: int, layers: str) -> tuple[int, tuple[int, int] | None]:
        """(frozen layers, pooled span) of a model adapting its top `unfreeze` layers and pooling `layers`."""
        from mtl.backbone import num_layers, parse_layers, resolve_backbone

        n = num_layers(resolve_backbone())
        return n - unfreeze, parse_layers(layers, n)

    def add(self, texts: list[str], batch_size: int = 64) -> None:
        """Run the frozen layers on the texts not seen yet (texts as the backbone reads them)."""
        import torch

        from mtl.backbone import tokenize
        from mtl.encoders import length_batches

        todo = list(dict.fromkeys(t for t in texts if t not in self.states))
        bert = self.model[0].auto_model
        with torch.no_grad():  # not inference_mode: the stored tensors feed layers that train
            for idx in length_batches([len(t) for t in todo], max_rows=batch_size):
                batch = [todo[i] for i in idx]
                feats = tokenize(self.model, batch)
                h = bert.embeddings(input_ids=feats["input_ids"], token_type_ids=feats.get("token_type_ids"))
                out, mask = {0: h}, _mask(bert, h, feats["attention_mask"])
                for i, layer in enumerate(bert.encoder.layer[: self.frozen], 1):
                    out[i] = h = layer(h, mask)
                for r, n in enumerate(feats["attention_mask"].sum(1).tolist()):
                    self.states[batch[r]] = {k: out[k][r, :n].clone() for k in self.keep}

    def embedding(self, model, texts: list[str]):
        """Unit-length embeddings of `texts` (already added) from `model`'s top layers, pooled over `span`."""
        import torch
        import torch.nn.functional as F

        from mtl.backbone import cls_pooling, pooled_embedding

        rows = [self.states[t] for t in texts]
        lengths = [r[self.frozen].shape[0] for r in rows]
        width = max(lengths)
        attention = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], device=rows[0][self.frozen].device)
        states: list = [None] * (self.n_layers + 1)
        for k in self.keep:
            states[k] = torch.stack([F.pad(r[k], (0, 0, 0, width - r[k].shape[0])) for r in rows])
        bert = model[0].auto_model
        h = states[self.frozen]
        mask = _mask(bert, h, attention)
        for i, layer in enumerate(bert.encoder.layer[self.frozen :], self.frozen + 1):
            states[i] = h = layer(h, mask)
        return pooled_embedding(states, attention, self.span, cls_pooling(model))


def _mask(bert, h, attention):
    """The attention mask in the form this model's attention implementation expects (as BertModel builds it)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=bert.config, inputs_embeds=h, attention_mask=attention)


def finetune(texts: list[str], y: dict[str, np.ndarray], tasks: Tasks, unfreeze: int = 2, epochs: int = 2, lr_backbone: float = 3e-5,
             lr_heads: float = 1e-3, batch_size: int = 32, balance: bool = True, seed: int = 0, device: str = "cpu",
             layers: str = "last", init_heads=None, verbose: bool = True, prefix: Prefix | None = None, on_epoch=None):
    """Train the top `unfreeze` layers + heads on `texts`; return (model, heads, prefix, seconds).

    `init_heads`: torch heads trained on the frozen `layers` features to start from (copied, not changed).
    `prefix`: the frozen layers' states to reuse (made here when None); pass the returned one to
    `predict_finetuned`. `on_epoch(epoch, model, heads, prefix)`: called after each epoch in eval mode
    (CV scores every epoch count from one run); its time is not counted in the seconds returned.
    """
    import torch
    import torch.nn.functional as F

    from mtl.backbone import resolve_backbone
    from mtl.embed import backbone_text
    from mtl.heads import build_heads, forward
    from mtl.train import class_weights, seed_everything

    seed_everything(seed)
    texts = [backbone_text(t) for t in texts]  # read the text as the frozen path does
    backbone = resolve_backbone()
    prefix = prefix or Prefix(unfreeze, layers, device)
    if (prefix.frozen, prefix.span) != (want := Prefix.shape(unfreeze, layers)):
        raise ValueError(f"prefix is for (frozen layers, span) {(prefix.frozen, prefix.span)}; this run needs {want}")
    start = time.perf_counter()
    prefix.add(texts)
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
    for epoch in range(epochs):
        model.train()
        heads.train()
        perm = torch.randperm(len(texts), generator=gen)
        total = 0.0
        for b in range(0, len(texts), batch_size):
            idx = perm[b : b + batch_size]
            emb = prefix.embedding(model, [texts[i] for i in idx])
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
        if on_epoch is not None:
            paused = time.perf_counter()
            on_epoch(epoch + 1, model, heads, prefix)
            start += time.perf_counter() - paused
    return model, heads, prefix, time.perf_counter() - start


def load_sentence_transformer(path: str, device: str = "cpu"):
    """The backbone as a trainable SentenceTransformer (tokenizer + transformer + pooling modules)."""
    import os

    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return SentenceTransformer(path, device=device)


def predict_finetuned(model, heads, texts: list[str], tasks: Tasks, prefix: Prefix, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Class probabilities per task from a fine-tuned backbone + heads (same pooling as in training).

    The texts' frozen-layer states are added to `prefix` (kept there for the next model that scores them).
    """
    import torch

    from mtl.embed import backbone_text
    from mtl.encoders import length_batches
    from mtl.heads import forward

    texts = [backbone_text(t) for t in texts]
    prefix.add(texts)
    out = {t: np.empty((len(texts), len(labels)), dtype=np.float32) for t, labels in tasks.items()}
    with torch.no_grad():
        for idx in length_batches([len(t) for t in texts], max_rows=batch_size):  # similar lengths together: little padding
            emb = prefix.embedding(model, [texts[i] for i in idx])
            logits = forward(heads, emb, tasks)
            for t in tasks:
                out[t][idx] = torch.softmax(logits[t], 1).cpu().numpy()
    return out
