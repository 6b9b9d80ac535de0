"""Batched training of many small models (`mtl.research.batched`): what issue 26's design relies on.

(a) a model trained inside a batch of many equals the same model trained alone, and equals a plain per-model
    `nn.Module` loop (build_heads, torch Adam) on the same batches and dropout masks;
(b) with a trunk, weight 0 on the other task is exactly single-task (the few task's predictions match a model
    that has only the few task's rows); (c) with linear heads the few task's head ignores the other's weight;
(d) `predict` scores stacked models as `mtl.heads.predict_proba` scores each one; (e) a run is bitwise repeatable.
Plus the sampler (epoch-wise shuffles, one stream per (seed, task position)), the init (= manual_seed +
build_heads), inactive heads keeping their starting weights, and that it learns on the real embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl.config import TrainConfig
from mtl.heads import build_heads, predict_proba, state_to_numpy
from mtl.research import batched as B
from mtl.train import row_weights

TASKS = {"few": ["a", "b", "c"], "other": ["x", "y"]}
DIM, STEPS = 24, 40
TRUNK = TrainConfig(share="trunk", trunk_hidden=16, dropout=0.2, batch_size=8, lr=1e-2, weight_decay=1e-3, balance=True)
LINEAR = TrainConfig(batch_size=8, lr=1e-2, weight_decay=1e-3, balance=True)


@pytest.fixture(autouse=True)
def one_thread():
    """The reference loops' tiny matmuls on one thread (as mtl.train runs them): a second spin-waits on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    """Random unit vectors; `few` labelled on 90 rows with skewed classes (so balance matters), `other` on 100."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    few = np.full(150, -1)
    few[:90] = rng.choice(3, size=90, p=[0.5, 0.3, 0.2])
    other = np.full(150, -1)
    other[50:] = (x[50:, 0] > 0).astype(int)
    return x, {"few": few, "other": other}


def draw(y, k: int, seed: int) -> np.ndarray:
    """k rows per class of `few`."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y["few"] == c), size=k, replace=False) for c in range(3)])


def mixed_members(y) -> list[B.Member]:
    """Groups of several batch sizes (k=2 -> b=6, k=6 -> b=8), lambdas 0/0.3/1, one model without `other`."""
    other = np.flatnonzero(y["other"] >= 0)
    members = []
    for seed, (k, lam) in enumerate([(2, 1.0), (6, 0.3), (2, 0.0), (6, 1.0), (2, 0.3), (6, 0.0)]):
        members.append(B.Member({"few": draw(y, k, seed), "other": other}, {"other": lam}, seed))
    members.append(B.Member({"few": draw(y, 3, 9)}, {}, 9))
    members.append(B.Member({"other": other[:5]}, {}, 10))  # b = 5 < batch size, and `few` absent
    return members


def reference(x, y, member: B.Member, config: TrainConfig, steps: int, sources=None) -> dict[str, np.ndarray]:
    """One model as a plain nn.Module loop: build_heads after manual_seed, torch Adam, the module's batches and masks."""
    torch.manual_seed(member.seed)
    heads = build_heads(TASKS, x.shape[1], 0, config.dropout, config.trunk_width)
    opt = torch.optim.Adam(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    X, p, H = torch.as_tensor(x), config.dropout, config.trunk_width
    plan = {}
    for j, t in enumerate(TASKS):
        if member.active(t):
            rows = np.asarray(member.rows[t])
            pos = B.index_stream(member.seed, j, len(rows), min(config.batch_size, len(rows)), steps).numpy()
            w = row_weights(y[t][rows], None if sources is None else sources[rows], config.mix, config.balance)
            plan[t] = (torch.as_tensor(rows[pos]), torch.as_tensor(w[pos], dtype=torch.float32), B.dropout_generator(member.seed, j))
    masks = {}
    for s in range(steps):
        if s % B.CHUNK == 0 and H and p:
            masks = {t: B.dropout_masks(g, min(B.CHUNK, steps - s), r.shape[1], H, p) for t, (r, _, g) in plan.items()}
        loss = 0.0
        for t, (r, w, _) in plan.items():
            h = X[r[s]]
            if H:
                h = torch.relu(heads["trunk"][0](h))
                if p:
                    h = h * masks[t][s % B.CHUNK].float() / (1 - p)
            ce = F.cross_entropy(heads[t](h), torch.as_tensor(y[t])[r[s]], reduction="none")
            loss = loss + member.weight(t) * (ce * w[s]).sum() / w[s].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return state_to_numpy(heads)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_init_is_manual_seed_then_build_heads():
    for config in (TRUNK, LINEAR):
        torch.manual_seed(5)
        want = state_to_numpy(build_heads(TASKS, DIM, 0, config.dropout, config.trunk_width))
        got = {k: v.numpy() for k, v in B.init_state(TASKS, DIM, config.trunk_width, 5).items()}
        assert list(got) == list(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert not np.array_equal(B.init_state(TASKS, DIM, 16, 5)["trunk.0.weight"], B.init_state(TASKS, DIM, 16, 6)["trunk.0.weight"])


def test_index_stream_is_an_epochwise_shuffle_per_seed_and_task_position():
    s = B.index_stream(3, 1, 7, 3, 20)
    assert s.shape == (20, 3) and s.dtype == torch.int32
    flat = s.reshape(-1).numpy()
    for e in range(len(flat) // 7):  # every epoch visits each row once
        assert sorted(flat[7 * e : 7 * e + 7]) == list(range(7))
    assert torch.equal(s, B.index_stream(3, 1, 7, 3, 20))
    assert not torch.equal(s, B.index_stream(3, 0, 7, 3, 20)) and not torch.equal(s, B.index_stream(4, 1, 7, 3, 20))
    assert len({B.stream_seed(sd, j, k) for sd in range(3) for j in range(3) for k in (B.INDEX, B.DROPOUT)}) == 18


@pytest.mark.parametrize("config", [TRUNK, LINEAR], ids=["trunk", "linear"])
def test_a_model_in_a_batch_equals_it_alone_and_the_plain_module_loop(data, config):
    x, y = data
    members = mixed_members(y)
    together = B.train_many(x, y, TASKS, members, config, STEPS)
    torch.manual_seed(0)
    shapes = {k: v.shape for k, v in state_to_numpy(build_heads(TASKS, DIM, 0, config.dropout, config.trunk_width)).items()}
    for m, state in zip(members, together):
        assert {k: v.shape for k, v in state.items()} == shapes
        alone = B.train_many(x, y, TASKS, [m], config, STEPS)[0]
        assert max_diff(state, alone) < 1e-5
        assert max_diff(state, reference(x, y, m, config, STEPS)) < 1e-5
    start = B.init_state(TASKS, DIM, config.trunk_width, members[0].seed)
    assert max_diff(together[0], {k: v.numpy() for k, v in start.items()}) > 1e-2  # it trained


def test_sources_weigh_rows_as_joint_loss_does(data):
    """With `sources` and a mix, each row weighs what `row_weights` gives it (checked through the reference loop)."""
    x, y = data
    sources = np.where(np.arange(len(x)) % 3 == 0, "a.csv", "b.csv")
    config = TrainConfig(share="trunk", trunk_hidden=16, batch_size=8, mix="equal", balance=True)
    m = mixed_members(y)[1]
    got = B.train_many(x, y, TASKS, [m], config, STEPS, sources=sources)[0]
    assert max_diff(got, reference(x, y, m, config, STEPS, sources)) < 1e-5
    assert max_diff(got, B.train_many(x, y, TASKS, [m], config, STEPS)[0]) > 1e-4  # the mix does change the weights


def test_weight_zero_with_a_trunk_is_single_task(data):
    x, y = data
    few, other = draw(y, 2, 1), np.flatnonzero(y["other"] >= 0)
    members = [B.Member({"few": few, "other": other}, {"other": 0.0}, 7), B.Member({"few": few}, {}, 7),
               B.Member({"few": few, "other": other}, {"other": 0.3}, 7)]
    states = B.train_many(x, y, TASKS, members, TRUNK, STEPS)
    p = [predict_proba(s, TASKS, x)["few"] for s in states]
    assert np.abs(p[0] - p[1]).max() < 1e-6
    assert np.abs(p[0] - p[2]).max() > 1e-3  # sharing with weight 0.3 does change the few task


def test_linear_heads_few_task_head_ignores_the_other_weight(data):
    x, y = data
    few, other = draw(y, 2, 1), np.flatnonzero(y["other"] >= 0)
    members = [B.Member({"few": few, "other": other}, {"other": lam}, 7) for lam in (0.0, 0.1, 1.0)] + [B.Member({"few": few}, {}, 7)]
    states = B.train_many(x, y, TASKS, members, LINEAR, STEPS)
    for s in states[1:]:
        assert max(np.abs(s[k] - states[0][k]).max() for k in ("few.0.weight", "few.0.bias")) < 1e-6
    assert np.abs(states[1]["other.0.weight"] - states[2]["other.0.weight"]).max() > 1e-4  # the other head did train


def test_inactive_heads_keep_their_start_and_init_starts_a_second_stage(data):
    x, y = data
    few, other = draw(y, 2, 1), np.flatnonzero(y["other"] >= 0)
    stage1 = B.train_many(x, y, TASKS, [B.Member({"other": other}, {}, 3)], TRUNK, STEPS)[0]
    start = B.init_state(TASKS, DIM, 16, 3)
    assert all(np.array_equal(stage1[k], start[k].numpy()) for k in ("few.0.weight", "few.0.bias"))
    stage2 = B.Member({"few": few}, {}, 3)
    seq = B.train_many(x, y, TASKS, [stage2], TRUNK, STEPS, init=[stage1])[0]
    fresh = B.train_many(x, y, TASKS, [stage2], TRUNK, STEPS)[0]
    assert all(np.array_equal(seq[k], stage1[k]) for k in ("other.0.weight", "other.0.bias"))  # stage 1's head kept
    assert max_diff(seq, fresh) > 1e-2  # the trunk started from stage 1, not from the seed's init
    both = B.train_many(x, y, TASKS, [stage2, B.Member({"few": few}, {}, 4)], TRUNK, STEPS, init=[stage1, stage1])
    assert max_diff(both[0], seq) < 1e-5


@pytest.mark.parametrize("config", [TRUNK, LINEAR], ids=["trunk", "linear"])
def test_predict_scores_as_predict_proba(data, config):
    x, y = data
    states = B.train_many(x, y, TASKS, mixed_members(y)[:4], config, 5)
    got = B.predict(states, x)
    assert B.predict(B.stack(states), x, ["few"]).keys() == {"few"}
    for i, s in enumerate(states):
        want = predict_proba(s, TASKS, x)
        for t in TASKS:
            assert got[t].shape == (4, len(x), len(TASKS[t]))
            np.testing.assert_allclose(got[t][i], want[t], atol=1e-6)
    small = B.predict(states, x, max_floats=1)  # one model per chunk
    assert all(np.allclose(small[t], got[t], atol=1e-6) for t in TASKS)


def test_bitwise_deterministic(data):
    x, y = data
    a, b = (B.train_many(x, y, TASKS, mixed_members(y), TRUNK, STEPS) for _ in range(2))
    assert all(np.array_equal(s[k], t[k]) for s, t in zip(a, b) for k in s)


def test_bad_members_and_settings_are_refused(data):
    x, y = data
    rows = {"few": draw(y, 2, 0)}
    for members, config in (([B.Member({"few": rows["few"]}, {"few": 0.0})], LINEAR),  # no active task
                            ([B.Member({"topic": rows["few"]})], LINEAR),  # unknown task
                            ([B.Member({"few": np.array([95])})], LINEAR),  # row 95 has no `few` label
                            ([B.Member(rows)], TrainConfig(hidden=8))):
        with pytest.raises(ValueError):
            B.train_many(x, y, TASKS, members, config, 2)


def test_it_learns_on_the_real_embeddings():
    """Linear heads and a trunk on the shipped training rows reach the held-out floors' neighbourhood."""
    from mtl import paths
    from mtl.data import load_encoded
    from mtl.engine.embed import EmbedSpec
    from mtl.tasks import DEFAULT_TASKS

    enc, _ = load_encoded([paths.DATA_CSV], DEFAULT_TASKS, EmbedSpec(backend="onnx"), False)
    tr, te = enc.split()
    rows = {t: np.flatnonzero(tr.y[t] >= 0) for t in DEFAULT_TASKS}
    configs = [TrainConfig(), TrainConfig(share="trunk")]
    states = [B.train_many(tr.x, tr.y, DEFAULT_TASKS, [B.Member(rows, {}, 0)], c, 300)[0] for c in configs]
    for s in states:
        p = B.predict([s], te.x)
        for t, floor in {"topic": 0.95, "sentiment": 0.8}.items():
            m = te.y[t] >= 0
            assert (p[t][0][m].argmax(1) == te.y[t][m]).mean() >= floor, t
