"""Sharing modes: a shared trunk really couples the tasks, runs the same in numpy, and round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.checkpoint import load_checkpoint, save_checkpoint
from mtl.config import TrainConfig
from mtl.errors import MTLError
from mtl.heads import build_heads, forward, predict_proba, state_to_numpy
from mtl.tasks import DEFAULT_TASKS
from mtl.train import train


def _toy(n: int = 240, seed: int = 0):
    """Separable toy data: topic from one direction, sentiment from another; some labels missing."""
    rng = np.random.default_rng(seed)
    x = (0.05 * rng.normal(size=(n, 384))).astype(np.float32)
    x[:, :2] = rng.normal(size=(n, 2))  # the two label directions stand out from the noise
    topic = (x[:, 0] > 0).astype(np.int64)
    senti = np.digitize(x[:, 1], [-0.5, 0.5]).astype(np.int64)
    senti[: n // 4] = -1  # a quarter without a sentiment label: masked from the loss
    return x, {"topic": topic, "sentiment": senti}


def test_trunk_run_learns_both_tasks_and_trains_the_shared_layer():
    x, y = _toy()
    cfg = TrainConfig(epochs=30, lr=1e-3, share="trunk", trunk_hidden=32)
    heads, hist, _ = train(x[:200], {t: v[:200] for t, v in y.items()}, DEFAULT_TASKS, cfg, x[200:], {t: v[200:] for t, v in y.items()})
    assert "trunk" in heads and heads["trunk"][0].weight.shape == (32, 384) and heads["topic"][0].weight.shape == (2, 32)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] / 2
    probs = predict_proba(state_to_numpy(heads), DEFAULT_TASKS, x[200:])
    assert (probs["topic"].argmax(1) == y["topic"][200:]).mean() >= 0.85
    keep = y["sentiment"][200:] >= 0
    assert (probs["sentiment"].argmax(1)[keep] == y["sentiment"][200:][keep]).mean() >= 0.6  # chance is 1/3


def test_with_a_trunk_each_task_moves_the_other_heads_inputs():
    """The point of sharing: down-weighting sentiment changes the topic head too (without a trunk it cannot)."""
    x, y = _toy()
    for share, coupled in (("trunk", True), ("none", False)):
        a, _, _ = train(x, y, DEFAULT_TASKS, TrainConfig(epochs=3, share=share, trunk_hidden=16))
        b, _, _ = train(x, y, DEFAULT_TASKS, TrainConfig(epochs=3, share=share, trunk_hidden=16, task_weights={"sentiment": 0.01}))
        assert (not torch.equal(a["topic"][0].weight, b["topic"][0].weight)) is coupled, share


def test_numpy_forward_equals_torch_with_a_trunk_and_hidden_heads():
    torch.manual_seed(2)
    heads = build_heads(DEFAULT_TASKS, 384, hidden=8, trunk_hidden=24).eval()
    x = np.random.default_rng(2).normal(size=(6, 384)).astype(np.float32)
    probs = predict_proba(state_to_numpy(heads), DEFAULT_TASKS, x)
    with torch.no_grad():
        ref = forward(heads, torch.from_numpy(x), DEFAULT_TASKS)
    for t in DEFAULT_TASKS:
        np.testing.assert_allclose(probs[t], torch.softmax(ref[t], 1).numpy(), atol=1e-5)


def _meta(tasks=DEFAULT_TASKS) -> dict:
    return {"tasks": tasks, "embedding_dim": 384, "backbone_identity": "x"}


def test_trunk_checkpoint_round_trips_and_a_bad_trunk_is_refused(tmp_path):
    torch.manual_seed(3)
    state = state_to_numpy(build_heads(DEFAULT_TASKS, 384, trunk_hidden=24))
    save_checkpoint(tmp_path / "t.safetensors", state, _meta())
    back = load_checkpoint(tmp_path / "t.safetensors")
    x = np.random.default_rng(3).normal(size=(4, 384)).astype(np.float32)
    for t in DEFAULT_TASKS:
        np.testing.assert_array_equal(predict_proba(back.state, DEFAULT_TASKS, x)[t], predict_proba(state, DEFAULT_TASKS, x)[t])
    bad = {**state, "trunk.0.weight": state["trunk.0.weight"][:, :100]}
    save_checkpoint(tmp_path / "b.safetensors", bad, _meta())
    with pytest.raises(MTLError, match="shared trunk"):
        load_checkpoint(tmp_path / "b.safetensors")


def test_a_checkpoint_written_before_trunks_and_mixing_existed_still_loads_and_predicts():
    """tests/fixtures/heads_4bf7e09.safetensors was written by `train_from_csv` at commit 4bf7e09 (20 epochs on the
    371-row curated set of that day), before `share`, `mix` and the package layout existed."""
    from mtl.config import TrainConfig
    from mtl.predict import predict

    path = Path(__file__).parent / "fixtures" / "heads_4bf7e09.safetensors"
    ckpt = load_checkpoint(path)
    assert not any(k.startswith("trunk.") for k in ckpt.state) and "mix" not in ckpt.meta["config"]
    assert TrainConfig.from_meta(ckpt.meta["config"]).mix == TrainConfig().mix  # an old config reads with today's defaults for new fields
    rows = predict(["The striker scored twice in the cup final.", "The senate passed the budget bill."], path)
    assert [r["topic"] for r in rows] == ["sports", "politics"]


@pytest.mark.parametrize("kw, needle", [({"share": "both"}, "share: expected one of none, trunk"),
                                        ({"trunk_hidden": 0}, "trunk_hidden: expected a positive integer")])
def test_bad_sharing_settings_are_one_line_errors(kw, needle):
    with pytest.raises(MTLError, match=needle):
        TrainConfig(**kw)


def test_a_task_named_trunk_is_refused_with_a_trunk():
    with pytest.raises(MTLError, match="may not be named 'trunk'"):
        build_heads({"trunk": ["a", "b"]}, 384, trunk_hidden=8)


def test_trunk_rows_of_the_comparison_train_a_shared_trunk_or_one_per_task(monkeypatch):
    """`fit_predict` builds what each row's name says: one trunk for both tasks, or one per task."""
    import mtl.train as train_module
    from mtl.research import compare

    built = []
    real = train_module.train  # fit_predict imports train at call time, so patching the module is seen

    def spy(x, y, tasks, config, *rest, **kw):
        built.append((tuple(tasks), config.share))
        return real(x, y, tasks, config, *rest, **kw)

    monkeypatch.setattr(train_module, "train", spy)
    x, y = _toy(60)
    cfg = TrainConfig(epochs=1, trunk_hidden=8)
    multi = compare.fit_predict("multi-task trunk", x, y, x, DEFAULT_TASKS, cfg)
    compare.fit_predict("single-task trunk", x, y, x, DEFAULT_TASKS, cfg)
    assert built == [(("topic", "sentiment"), "trunk"), (("topic",), "trunk"), (("sentiment",), "trunk")]
    assert multi["sentiment"].shape == (60,)


@pytest.mark.slow
def test_adapted_modes_learn_and_single_task_adapts_one_backbone_per_task(monkeypatch):
    """Sharing mode (b) on real text: a tiny run beats the majority class on held-out rows, and the
    single-task counterpart adapts one backbone copy per task, each on that task's rows only."""
    from mtl import paths
    from mtl.config import Adapt, Recipe
    from mtl.data import Encoded, load_encoded
    from mtl.engine.backbone import resolve_backbone
    from mtl.engine.embed import EmbedSpec
    from mtl.research import adapt as adapt_module

    enc, _ = load_encoded([paths.DATA_CSV], DEFAULT_TASKS, EmbedSpec(backend="onnx"), verbose=False)
    tr, te = enc.split()
    tr_rows = np.flatnonzero((tr.y["topic"] >= 0) & (tr.y["sentiment"] >= 0))[::4][:70]  # 70 rows with both labels keep it fast
    rows = tr.rows(np.isin(np.arange(len(tr.x)), tr_rows))
    rows = Encoded(rows.frame, rows.x, {t: v.copy() for t, v in rows.y.items()})
    rows.y["sentiment"][:10] = -1  # some rows without a sentiment label: masked out
    calls = []
    real = adapt_module.finetune
    monkeypatch.setattr(adapt_module, "finetune", lambda t, y, tasks, *a, **kw: calls.append((list(tasks), len(t))) or real(t, y, tasks, *a, **kw))
    recipe, adapt = Recipe("last", TrainConfig(epochs=30, lr=1e-2, device="cpu")), Adapt(unfreeze=1, epochs=1)
    prefix = adapt_module.Prefix(resolve_backbone(), 1, "last", "cpu")
    te_texts = list(te.frame["text"])
    multi = adapt_module.adapt_predict("multi-task adapted", rows, te_texts, DEFAULT_TASKS, recipe, adapt, prefix)
    single = adapt_module.adapt_predict("single-task adapted", rows, te_texts, DEFAULT_TASKS, recipe, adapt, prefix)
    assert calls == [(["topic", "sentiment"], 70), (["topic"], 70), (["sentiment"], 60)]
    for preds in (multi, single):
        for task in DEFAULT_TASKS:
            keep = te.y[task] >= 0
            acc = (preds[task][keep] == te.y[task][keep]).mean()
            majority = np.bincount(te.y[task][keep]).max() / keep.sum()
            assert acc >= majority + 0.3, (task, acc, majority)
