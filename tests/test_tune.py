"""`mtl train --tune` and the knob flags: the choice and CV table are recorded; FPB/AG are never read."""

from __future__ import annotations

import json

import pytest

from mtl import data as data_module
from mtl.checkpoint import load_checkpoint
from mtl.cli import main
from mtl.config import Recipe, TrainConfig
from mtl.research import select

REPORT_ONLY = ("financial_phrasebank", "agnews")  # cross-domain test sets: no training, selection or thresholds


def _tiny_grid(seed: int = 0, **kw):
    """Two candidates CV must tell apart: one that barely moves from its initialisation, one that learns."""
    return [Recipe("last", TrainConfig(epochs=1, lr=1e-6, batch_size=64, seed=seed)),
            Recipe("last", TrainConfig(epochs=8, lr=1e-3, batch_size=32, seed=seed, share="trunk", trunk_hidden=32, balance=True))]


@pytest.fixture
def opened(monkeypatch):
    """Every path `read_table` (hence `load_dataset`) opens during the test."""
    seen: list[str] = []
    real = data_module.read_table

    def spy(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(data_module, "read_table", spy)
    return seen


def test_tune_records_its_choice_and_cv_table_and_never_reads_report_only_sets(tmp_path, monkeypatch, opened, capsys):
    monkeypatch.setattr(select, "candidates", _tiny_grid)
    out, metrics = tmp_path / "m.safetensors", tmp_path / "m.json"
    assert main(["train", "--tune", "--tune-folds", "2", "--device", "cpu", "--out", str(out), "--metrics", str(metrics)]) == 0
    tune = load_checkpoint(out).meta["tune"]
    assert tune["chosen"] == 1 and tune["folds"] == 2 and len(tune["cv_table"]) == 2
    cv = [row["cv_macro_recall_mean"] for row in tune["cv_table"]]
    assert cv[1] > cv[0] + 0.3 and cv[1] > 0.8  # the learning candidate wins on held-out folds, by a margin
    assert {"cv_sentences.csv:topic_macro_recall", "cv_sentences.csv:sentiment_macro_recall"} <= set(tune["cv_table"][0])
    cfg = json.loads(metrics.read_text())["meta"]["config"]
    assert (cfg["share"], cfg["trunk_hidden"], cfg["lr"], cfg["balance"]) == ("trunk", 32, 1e-3, True)  # trained the choice
    assert json.loads(metrics.read_text())["meta"]["tune"] == tune
    assert "chose candidate 1" in capsys.readouterr().err
    assert opened and not [p for p in opened if any(name in p for name in REPORT_ONLY)]


def test_knob_flags_reach_the_checkpoint(tmp_path, opened):
    out, metrics = tmp_path / "m.safetensors", tmp_path / "m.json"
    assert main(["train", "--epochs", "2", "--class-balanced", "--weight-decay", "0.001", "--share", "trunk", "--trunk-hidden", "16",
                 "--device", "cpu", "--out", str(out), "--metrics", str(metrics)]) == 0
    cfg = load_checkpoint(out).meta["config"]
    assert (cfg["balance"], cfg["weight_decay"], cfg["share"], cfg["trunk_hidden"]) == (True, 0.001, "trunk", 16)
    assert load_checkpoint(out).state["trunk.0.weight"].shape == (16, 384)
    assert not [p for p in opened if any(name in p for name in REPORT_ONLY)]


@pytest.mark.parametrize("argv, needle", [(["--share", "both"], "--share: invalid choice"),
                                          (["--trunk-hidden", "0"], "--trunk-hidden: expected a positive integer"),
                                          (["--weight-decay", "-1"], "--weight-decay: expected a number >= 0"),
                                          (["--tune-folds", "1"], "--tune-folds: expected an integer >= 2")])
def test_bad_knob_flags_are_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_leave_one_domain_out_holds_each_domain_out_once_and_reads_only_curated_data(monkeypatch, opened):
    """How the default weight decay and prior were chosen (notebook 08): leave-one-domain-out CV on the curated train rows."""
    from dataclasses import replace

    import pandas as pd

    from mtl import paths
    from mtl import train as train_module

    fits: list[int] = []
    real = train_module.train

    def quick(x, y, tasks, cfg, *args, **kw):  # one epoch: this checks the folds, not the scores
        fits.append(len(x))
        return real(x, y, tasks, replace(cfg, epochs=1), *args, **kw)

    monkeypatch.setattr(train_module, "train", quick)
    from mtl.engine.embed import EmbedSpec
    from mtl.prior import prototypes
    from mtl.tasks import DEFAULT_TASKS

    rows = select.train_rows([paths.DATA_CSV], DEFAULT_TASKS, EmbedSpec(backend="onnx"))
    grid = [Recipe("last", TrainConfig(prior=p, weight_decay=1e-2)) for p in ("none", "descriptions")]
    protos = prototypes(DEFAULT_TASKS, EmbedSpec(backend="onnx"))
    table, best, recipe = select.cv_select(grid, lambda _: select.all_in_folds(rows), "sentiment", "accuracy", by_domain=True,
                                           prior_for=lambda _: protos, jobs=1)  # in this process, so the spy sees every fit
    layers, cfg = recipe.layers, recipe.train
    df = pd.read_csv(paths.DATA_CSV)
    sizes = df[df["split"] == "train"].groupby("domain").size()
    assert sorted(fits) == sorted(2 * [int(sizes.sum() - n) for n in sizes])  # per candidate: each domain held out once
    assert list(table["prior"]) == ["none", "descriptions"] and "cv_accuracy_mean" in table
    assert cfg == TrainConfig(prior=cfg.prior, weight_decay=1e-2) and layers == "last"
    assert opened and not [p for p in opened if any(name in p for name in REPORT_ONLY)]
