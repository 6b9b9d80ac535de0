"""Training the heads on cached embeddings: mini-batch Adam on the masked joint loss (`JointLoss`), and
`train_from_csv`, the step the CLI and notebook 03 share (files in, checkpoint and metrics out).

The joint loss is the one definition for every model that trains heads here: frozen heads (`train`) and an
adapted backbone (`mtl.research.adapt.finetune`). Per task it is the cross-entropy over the rows labelled for
that task (rows without a label add nothing and no gradient), each row weighted by its source's share of the
task (`TrainConfig.mix`) and, with `balance`, by its class's share within that source; the tasks then add up
with static weights or learned uncertainty weights.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.config import TrainConfig
from mtl.engine.embed import EmbedSpec
from mtl.errors import MTLError
from mtl.progress import log
from mtl.tasks import DEFAULT_TASKS, Tasks


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mix_temperature(mix: str) -> float:
    """`rows` -> 1 (sources weigh as their rows), `equal` -> inf (each source the same), else T itself."""
    return {"rows": 1.0, "equal": math.inf}.get(mix) or float(mix)


def row_weights(y: np.ndarray, sources: np.ndarray | None, mix: str = "rows", balance: bool = False) -> np.ndarray:
    """Loss weight of every row for one task's labels `y` (-1 = no label: weight 0), mean 1 over labelled rows.

    A source with n labelled rows gets a share of the task's loss proportional to n**(1/T) (`mix`:
    T = 1 "rows", T = inf "equal"); with `balance`, each class present in a source gets an equal part of
    that source's share (one source and balance: inverse class frequency, as before mixing existed).
    """
    y = np.asarray(y)
    w = np.zeros(len(y))
    labelled = y >= 0
    if not labelled.any():
        return w
    src = np.asarray(sources) if sources is not None else np.zeros(len(y), dtype=int)
    t = mix_temperature(mix)
    names = list(dict.fromkeys(src[labelled]))
    counts = {s: int(((src == s) & labelled).sum()) for s in names}
    share = {s: 1.0 if math.isinf(t) else counts[s] ** (1 / t) for s in names}
    total = sum(share.values())
    for s in names:
        rows = (src == s) & labelled
        if balance:
            classes = np.unique(y[rows])
            for c in classes:
                sel = rows & (y == c)
                w[sel] = share[s] / total / len(classes) / sel.sum()
        else:
            w[rows] = share[s] / total / counts[s]
    return w * labelled.sum()


class JointLoss:
    """The masked joint loss over tasks for one training set (`y`, `sources`); see the module docstring."""

    def __init__(self, tasks: Tasks, config: TrainConfig, y: dict[str, np.ndarray], sources: np.ndarray | None = None, device="cpu"):
        import torch

        self.tasks = list(tasks)
        self.static = {t: float(config.task_weights.get(t, 1.0)) for t in tasks}
        self.rows, self.plain = {}, {}
        for t in tasks:
            w = row_weights(y[t], sources, config.mix, config.balance)
            self.rows[t] = torch.as_tensor(w, dtype=torch.float32, device=device)
            # every labelled row weighs the same: plain masked cross-entropy (the same numbers as before mixing)
            self.plain[t] = bool(np.allclose(w[np.asarray(y[t]) >= 0], 1.0))
        self.log_vars = torch.nn.Parameter(torch.zeros(len(tasks), device=device)) if config.weighting == "uncertainty" else None

    def task_losses(self, out: dict, ys: dict, idx=None) -> dict:
        """Per-task loss of a batch (`idx`: its rows in the training set, for their weights; None: unweighted)."""
        import torch.nn.functional as F

        losses = {}
        for t in self.tasks:
            y = ys[t]
            if not (y >= 0).any():  # a batch without labels for t adds nothing (and no gradient)
                continue
            if idx is None or self.plain[t]:
                losses[t] = F.cross_entropy(out[t], y, ignore_index=-1)
            else:  # unlabelled rows have weight 0 (and cross-entropy 0 with ignore_index): no masking needed
                w = self.rows[t][idx]
                losses[t] = (F.cross_entropy(out[t], y, ignore_index=-1, reduction="none") * w).sum() / w.sum()
        return losses

    def combine(self, losses: dict):
        """Sum the task losses: static weights, or exp(-s) * L + s with a learned log-variance s per task."""
        import torch

        total = torch.zeros((), device=next(iter(losses.values())).device) if losses else torch.zeros(())
        for i, t in enumerate(self.tasks):
            if t in losses:
                if self.log_vars is not None:
                    total = total + torch.exp(-self.log_vars[i]) * losses[t] + self.log_vars[i]
                else:
                    total = total + self.static[t] * losses[t]
        return total

    def __call__(self, out: dict, ys: dict, idx=None):
        return self.combine(self.task_losses(out, ys, idx))

    def learned(self) -> list[float] | None:
        return self.log_vars.detach().cpu().numpy().tolist() if self.log_vars is not None else None


def _accuracy(logits, y) -> float:
    mask = y >= 0
    return float((logits.argmax(1)[mask] == y[mask]).float().mean()) if mask.any() else float("nan")


def train(
    x_train: np.ndarray,
    y_train: dict[str, np.ndarray],
    tasks: Tasks,
    config: TrainConfig,
    x_test: np.ndarray | None = None,
    y_test: dict[str, np.ndarray] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    prior: dict[str, np.ndarray] | None = None,
    sources: np.ndarray | None = None,
):
    """Train one head per task; return (heads, history rows, learned log-variances or None).

    History rows hold, per epoch: the joint train loss, and (when there is a test set or an `on_epoch` to tell)
    train/test loss and accuracy per task.
    `prior` (task -> label-description vectors, `mtl.prior.prototypes`) is needed when `config.prior` is
    "descriptions"; the returned heads are plain heads either way. `sources` names each row's source (file)
    for `config.mix`.
    """
    import torch

    from mtl.engine.devices import resolve_device

    seed_everything(config.seed)
    dev = torch.device(resolve_device(config.device))
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        # The heads' matmuls are tiny (32 x 384 x 3): extra threads only add synchronisation, and on a
        # busy 2-core machine OpenMP spin-waiting made 20 epochs take 2-7 s instead of 0.4 s (measured).
        torch.set_num_threads(1)
    try:
        return _train(x_train, y_train, tasks, config, x_test, y_test, on_epoch, dev, prior, sources)
    finally:
        torch.set_num_threads(threads)


def optimiser(groups: list[dict], config: TrainConfig):
    """The one optimiser for every model that trains here (frozen heads, adapted layers): Adam with the
    config's learning rate and weight decay (L2); a group may set its own `lr`."""
    import torch

    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def run_epochs(opt, n: int, batch_size: int, epochs: int, seed: int, batch_loss: Callable, modules: list,
               after_epoch: Callable[[int, float], None] | None = None, batches: Sequence | None = None) -> None:
    """The one mini-batch loop (frozen heads and adapted backbones): each epoch a permutation of the `n` rows drawn
    from a generator seeded with `seed`, cut into batches of `batch_size`; `batch_loss(idx)` gives a batch's loss,
    or None when the batch holds no label of any task (no update). `modules` train in train mode (dropout) and
    are switched to eval mode before `after_epoch(epoch, mean loss per row)`.

    `batches`: a fixed schedule instead (row-index tensors, one per step, e.g. task-balanced ones from
    `research.batched.index_stream`), run once as `epochs` = 1."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, (1 if batches is not None else epochs) + 1):
        for m in modules:
            m.train()
        schedule = batches if batches is not None else torch.randperm(n, generator=gen).split(batch_size)
        total, seen = 0.0, 0
        for idx in schedule:
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            if loss is not None:
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            seen += len(idx)
        for m in modules:
            m.eval()
        if after_epoch is not None:
            after_epoch(epoch, total / max(seen, 1))


def _train(x_train, y_train, tasks, config, x_test, y_test, on_epoch, dev, prior, sources):
    """The training loop itself (see `train`)."""
    import torch
    import torch.nn.functional as F

    from mtl import prior as P
    from mtl.heads import build_heads, forward

    plain = build_heads(tasks, x_train.shape[1], config.hidden, config.dropout, config.trunk_width).to(dev)
    heads = P.wrap(plain, tasks, prior, dev) if config.prior == "descriptions" else plain
    loss_fn = JointLoss(tasks, config, y_train, sources, dev)
    # Weight decay acts on the heads (with a prior: on their offset from it, not on the prior's scales).
    named = list(heads.named_parameters())
    groups = [{"params": [p for n, p in named if not P.is_scale(n)] + ([loss_fn.log_vars] if loss_fn.log_vars is not None else [])}]
    if scales := [p for n, p in named if P.is_scale(n)]:
        groups.append({"params": scales, "weight_decay": 0.0})
    opt = optimiser(groups, config)

    X = torch.tensor(x_train, dtype=torch.float32, device=dev)  # a copy: arrays from worker processes are read-only maps
    Y = {t: torch.tensor(y_train[t], dtype=torch.long, device=dev) for t in tasks}
    Xt = torch.tensor(x_test, dtype=torch.float32, device=dev) if x_test is not None else None
    Yt = {t: torch.as_tensor(y_test[t], dtype=torch.long, device=dev) for t in tasks} if y_test else None
    history = []
    track = Xt is not None or on_epoch is not None

    def batch_loss(idx):
        idx = idx.to(dev)
        losses = loss_fn.task_losses(forward(heads, X[idx], tasks), {t: Y[t][idx] for t in tasks}, idx)
        return loss_fn.combine(losses) if losses else None

    def after_epoch(epoch: int, mean_loss: float) -> None:
        row = {"epoch": epoch, "train_loss": mean_loss}
        history.append(row)
        if not track:  # nobody reads per-epoch scores (CV folds, comparisons): skip a forward pass over every row
            return
        with torch.no_grad():
            for split, xs, ys in (("train", X, Y), ("test", Xt, Yt)):
                if xs is None or ys is None:
                    continue
                out = forward(heads, xs, tasks)
                for t in tasks:
                    mask = ys[t] >= 0
                    row[f"{split}_loss_{t}"] = float(F.cross_entropy(out[t][mask], ys[t][mask])) if mask.any() else float("nan")
                    row[f"{split}_acc_{t}"] = _accuracy(out[t], ys[t])
            if Xt is not None and Yt is not None:
                row["test_loss"] = float(loss_fn(forward(heads, Xt, tasks), Yt))
        if on_epoch is not None:
            on_epoch(row)

    run_epochs(opt, len(X), config.batch_size, config.epochs, config.seed, batch_loss, [heads], after_epoch)
    if config.prior == "descriptions":
        heads = P.fold(heads, plain)
    return heads.cpu(), history, loss_fn.learned()


def train_from_csv(
    data: list[str | Path] | None = None,
    tasks: Tasks = DEFAULT_TASKS,
    config: TrainConfig | None = None,
    spec: EmbedSpec | None = None,
    out: str | Path | None = None,
    metrics_out: str | Path | None = None,
    log_every: int = 10,
    verbose: bool = True,
    record: dict | None = None,
) -> dict:
    """Train heads on the train rows, score train and held-out (split=test) rows, save checkpoint + metrics.

    `config` says how the heads train, `spec` how texts are embedded (its `layers` included). `record`
    (e.g. `{"tune": ...}`: the choice and CV table of `--tune`) is stored in the checkpoint metadata and
    metrics.json as is. Returns a dict with `history`, `metrics` (train/test, per task, and per source),
    `meta` and `state`.
    """
    from mtl.atomic import write_text
    from mtl.checkpoint import save_checkpoint
    from mtl.data import file_digest, load_encoded
    from mtl.engine.backbone import resolve_backbone
    from mtl.evaluate import evaluate_by_source
    from mtl.heads import state_to_numpy

    config = config or TrainConfig()
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
            accs = "  ".join(f"{s} {t} {row[f'{s}_acc_{t}']:.3f}" for s in ("train", "test") for t in tasks if f"{s}_acc_{t}" in row)
            log(f"epoch {row['epoch']:>4}/{config.epochs}  loss {row['train_loss']:.4f}  {accs}")

    prior = None
    if config.prior == "descriptions":
        from mtl.prior import prototypes

        prior = prototypes(tasks, spec)
    has_test = len(te.x) > 0
    heads, history, log_vars = train(tr.x, tr.y, tasks, config, te.x if has_test else None, te.y if has_test else None, report, prior,
                                     sources=tr.frame["source"].to_numpy())
    state = state_to_numpy(heads)
    metrics = evaluate_by_source(state, tasks, tr, te)
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
    write_text(metrics_out or paths.METRICS_JSON,
               json.dumps({"metrics": metrics, "meta": {k: v for k, v in meta.items() if k != "metrics"}, "history": history}, indent=2))
    return {"history": history, "metrics": metrics, "meta": meta, "state": state}
