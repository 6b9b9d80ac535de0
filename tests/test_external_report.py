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
