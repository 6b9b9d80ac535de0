"""`mtl train --tune` (and `--target`) and the knob flags: the choice and CV table are recorded; the report-only sets
(TweetEval test, Financial PhraseBank, AG News) are never opened by training or selection code."""

from __future__ import annotations

import json

import pytest
from conftest import mtl_main, standin_external

from mtl.checkpoint import load_checkpoint
from mtl.cli import main
from mtl.config import Recipe, TrainConfig
from mtl.research import external, select

# The report-only files: what research.external reports and never trains on (its one home; BBC is both).
REPORT_ONLY = tuple(file for file, _, _ in external.REPORT_SETS.values() if file not in external.TRAINING_FILES)


def test_report_only_names_every_cross_domain_test_set():
    assert set(REPORT_ONLY) == {external.TWEET_TEST, external.FPB, external.AGNEWS}


def reads_report_only(opened: list[str]) -> list[str]:
    return [p for p in opened if p.endswith(REPORT_ONLY)]


def _tiny_grid(seed: int = 0, **kw):
    """Two candidates CV must tell apart: one that barely moves from its initialisation, one that learns."""
    return [Recipe("last", TrainConfig(epochs=1, lr=1e-6, batch_size=64, seed=seed)),
            Recipe("last", TrainConfig(epochs=8, lr=1e-3, batch_size=32, seed=seed, share="trunk", trunk_hidden=32, balance=True))]


def test_tune_records_its_choice_and_cv_table_and_never_reads_report_only_sets(tmp_path, monkeypatch, opened):
    monkeypatch.setattr(select, "candidates", _tiny_grid)
    monkeypatch.setenv("MTL_JOBS", "1")  # four tiny fits: starting worker processes would cost more than they save
    out, metrics = tmp_path / "m.safetensors", tmp_path / "m.json"
    r = mtl_main("train", "--tune", "--tune-folds", "2", "--device", "cpu", "--out", str(out), "--metrics", str(metrics))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr  # no training flag was given, so --tune replaced none
    tune = load_checkpoint(out).meta["tune"]
    assert tune["chosen"] == 1 and tune["folds"] == 2 and len(tune["cv_table"]) == 2
    cv = [row["cv_macro_recall_mean"] for row in tune["cv_table"]]
    assert cv[1] > cv[0] + 0.3 and cv[1] > 0.8  # the learning candidate wins on held-out folds, by a margin
    assert {"cv_sentences.csv:topic_macro_recall", "cv_sentences.csv:sentiment_macro_recall"} <= set(tune["cv_table"][0])
    cfg = json.loads(metrics.read_text())["meta"]["config"]
    assert (cfg["share"], cfg["trunk_hidden"], cfg["lr"], cfg["balance"]) == ("trunk", 32, 1e-3, True)  # trained the choice
    assert json.loads(metrics.read_text())["meta"]["tune"] == tune and tune["target"] is None
    assert "chose candidate 1" in r.stderr
    assert any(p.endswith("sentences.csv") for p in opened) and not reads_report_only(opened)


def test_tune_warns_which_explicit_training_flags_it_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(select, "candidates", _tiny_grid)
    monkeypatch.setenv("MTL_JOBS", "1")
    r = mtl_main("train", "--tune", "--tune-folds", "2", "--lr", "0.5", "--mix=equal", "--no-class-balanced", "--seed", "3", "--device", "cpu",
                 "--out", str(tmp_path / "m.safetensors"), "--metrics", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning: --tune:")]
    assert len(warned) == 1 and "--lr, --mix, --no-class-balanced replaced by the settings the CV chooses" in warned[0], r.stderr
    cfg = load_checkpoint(tmp_path / "m.safetensors").meta["config"]
    assert (cfg["lr"], cfg["mix"], cfg["balance"], cfg["seed"]) == (1e-3, "rows", True, 3)  # the choice's, and --seed applied


def test_tune_target_scores_only_that_files_held_out_folds_and_trains_on_every_file(tmp_path, monkeypatch, opened):
    """`--tune --target FILE`: every fold trains on the rows of all files, only FILE's held-out rows are scored, and the
    target is recorded. Run on a stand-in external folder (any machine); the report-only files beside it stay closed."""
    from mtl import paths
    from mtl import train as train_module

    folder = standin_external(tmp_path / "external")
    opened.clear()  # from here on: what mtl opens
    bbc, tweets = folder / external.BBC, folder / external.TWEET_VAL
    monkeypatch.setattr(select, "candidates", _tiny_grid)
    fits: list[tuple[int, set]] = []
    real = train_module.train
    monkeypatch.setattr(train_module, "train", lambda x, *a, sources=None, **kw: fits.append((len(x), set(sources))) or real(x, *a, sources=sources, **kw))
    monkeypatch.setenv("MTL_JOBS", "1")  # the folds train in this process, so the spy sees them
    out, metrics = tmp_path / "m.safetensors", tmp_path / "m.json"
    r = mtl_main("train", "--data", str(paths.DATA_CSV), "--data", str(bbc), "--data", str(tweets), "--tune", "--target", str(tweets),
                 "--tune-folds", "2", "--device", "cpu", "--out", str(out), "--metrics", str(metrics))
    assert r.returncode == 0, r.stderr
    tune = load_checkpoint(out).meta["tune"]
    assert tune["target"] == str(tweets) and json.loads(metrics.read_text())["meta"]["tune"] == tune
    for row in tune["cv_table"]:
        scored = [k for k in row if k.startswith("cv_") and ":" in k]  # cv_<source>:<task>_<metric>
        assert scored == ["cv_tweeteval_sentiment_val.csv:sentiment_macro_recall"], row  # the target's task, nothing else
        assert row["cv_macro_recall_mean"] == pytest.approx(row[scored[0]])
    rows = len(select.train_rows([paths.DATA_CSV, bbc, tweets], select.DEFAULT_TASKS, select.EmbedSpec()).x)
    files = {"sentences.csv", external.BBC, external.TWEET_VAL}
    assert len(fits) == 2 * 2 + 1 and fits[-1] == (rows, files)  # 2 candidates x 2 folds, then the chosen one on every row
    for a, b in (fits[0:2], fits[2:4]):
        assert a[0] + b[0] == rows and a[1] == b[1] == files  # each fold trains on its share of every file
    assert "mean macro-recall over the tasks of tweeteval_sentiment_val.csv (the --target)" in r.stderr
    assert set(p for p in opened if p.startswith(str(folder))) == {str(bbc), str(tweets)}
    assert not reads_report_only(opened)


@pytest.mark.parametrize("argv, needle", [
    (["--tune", "--target", "data/test_sentences.txt"], "--target data/test_sentences.txt: not one of the --data files (data/sentences.csv)"),
    (["--target", "data/sentences.csv"], "--target: only with --tune"),
])
def test_a_bad_target_is_a_one_line_error(argv, needle):
    r = mtl_main("train", "--data", "data/sentences.csv", *argv)
    assert r.returncode == 2 and r.stderr == f"mtl train: error: {needle}\n", r.stderr


def test_knob_flags_reach_the_checkpoint(tmp_path, opened):
    out, metrics = tmp_path / "m.safetensors", tmp_path / "m.json"
    assert main(["train", "--epochs", "2", "--class-balanced", "--weight-decay", "0.001", "--share", "trunk", "--trunk-hidden", "16",
                 "--device", "cpu", "--out", str(out), "--metrics", str(metrics)]) == 0
    cfg = load_checkpoint(out).meta["config"]
    assert (cfg["balance"], cfg["weight_decay"], cfg["share"], cfg["trunk_hidden"]) == (True, 0.001, "trunk", 16)
    assert load_checkpoint(out).state["trunk.0.weight"].shape == (16, 384)
    assert not reads_report_only(opened)


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
    assert any(p.endswith("sentences.csv") for p in opened) and not reads_report_only(opened)
