"""Many small models trained as one batched torch program: stacked parameters, the gradient of the summed loss, one Adam.

Issue 26 needs thousands of small fits (draws x k x lambda x seeds x arms). One at a time, `mtl.train.train`
spends most of its time in Python per step; here every model of a batch takes its step in the same few
batched matmuls (`torch.baddbmm`/`bmm` over parameters stacked along a leading model axis).

What one model of the batch is (a `Member`), and how it trains:

* Architecture: what `mtl.heads.build_heads(tasks, dim, hidden=0, dropout, trunk_hidden)` builds: a linear head
  per task, or (with `config.share == "trunk"`) a shared trunk Linear(dim -> H)-ReLU-Dropout read by a linear head
  per task. A model's result is a numpy state dict with exactly `state_to_numpy(build_heads(...))`'s keys and
  shapes, so `mtl.heads.predict_proba` scores it; `predict` here scores many at once.
* Rows and weights: `Member.rows[t]` are the rows of the shared `x` that the model trains task t on (all labelled
  for t), `Member.weights[t]` that task's loss weight (default 1; 0 allowed). A task is *active* for a model when it
  has rows and a weight > 0; an inactive task draws nothing and adds nothing, and its head keeps its starting
  weights (as a head without labels does in `mtl.train.train`). So weight 0 is exactly "the task is absent".
* Task-balanced batches: at every step, every active task of a model draws a batch of b = min(batch_size or the
  member's own `batch`, its n rows) of its rows: consecutive slices of concatenated random permutations of the rows (an epoch-wise shuffle;
  a batch may straddle two epochs). The permutations come from a `torch.Generator` seeded from
  (member seed, the task's position in `tasks`, 0), the trunk's dropout masks of that task's rows from one seeded
  from (seed, position, 1) (`stream_seed`). So a task's batches and masks depend on the seed, the task's position,
  its rows, batch size and steps, never on the model's other tasks or on the other models of the batch.
* Loss of a model: sum over active tasks of weight[t] * sum(w * ce) / sum(w) over t's batch, where w are the
  rows' weights `mtl.train.row_weights` gives the model's own rows of t (class balance with `config.balance`,
  source mix with `sources`), normalised per batch as `JointLoss` does. The batch's loss is the sum over models:
  model i's parameters get exactly model i's gradient, and Adam is elementwise, so models stay independent.
  That gradient is written out by hand (`_Group.step`; see its docstring for why), and tests check it against
  autograd on a plain `build_heads` module.
* Optimiser: `torch.optim.Adam(lr, weight_decay)` (L2 in the gradient, as `mtl.train`), fresh for every call,
  over the active tasks' heads and the trunk (an inactive head is not a parameter: no weight decay either).
* Initialisation: model i starts where `torch.manual_seed(seed_i); build_heads(...)` starts (and so where
  `mtl.train.train` starts with `TrainConfig(seed=seed_i)`): `nn.Linear`'s default init (weight
  `kaiming_uniform_(a=sqrt(5))`, bias U(+-1/sqrt(fan_in))) drawn from `torch.Generator().manual_seed(seed_i)`,
  trunk first, then each task's head in `tasks` order, weight before bias (`init_state`). `init=` starts from given
  state dicts instead (a sequential arm: stage 2 starts from stage 1's weights, with a fresh Adam).

Equal batch sizes stack: models are grouped by their active tasks' batch sizes (a k = 4 draw has b = 12 where a
full one has 32); each group has its own stacked tensors, and all groups step together under one Adam. Tests
(`tests/test_batched.py`) show a model trained in a batch equals the same model trained alone and a plain
per-model `nn.Module` loop on the same streams.

Cost (bench/bench_batched.py): memory per model is about 4x its parameters (weights, gradient, Adam's two
moments: 1.6 MB for a 384 -> 256 trunk) plus its index streams (4 bytes x steps x batch per task) and a
16-step block of dropout masks (bool, 16 x rows per step x H); callers train a few hundred trunk models per call.
Time is the matmuls: a trunk model's step is ~2 x rows x dim x H x 2 flops (forward and weight gradient).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mtl.config import TrainConfig
from mtl.heads import TRUNK
from mtl.tasks import Tasks

CHUNK = 16  # dropout masks are drawn this many steps at a time per (model, task): a constant, so never batch-dependent
INDEX, DROPOUT = 0, 1  # the last part of a stream's seed: which of a (model, task)'s two generators


@dataclass(frozen=True, eq=False)
class Member:
    """One model of a batch: its training rows per task (indices into the shared `x`, labelled for that task),
    a loss weight per task (missing: 1; 0: the task is absent) and its seed (init, batches, dropout)."""

    rows: Mapping[str, np.ndarray]
    weights: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    batch: int | None = None  # rows per step of each task (default: the config's batch_size), capped by the task's rows

    def batch_of(self, task: str, batch_size: int) -> int:
        return min(self.batch or batch_size, self.n_rows(task))

    def weight(self, task: str) -> float:
        return float(self.weights.get(task, 1.0))

    def n_rows(self, task: str) -> int:
        return len(self.rows.get(task, ()))

    def active(self, task: str) -> bool:
        return self.n_rows(task) > 0 and self.weight(task) > 0


def stream_seed(seed: int, position: int, kind: int) -> int:
    """Seed of the generator of (model seed, task position in `tasks`, INDEX or DROPOUT): a hash (numpy's
    SeedSequence), so neighbouring seeds and positions give unrelated streams."""
    hi, lo = np.random.SeedSequence([seed, position, kind]).generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) & (2**63 - 1)


def index_stream(seed: int, position: int, n_rows: int, batch: int, steps: int):
    """Positions (0..n_rows-1 into a task's rows) of the `steps` batches of `batch` rows, int32 [steps, batch]:
    consecutive slices of concatenated random permutations (each permutation: argsort of float64 uniform keys,
    stable, so a tie could not make it machine-dependent); all permutations come from one generator call."""
    import torch

    gen = torch.Generator().manual_seed(stream_seed(seed, position, INDEX))
    epochs = math.ceil(steps * batch / n_rows)
    keys = torch.rand(epochs, n_rows, generator=gen, dtype=torch.float64)
    order = keys.argsort(dim=1, stable=True).reshape(-1)[: steps * batch]
    return order.to(torch.int32).view(steps, batch)


def dropout_generator(seed: int, position: int):
    """The generator of a (model, task)'s trunk dropout masks: `CHUNK` steps per call of `dropout_masks`."""
    import torch

    return torch.Generator().manual_seed(stream_seed(seed, position, DROPOUT))


def dropout_masks(gen, steps: int, batch: int, width: int, p: float):
    """Kept units (bool [steps, batch, width]) for the next `steps` (<= CHUNK) steps: uniform >= p, so a unit is
    kept with probability 1 - p; kept units are scaled by 1 / (1 - p), as `nn.Dropout` does."""
    import torch

    return torch.rand(steps, batch, width, generator=gen) >= p


def init_state(tasks: Tasks, dim: int, trunk: int, seed: int) -> dict:
    """Starting weights of one model (torch tensors, `build_heads`' keys): `nn.Linear`'s default init from a
    generator seeded with `seed`, in `build_heads`' construction order, i.e. what `torch.manual_seed(seed);
    build_heads(tasks, dim, 0, dropout, trunk)` gives."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    layers = ([(TRUNK, dim, trunk)] if trunk else []) + [(t, trunk or dim, len(labels)) for t, labels in tasks.items()]
    state = {}
    for name, fan_in, out in layers:
        w, b = torch.empty(out, fan_in), torch.empty(out)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)  # nn.Linear.reset_parameters, with our generator
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(b, -bound, bound, generator=gen)
        state[f"{name}.0.weight"], state[f"{name}.0.bias"] = w, b
    return state


def param_names(tasks: Tasks, trunk: int) -> list[str]:
    return [f"{n}.0.{k}" for n in ([TRUNK] if trunk else []) + list(tasks) for k in ("weight", "bias")]


def _check(x, y, tasks: Tasks, members: Sequence[Member], config: TrainConfig, steps: int, init) -> None:
    if config.hidden or config.weighting != "static" or config.prior != "none" or config.task_weights:
        raise ValueError("batched training: linear heads or a trunk only (hidden 0), static weights from Member.weights "
                         f"(config.task_weights empty), no prior; got hidden {config.hidden}, weighting {config.weighting!r}, "
                         f"prior {config.prior!r}, task_weights {config.task_weights}")
    if np.ndim(x) != 2 or any(len(np.asarray(y[t])) != len(x) for t in tasks):
        raise ValueError("x must be n x dim and every task's labels n long")
    if not members or steps < 1:
        raise ValueError(f"batched training: need members and steps >= 1, got {len(members)} members, {steps} steps")
    if init is not None and len(init) != len(members):
        raise ValueError(f"init: {len(init)} states for {len(members)} members")
    for i, m in enumerate(members):
        if unknown := (set(m.rows) | set(m.weights)) - set(tasks):
            raise ValueError(f"member {i}: unknown tasks {sorted(unknown)}")
        if any(m.weight(t) < 0 or not math.isfinite(m.weight(t)) for t in m.weights):
            raise ValueError(f"member {i}: weights must be finite and >= 0, got {dict(m.weights)}")
        if not isinstance(m.seed, (int, np.integer)) or m.seed < 0:
            raise ValueError(f"member {i}: seed must be an integer >= 0, got {m.seed!r}")
        if not any(m.active(t) for t in tasks):
            raise ValueError(f"member {i}: no task with rows and a weight > 0")
        for t, r in m.rows.items():
            r = np.asarray(r)
            if len(r) and (r.min() < 0 or r.max() >= len(x) or (np.asarray(y[t])[r] < 0).any()):
                raise ValueError(f"member {i}, task {t}: rows must index x and be labelled for {t}")


class _Group:
    """Models whose active tasks and batch sizes agree, trained side by side.

    Parameters are stacked along a leading model axis in `build_heads`' layout ([models, out, in] weights,
    [models, out] biases). The gradient is written by hand into buffers allocated once: no autograd graph and no
    per-step allocation of trunk-sized tensors, which on a CPU cost about as much as the matmuls (autograd's
    steps were 1.7x slower on 2 cores); tests check it against autograd.
    """

    def __init__(self, index, members, tasks, y, config, steps, sources, starts, dim, device):
        import torch

        from mtl.train import row_weights

        self.index = index  # positions of these models in the caller's list
        G = len(members)
        self.trunk = config.trunk_width
        self.p = config.dropout if self.trunk else 0.0
        # the active tasks (the same for every model of the group) and their batch sizes, in `tasks` order
        self.batch = {t: members[0].batch_of(t, config.batch_size) for t in tasks if members[0].active(t)}
        self.tables, self.lam = {}, {}
        for j, t in enumerate(tasks):
            if t not in self.batch:
                continue
            n_max = max(m.n_rows(t) for m in members)
            rows = torch.zeros(G, n_max, dtype=torch.long)
            weights = torch.zeros(G, n_max)
            for i, m in enumerate(members):
                r = np.asarray(m.rows[t], dtype=np.int64)
                rows[i, : len(r)] = torch.from_numpy(r)
                src = None if sources is None else np.asarray(sources)[r]
                weights[i, : len(r)] = torch.from_numpy(row_weights(np.asarray(y[t])[r], src, config.mix, config.balance).astype(np.float32))
            # the whole index stream up front: [models, steps, b] positions into each model's rows of t
            stream = torch.stack([index_stream(m.seed, j, m.n_rows(t), self.batch[t], steps) for m in members])
            labels = torch.as_tensor(np.asarray(y[t]), dtype=torch.long)
            self.tables[t] = tuple(v.to(device) for v in (stream, rows, weights, labels))
            self.lam[t] = torch.tensor([m.weight(t) for m in members], device=device)
        self.gens = []
        if self.trunk and self.p > 0:  # one dropout generator per (model, active task), in the tasks' order
            self.gens = [[dropout_generator(m.seed, j) for j, t in enumerate(tasks) if t in self.batch] for m in members]
        self.masks = None
        # parameters: the trunk (if any) and the active tasks' heads; an inactive head is not trained at all
        names = ([TRUNK] if self.trunk else []) + list(self.batch)
        self.params = {}
        for name in names:
            w, b = f"{name}.0.weight", f"{name}.0.bias"
            self.params[w] = torch.stack([s[w] for s in starts]).to(device)  # [models, out, in]
            self.params[b] = torch.stack([s[b] for s in starts]).to(device)  # [models, out]
        for v in self.params.values():
            v.grad = torch.zeros_like(v)  # Adam reads .grad; `step` overwrites it in place every step
        R, width = sum(self.batch.values()), self.trunk
        self.x = torch.empty(G, R, dim, device=device)  # the step's input rows
        if self.trunk:  # the trunk's pre-activation, its output after ReLU and dropout, and d loss / d output
            self.z, self.h, self.dh = (torch.empty(G, R, width, device=device) for _ in range(3))

    def draw_masks(self, step: int, steps: int):
        """The next CHUNK steps' kept units of every (model, active task), stacked as [models, chunk, rows, H]."""
        import torch

        if not self.gens:
            return
        c = min(CHUNK, steps - step)
        per_model = [torch.cat([dropout_masks(g, c, self.batch[t], self.trunk, self.p) for g, t in zip(gens, self.batch)], dim=1)
                     for gens in self.gens]
        self.masks = torch.stack(per_model).to(self.x.device)

    def step(self, X, step: int) -> None:
        """Forward and backward of every model at `step`: the gradient of sum over models of their losses.

        Model m's loss is sum over active t of lam[m, t] * sum_i w_i ce_i / sum_i w_i over its batch of t, so
        d loss / d logits_i = lam * w_i / sum(w) * (softmax_i - onehot(y_i)); the rest is the chain rule through
        the linear layers (x @ W + b), dropout (x kept / (1 - p)) and ReLU.
        """
        import torch

        P = self.params
        picked = {}
        for t, (stream, rows, weights, labels) in self.tables.items():
            pos = stream[:, step].long()  # [models, b] positions into each model's rows
            r = rows.gather(1, pos)
            picked[t] = (r, weights.gather(1, pos), labels[r])
        # every task's rows of a model side by side, so the trunk runs once per model and step
        r_all = torch.cat([r for r, _, _ in picked.values()], dim=1)
        torch.index_select(X, 0, r_all.reshape(-1), out=self.x.view(-1, X.shape[1]))
        if self.trunk:
            W, b = P[f"{TRUNK}.0.weight"], P[f"{TRUNK}.0.bias"]
            torch.baddbmm(b.unsqueeze(1), self.x, W.transpose(1, 2), out=self.z)  # [models, R, H]
            torch.clamp_min(self.z, 0.0, out=self.h)  # ReLU
            if self.p > 0:  # dropout: kept units scaled by 1 / (1 - p), as nn.Dropout
                self.h.mul_(self.masks[:, step % CHUNK]).mul_(1.0 / (1.0 - self.p))
            h = self.h
        else:
            h = self.x
        off = 0
        for t, (_, w, y) in picked.items():
            n = w.shape[1]
            W, b = P[f"{t}.0.weight"], P[f"{t}.0.bias"]
            h_t = h[:, off : off + n]
            d = torch.softmax(torch.baddbmm(b.unsqueeze(1), h_t, W.transpose(1, 2)), dim=-1)  # [models, b, classes]
            d.scatter_add_(2, y.unsqueeze(2), torch.full_like(y, -1, dtype=d.dtype).unsqueeze(2))  # softmax - onehot
            d.mul_((self.lam[t].unsqueeze(1) * w / w.sum(1, keepdim=True)).unsqueeze(2))  # JointLoss's normalisation, times lam
            torch.bmm(d.transpose(1, 2), h_t, out=W.grad)  # [models, classes, in]
            torch.sum(d, 1, out=b.grad)
            if self.trunk:
                torch.bmm(d, W, out=self.dh[:, off : off + n])
            off += n
        if self.trunk:
            W, b = P[f"{TRUNK}.0.weight"], P[f"{TRUNK}.0.bias"]
            dz = self.dh
            if self.p > 0:
                dz.mul_(self.masks[:, step % CHUNK]).mul_(1.0 / (1.0 - self.p))
            dz.masked_fill_(self.z <= 0, 0.0)  # ReLU
            torch.bmm(dz.transpose(1, 2), self.x, out=W.grad)  # [models, H, dim]
            torch.sum(dz, 1, out=b.grad)

    def result(self, key: str) -> np.ndarray:
        return self.params[key].cpu().numpy()


def train_many(
    x: np.ndarray,
    y: Mapping[str, np.ndarray],
    tasks: Tasks,
    members: Sequence[Member],
    config: TrainConfig,
    steps: int,
    init: Sequence[Mapping[str, np.ndarray]] | None = None,
    sources: np.ndarray | None = None,
    device: str = "cpu",
    threads: int | None = 1,
    progress: str | None = None,
) -> list[dict[str, np.ndarray]]:
    """Train every member for `steps` Adam updates as one batched program; one numpy state dict per member, in order.

    `x` (n x dim, float32) and `y` (task -> label ids, -1 = none) are shared; `config` gives lr, weight_decay,
    dropout, share/trunk_hidden, batch_size, balance and mix (its epochs and seed are not used: `steps` and the
    members' seeds are). `init`: a state dict per member to start from (default: `init_state` of its seed).
    `sources`: each row's source, for `config.mix` (None: one source). `threads`: torch threads while training
    (None: as set; 1 by default, as `mtl.train`: on a busy 2-core machine a second thread's spin-waiting can make
    small batches many times slower; for big batches on an idle machine 2 can pay, see bench/bench_batched.py). `progress`: a bar with this label. The states are views of one stacked array per key
    (`stack` gives it back without copying much).
    """
    import torch

    _check(x, y, tasks, members, config, steps, init)
    trunk = config.trunk_width
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        starts = [{k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in s.items()} for s in init] if init is not None else \
            [init_state(tasks, x.shape[1], trunk, m.seed) for m in members]
        for s in starts:
            if sorted(s) != sorted(param_names(tasks, trunk)):
                raise ValueError(f"init: keys {sorted(s)}, expected {sorted(param_names(tasks, trunk))}")
        # group models with the same active tasks and batch sizes (sorted, so the groups do not depend on input order)
        keys = [tuple(m.batch_of(t, config.batch_size) if m.active(t) else 0 for t in tasks) for m in members]
        groups = []
        for key in sorted(set(keys)):
            index = [i for i, k in enumerate(keys) if k == key]
            groups.append(_Group(index, [members[i] for i in index], tasks, y, config, steps, sources, [starts[i] for i in index], x.shape[1], device))
        X = torch.tensor(np.asarray(x), dtype=torch.float32, device=device)  # a copy: x may be a read-only map
        params = [p for g in groups for p in g.params.values()]
        fused = {"fused": True} if torch.device(device).type in ("cpu", "cuda") else {}
        # one Adam over every group's tensors; elementwise, so each model's update is its own (fused: one pass per tensor)
        opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
        bar = None
        if progress:
            from mtl.progress import bar as make_bar

            bar = make_bar(steps, progress, unit="step")
        for step in range(steps):
            for g in groups:
                if step % CHUNK == 0:
                    g.draw_masks(step, steps)
                g.step(X, step)  # writes every parameter's .grad
            opt.step()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        # back to the caller's order; an inactive task's head (not in its group's parameters) keeps its start
        stacked = {k: np.empty((len(members), *starts[0][k].shape), dtype=np.float32) for k in param_names(tasks, trunk)}
        for g in groups:
            for k in stacked:
                stacked[k][g.index] = g.result(k) if k in g.params else np.stack([starts[i][k].numpy() for i in g.index])
        return unstack(stacked)
    finally:
        torch.set_num_threads(threads_before)


def stack(states: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-model state dicts -> one array per key with a leading model axis."""
    return {k: np.stack([s[k] for s in states]) for k in states[0]}


def unstack(stacked: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One array per key with a leading model axis -> per-model state dicts (views, no copies)."""
    n = len(next(iter(stacked.values())))
    return [{k: v[i] for k, v in stacked.items()} for i in range(n)]


def task_names(state: Mapping[str, np.ndarray]) -> list[str]:
    """The tasks a (stacked or single) state has heads for, in key order."""
    return list(dict.fromkeys(k.split(".")[0] for k in state if k.split(".")[0] != TRUNK))


def _tensor(a):
    """float32 torch view of an array (a copy only where it must: another dtype, or read-only memory)."""
    import torch

    a = np.asarray(a, dtype=np.float32)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _shared_input_layer(X, W, b):
    """Linear layers of many models on the same rows: [n, dim] @ [dim, models*out] as one matmul -> [models, n, out]."""
    return (X @ W.reshape(-1, W.shape[-1]).T).view(len(X), W.shape[0], W.shape[1]).transpose(0, 1) + b.unsqueeze(1)


def predict(models, x: np.ndarray, tasks: Sequence[str] | None = None, max_floats: int = 2**25) -> dict[str, np.ndarray]:
    """Class probabilities of many models on the same rows: task -> float32 [models, rows, classes].

    `models`: a list of state dicts or a stacked dict (`stack`); `tasks` default to every head. The trunks of
    a chunk of models run as one matmul (x @ [dim, models*H]), the heads as one bmm; chunks keep the hidden
    activations under `max_floats` floats. Scores as `mtl.heads.predict_proba` does, model by model.
    """
    import torch

    stacked = models if isinstance(models, Mapping) else stack(models)
    tasks = list(tasks) if tasks is not None else task_names(stacked)
    P = {k: _tensor(v) for k, v in stacked.items()}
    X = _tensor(x)
    B, n = len(next(iter(P.values()))), len(X)
    trunk = f"{TRUNK}.0.weight" in P
    width = P[f"{TRUNK}.0.weight"].shape[1] if trunk else max(P[f"{t}.0.weight"].shape[1] for t in tasks)
    per = max(1, max_floats // max(1, n * width))  # models per chunk
    out = {t: np.empty((B, n, P[f"{t}.0.weight"].shape[1]), dtype=np.float32) for t in tasks}
    with torch.no_grad():
        for lo in range(0, B, per):
            hi = min(B, lo + per)
            h = torch.relu(_shared_input_layer(X, P[f"{TRUNK}.0.weight"][lo:hi], P[f"{TRUNK}.0.bias"][lo:hi])) if trunk else None
            for t in tasks:
                W, b = P[f"{t}.0.weight"][lo:hi], P[f"{t}.0.bias"][lo:hi]
                z = _shared_input_layer(X, W, b) if h is None else torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
                out[t][lo:hi] = torch.softmax(z, dim=-1).numpy()
    return out
