"""Adapting the backbone: the top N transformer layers train (small learning rate) together with the task heads.

The lower layers get no gradient. Pooling is the frozen path's (`layers`: the last layer, or the average of
layers A..B), and the heads start from heads already trained on the frozen features ("linear probe, then
fine-tune", Kumar et al. 2022), so the backbone starts moving from a good classifier instead of a random one.
The loss is `mtl.train.JointLoss`, the one masked joint loss (task weights, uncertainty weighting, source mix
and class balance as in `TrainConfig`). The result is a *different backbone*, so its embeddings stay in memory
and never enter the frozen cache.

The frozen lower layers give the same output every epoch and for every adapted model, so `Prefix` runs them
once per text (eval mode: a frozen layer is a fixed feature extractor, no dropout) and training runs only the
top layers on the stored states: with 2 of 6 layers trainable, about a third of the forward work per epoch.
A test checks the result equals the whole backbone's.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np

from mtl.config import Adapt, Recipe
from mtl.data import Encoded
from mtl.engine.backbone import Backbone, parse_layers, pooled_embedding, sentence_transformer, tokenize
from mtl.engine.devices import resolve_device
from mtl.engine.tokens import backbone_text, length_batches
from mtl.progress import log
from mtl.tasks import Tasks


class Prefix:
    """The frozen lower layers' hidden states per text (unpadded), computed once, read every epoch.

    For a model whose top `unfreeze` layers train and whose embedding pools `layers`: keeps the output of
    layer `frozen` (where the trainable layers start) and of any frozen layer the pooling `span` averages.
    One Prefix serves every model adapted with the same backbone, `unfreeze` and `layers`.
    """

    def __init__(self, backbone: Backbone, unfreeze: int, layers: str = "last", device: str = "auto"):
        self.backbone = backbone
        self.frozen, self.span = self.shape(backbone, unfreeze, layers)
        self.n_layers = backbone.n_layers
        lo, hi = self.span or (self.n_layers, self.n_layers)
        self.keep = sorted({self.frozen} | {i for i in range(lo, hi + 1) if i <= self.frozen})
        self.device = resolve_device(device)
        self.model = sentence_transformer(backbone, self.device).eval()
        self.states: dict[str, dict[int, object]] = {}

    @staticmethod
    def shape(backbone: Backbone, unfreeze: int, layers: str) -> tuple[int, tuple[int, int] | None]:
        """(frozen layers, pooled span) of a model adapting its top `unfreeze` layers and pooling `layers`."""
        return backbone.n_layers - unfreeze, parse_layers(layers, backbone.n_layers)

    def add(self, texts: list[str], batch_size: int = 64) -> None:
        """Run the frozen layers on the texts not seen yet (texts as the backbone reads them)."""
        import torch

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
        return pooled_embedding(states, attention, self.span, self.backbone.cls)


def _mask(bert, h, attention):
    """The attention mask in the form this model's attention implementation expects (as BertModel builds it)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=bert.config, inputs_embeds=h, attention_mask=attention)


def finetune(texts: list[str], y: dict[str, np.ndarray], tasks: Tasks, recipe: Recipe, adapt: Adapt, prefix: Prefix,
             init_heads=None, sources: np.ndarray | None = None, verbose: bool = True,
             on_epoch: Callable[[int, object, object], None] | None = None, init_model=None, batches=None):
    """Train the top `adapt.unfreeze` layers + heads on `texts`; return (model, heads, seconds).

    `recipe`: the pooled layers and the heads' TrainConfig (loss weighting, mix, balance, seed, device).
    `prefix`: the frozen layers' states (a `Prefix` for this backbone, `adapt.unfreeze` and `recipe.layers`).
    `init_heads`: torch heads trained on the frozen features to start from (copied, not changed).
    `on_epoch(epoch, model, heads)`: called after each epoch in eval mode (CV scores every epoch count from
    one run); its time is not counted in the seconds returned.
    `init_model`: an adapted model to continue from (copied; default: the pretrained backbone), e.g. the first stage
    of sequential transfer. `batches`: a fixed schedule of row indices, one tensor per step, instead of
    `adapt.epochs` shuffled epochs (`train.run_epochs`).
    """
    import torch

    from mtl.heads import build_heads, forward
    from mtl.train import JointLoss, optimiser, run_epochs, seed_everything

    config = recipe.train
    if (prefix.frozen, prefix.span) != (want := Prefix.shape(prefix.backbone, adapt.unfreeze, recipe.layers)):
        raise ValueError(f"prefix is for (frozen layers, span) {(prefix.frozen, prefix.span)}; this run needs {want}")
    seed_everything(config.seed)
    device = prefix.device
    texts = [backbone_text(t) for t in texts]  # read the text as the frozen path does
    start = time.perf_counter()
    prefix.add(texts)
    model = copy.deepcopy(init_model).to(device) if init_model is not None else sentence_transformer(prefix.backbone, device)
    bert = model[0].auto_model
    for p in bert.parameters():
        p.requires_grad = False
    for layer in bert.encoder.layer[len(bert.encoder.layer) - adapt.unfreeze :]:
        for p in layer.parameters():
            p.requires_grad = True
    dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
    heads = copy.deepcopy(init_heads).to(device) if init_heads is not None else build_heads(tasks, dim).to(device)
    loss_fn = JointLoss(tasks, config, y, sources, device)
    extra = [loss_fn.log_vars] if loss_fn.log_vars is not None else []
    # The heads' optimiser and the recipe's weight decay; the adapted layers and the heads each at their own rate.
    opt = optimiser([{"params": [p for p in bert.parameters() if p.requires_grad], "lr": adapt.lr_backbone},
                     {"params": [*heads.parameters(), *extra], "lr": adapt.lr_heads}], config)
    Y = {t: torch.as_tensor(v, device=device) for t, v in y.items()}

    def batch_loss(idx):
        emb = prefix.embedding(model, [texts[i] for i in idx])
        idx = idx.to(device)
        losses = loss_fn.task_losses(forward(heads, emb, tasks), {t: Y[t][idx] for t in tasks}, idx)
        return loss_fn.combine(losses) if losses else None

    def after_epoch(epoch: int, mean_loss: float) -> None:
        nonlocal start
        if verbose:
            log(f"adapt epoch {epoch}/{1 if batches is not None else adapt.epochs}: loss {mean_loss:.4f} ({time.perf_counter() - start:.0f} s)")
        if on_epoch is not None:
            paused = time.perf_counter()
            on_epoch(epoch, model, heads)
            start += time.perf_counter() - paused

    run_epochs(opt, len(texts), adapt.batch_size, adapt.epochs, config.seed, batch_loss, [model, heads], after_epoch, batches)
    return model, heads, time.perf_counter() - start


def predict_finetuned(model, heads, texts: list[str], tasks: Tasks, prefix: Prefix, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Class probabilities per task from an adapted backbone + heads (same pooling as in training).

    The texts' frozen-layer states are added to `prefix` (kept there for the next model that scores them).
    """
    import torch

    from mtl.heads import forward

    texts = [backbone_text(t) for t in texts]
    prefix.add(texts)
    out = {t: np.empty((len(texts), len(labels)), dtype=np.float32) for t, labels in tasks.items()}
    with torch.no_grad():
        for idx in length_batches([len(t) for t in texts], max_rows=batch_size):  # similar lengths together: little padding
            logits = forward(heads, prefix.embedding(model, [texts[i] for i in idx]), tasks)
            for t in tasks:
                out[t][idx] = torch.softmax(logits[t], 1).cpu().numpy()
    return out


def probe_then_adapt(rows: Encoded, tasks: Tasks, recipe: Recipe, adapt: Adapt, prefix: Prefix, verbose: bool = False, on_epoch=None,
                     init_model=None, batches=None):
    """Linear probe, then fine-tune: heads trained on the frozen features of `rows`, then the top layers and the
    heads together on `rows`' texts (from `init_model`, on `batches`: see `finetune`). Returns (model, heads, seconds)."""
    from dataclasses import replace

    from mtl.train import train

    init, _, _ = train(rows.x, rows.y, tasks, replace(recipe.train, share="none"), sources=rows.sources)
    return finetune(list(rows.frame["text"]), rows.y, tasks, recipe, adapt, prefix, init_heads=init, sources=rows.sources,
                    verbose=verbose, on_epoch=on_epoch, init_model=init_model, batches=batches)


def adapt_predict(method: str, rows: Encoded, texts_te: list[str], tasks: Tasks, recipe: Recipe, adapt: Adapt, prefix: Prefix) -> dict[str, np.ndarray]:
    """Predicted label ids per task for `texts_te` from an adapted backbone (sharing mode "adapted").

    "multi-task adapted": one backbone copy for all tasks, the masked joint loss on all rows. "single-task
    adapted": one copy per task, trained on that task's rows only; each copy has the same trainable capacity
    as the shared one.
    """
    groups = [tasks] if method == "multi-task adapted" else [{t: labels} for t, labels in tasks.items()]
    preds = {}
    for group in groups:
        sub = rows.rows(np.any([rows.y[t] >= 0 for t in group], axis=0))
        sub = Encoded(sub.frame, sub.x, {t: sub.y[t] for t in group})
        model, heads, _ = probe_then_adapt(sub, group, recipe, adapt, prefix)
        preds.update({t: p.argmax(1) for t, p in predict_finetuned(model, heads, texts_te, group, prefix).items()})
    return preds


def adapt_cv(base: Encoded, pool: Encoded, task: str, tasks: Tasks, recipe: Recipe, adapts: list[Adapt], prefixes: dict[int, Prefix],
             folds: int = 3, seed: int = 0, metric: str = "macro_recall"):
    """k-fold CV of adapted backbones on `pool` (stratified by `task`; `base` rows always in training), scoring
    `task`'s `metric` on each held-out fold after every epoch, so every epoch count up to `adapt.epochs` is scored
    from one run per fold. Returns a table: unfreeze, epochs, mean and sd over folds."""
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    from mtl.evaluate import metric as metric_of

    scores: dict[tuple[int, int], list[float]] = {}
    for fit, hold in StratifiedKFold(folds, shuffle=True, random_state=seed).split(pool.x, pool.y[task]):
        held = pool.rows(np.isin(np.arange(len(pool.x)), hold))
        fit_rows = Encoded.concat([base, pool.rows(np.isin(np.arange(len(pool.x)), fit))])
        for adapt in adapts:
            prefix = prefixes[adapt.unfreeze]

            def score(epoch, model, heads, adapt=adapt, held=held, prefix=prefix):
                p = predict_finetuned(model, heads, list(held.frame["text"]), tasks, prefix)[task].argmax(1)
                scores.setdefault((adapt.unfreeze, epoch), []).append(metric_of(metric, held.y[task], p, len(tasks[task])))

            probe_then_adapt(fit_rows, tasks, recipe, adapt, prefix, on_epoch=score)
    return pd.DataFrame([{"unfreeze": u, "epochs": e, f"cv_{metric}_mean": float(np.mean(v)), f"cv_{metric}_sd": float(np.std(v, ddof=1))}
                         for (u, e), v in scores.items()])
