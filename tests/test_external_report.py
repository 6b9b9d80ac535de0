"""External sets on a stand-in folder (hand-written rows under the real file names), the skip, and the adaptation CV."""

from __future__ import annotations

import numpy as np
import pytest

from mtl.config import TrainConfig
from mtl.research import external
from mtl.train import train_from_csv

SPORT = ["The striker scored twice in the cup final.", "The coach praised the young goalkeeper after the match.",
         "Fans cheered as the relay team broke the record.", "The tennis champion lost in straight sets."]
POLITICS = ["The senate passed the budget bill on Tuesday.", "The minister resigned after the election defeat.",
            "Parliament debated the new immigration law.", "The president met foreign leaders at the summit."]


def test_missing_sets_are_skipped_with_a_message(tmp_path, capsys):
    assert external.report_sets(tmp_path) == {}
    assert "financial_phrasebank_sentiment.csv" in capsys.readouterr().out
    assert external.folder_or_none(tmp_path / "absent") is None and external.report_sets(None) == {}
    assert "never inside it" in capsys.readouterr().out


def test_score_table_gives_each_set_a_ci_around_its_score(tmp_path):
    folder = tmp_path / "external"
    folder.mkdir()
    rows = [f'"{t}",sports' for t in SPORT] + [f'"{t}",politics' for t in POLITICS]
    (folder / external.AGNEWS).write_text("text,topic\n" + "\n".join(rows) + "\n")
    res = train_from_csv(None, config=TrainConfig(epochs=20, device="cpu"), out=tmp_path / "m.safetensors", metrics_out=tmp_path / "m.json",
                         verbose=False)
    assert res["metrics"]["test"]["topic"]["accuracy"] > 0.9
    sets = external.load_sets(folder)
    table = external.score_table({"default": external.heads_predict(res["state"], res["meta"]["tasks"], sets)}, sets, n_boot=200)
    assert list(table["set"]) == ["AG News"] and table["n"].iloc[0] == 8 and table["metric"].iloc[0] == "accuracy"
    row = table.iloc[0]
    assert row["ci_lo"] <= row["estimate"] <= row["ci_hi"] and row["estimate"] >= 0.75
    assert external.wide(table).loc["default", "AG News"] == f"{row['estimate']:.3f} [{row['ci_lo']:.3f}, {row['ci_hi']:.3f}]"


@pytest.mark.parametrize("name", list(external.REPORT_SETS))
def test_every_report_set_names_a_task_and_a_metric_the_project_scores(name):
    file, task, metric = external.REPORT_SETS[name]
    assert file.endswith(".csv") and task in ("topic", "sentiment") and metric in ("accuracy", "macro_recall")
    assert file not in external.TRAINING_FILES or name == "BBC"  # only BBC is both reported and trained on


@pytest.mark.slow
def test_adapt_cv_scores_held_out_val_folds_with_the_base_rows_always_in_training(monkeypatch):
    """The adaptation CV (09): every held-out fold is pool (val) rows the fold's model never trained on, the base rows
    train every fold, and each epoch count is scored from one run per fold."""
    from mtl import paths
    from mtl.config import Adapt, Recipe
    from mtl.data import load_encoded
    from mtl.engine.backbone import resolve_backbone
    from mtl.engine.embed import EmbedSpec
    from mtl.research import adapt as adapt_module
    from mtl.tasks import DEFAULT_TASKS

    enc = load_encoded([paths.DATA_CSV], DEFAULT_TASKS, EmbedSpec(backend="onnx"), verbose=False)[0].split()[0]
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(enc.x))
    base = enc.rows(np.isin(np.arange(len(enc.x)), idx[:30]))
    pool = enc.rows(np.isin(np.arange(len(enc.x)), idx[30:90]) & (enc.y["sentiment"] >= 0))
    trained_on: list[set[str]] = []
    ours: dict[int, list[float]] = {}  # epoch -> macro-recall on the rows each fold held out, scored here with sklearn
    real = adapt_module.probe_then_adapt

    def spy(rows, *a, on_epoch=None, **kw):
        from sklearn.metrics import recall_score

        trained_on.append(set(rows.frame["text"]))
        held = pool.rows(~pool.frame["text"].isin(trained_on[-1]).to_numpy())

        def also_score(epoch, model, heads):
            p = adapt_module.predict_finetuned(model, heads, list(held.frame["text"]), DEFAULT_TASKS, kw.get("prefix", a[3]))["sentiment"]
            ours.setdefault(epoch, []).append(recall_score(held.y["sentiment"], p.argmax(1), labels=[0, 1, 2], average="macro", zero_division=0))
            on_epoch(epoch, model, heads)

        return real(rows, *a, on_epoch=also_score, **kw)

    monkeypatch.setattr(adapt_module, "probe_then_adapt", spy)
    recipe = Recipe("last", TrainConfig(epochs=5, device="cpu"))
    prefixes = {1: adapt_module.Prefix(resolve_backbone(), 1, "last", "cpu")}
    table = adapt_module.adapt_cv(base, pool, "sentiment", DEFAULT_TASKS, recipe, [Adapt(unfreeze=1, epochs=2)], prefixes, folds=2)
    assert list(zip(table["unfreeze"], table["epochs"])) == [(1, 1), (1, 2)]
    assert len(trained_on) == 2  # one run per fold serves both epoch counts
    for epoch, mean in zip(table["epochs"], table["cv_macro_recall_mean"]):  # the table is the mean over folds of held-out scores
        assert len(ours[epoch]) == 2 and mean == pytest.approx(np.mean(ours[epoch]), abs=1e-12), (epoch, mean, ours)
    pool_texts = set(pool.frame["text"])
    held = [pool_texts - seen for seen in trained_on]
    assert all(set(base.frame["text"]) <= seen for seen in trained_on)
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == pool_texts  # each val row is held out exactly once
