"""External report functions on a stand-in folder (hand-written rows under the real file names), and the skip."""

from __future__ import annotations

import pytest

from mtl import external
from mtl.pipeline import train_from_csv
from mtl.train import TrainConfig

SPORT = ["The striker scored twice in the cup final.", "The coach praised the young goalkeeper after the match.",
         "Fans cheered as the relay team broke the record.", "The tennis champion lost in straight sets."]
POLITICS = ["The senate passed the budget bill on Tuesday.", "The minister resigned after the election defeat.",
            "Parliament debated the new immigration law.", "The president met foreign leaders at the summit."]


def test_missing_sets_are_skipped_with_a_message(tmp_path, capsys):
    assert external.report_sets(tmp_path) == {}
    assert "financial_phrasebank_sentiment.csv" in capsys.readouterr().out


def test_checkpoint_report_gives_each_set_a_ci_around_its_score(tmp_path):
    folder = tmp_path / "external"
    folder.mkdir()
    rows = [f'"{t}",sports' for t in SPORT] + [f'"{t}",politics' for t in POLITICS]
    (folder / external.AGNEWS).write_text("text,topic\n" + "\n".join(rows) + "\n")
    res = train_from_csv(None, config=TrainConfig(epochs=20, device="cpu"), out=tmp_path / "m.safetensors", metrics_out=tmp_path / "m.json",
                         verbose=False)
    assert res["metrics"]["test"]["topic"]["accuracy"] > 0.9
    table = external.checkpoint_report({"default": tmp_path / "m.safetensors"}, folder, n_boot=200)
    assert list(table["set"]) == ["AG News"] and table["n"].iloc[0] == 8 and table["metric"].iloc[0] == "accuracy"
    row = table.iloc[0]
    assert row["ci_lo"] <= row["estimate"] <= row["ci_hi"] and row["estimate"] >= 0.75


@pytest.mark.parametrize("name", list(external.REPORT_SETS))
def test_every_report_set_names_a_task_and_a_metric_the_project_scores(name):
    file, task, metric = external.REPORT_SETS[name]
    assert file.endswith(".csv") and task in ("topic", "sentiment") and metric in ("accuracy", "macro_recall")


@pytest.mark.slow
def test_adapt_cv_report_chooses_on_val_folds_then_reads_test_once(tmp_path, monkeypatch):
    """The stretch recipe on small samples of the real files (written to tmp, never into the repo)."""
    import pandas as pd
    from conftest import external as external_file

    from mtl import data as data_module
    from mtl import paths
    from mtl.checkpoint import Checkpoint
    from mtl.heads import build_heads, state_to_numpy
    from mtl.tasks import DEFAULT_TASKS

    for name, n in ((external.BBC, 40), (external.TWEET_VAL, 60), (external.TWEET_TEST, 60)):
        pd.read_csv(external_file(name)).sample(n, random_state=0).to_csv(tmp_path / name, index=False)
    curated = pd.read_csv(paths.DATA_CSV)
    curated = curated[curated["split"] == "train"].sample(60, random_state=0)  # the curated rows are always in training: keep it small
    curated.to_csv(tmp_path / "curated.csv", index=False)
    monkeypatch.setattr(paths, "DATA_CSV", tmp_path / "curated.csv")
    opened: list[str] = []
    real = data_module.read_table
    monkeypatch.setattr(data_module, "read_table", lambda p: opened.append(str(p)) or real(p))
    model_b = Checkpoint(state_to_numpy(build_heads(DEFAULT_TASKS, 384)), {"tasks": DEFAULT_TASKS, "layers": "last", "config": {}})
    cv, result = external.adapt_cv_report(tmp_path, ("last", TrainConfig(epochs=5)), model_b, unfreezes=(1,), max_epochs=2, folds=2)
    assert list(zip(cv["unfreeze"], cv["epochs"])) == [(1, 1), (1, 2)] and cv["cv_macro_recall_mean"].between(0, 1).all()
    assert result["epochs"] in (1, 2) and result["n_test"] == 60 and result["n_train"] == 60 + 40 + 60 and result["train_seconds"] > 0
    assert result["ci_lo"] <= result["test_macro_recall"] <= result["ci_hi"] and "minus_frozen_b" in result
    test_reads = [p for p in opened if p.endswith(external.TWEET_TEST)]
    assert len(test_reads) == 1 and opened.index(test_reads[0]) == len(opened) - 1  # test is read once, after the choice
    assert not [p for p in opened if "financial_phrasebank" in p or "agnews" in p]
