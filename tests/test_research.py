"""Research code paths on small real data: CV comparison, uncertainty weighting, mixed-task files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtl.config import TrainConfig
from mtl.research.compare import METHODS, compare
from mtl.train import train_from_csv


@pytest.mark.slow
def test_comparison_table_has_every_method_and_the_heads_beat_majority(tmp_path):
    short = train_from_csv(None, config=TrainConfig(epochs=15, device="cpu"), out=tmp_path / "m.safetensors", metrics_out=tmp_path / "m.json",
                           verbose=False)
    table = compare(model=tmp_path / "m.safetensors", folds=2, out=tmp_path / "c.csv")
    assert short["meta"]["config"]["epochs"] == 15  # the heads in the table train with the checkpoint's settings
    assert set(table["method"]) == set(METHODS) and len(table) == 2 * len(METHODS)
    acc = table.set_index(["method", "task"])["test_accuracy"]
    for task in ("topic", "sentiment"):
        assert acc["multi-task heads", task] > acc["majority", task] + 0.3
    cv = table.set_index(["method", "task"])["cv_accuracy_mean"]
    assert abs(cv["majority", "sentiment"] - 1 / 3) < 0.05  # three balanced classes: majority is near 1/3
    assert abs(cv["majority", "topic"] - 1 / 2) < 0.05
    assert (cv["logistic regression"] > cv["majority"] + 0.3).all()  # the CV folds really train and score
    assert table["cv_accuracy_sd"].between(0, 0.2).all()
    assert (tmp_path / "c.csv").read_text().startswith("method,task,")


def test_uncertainty_weighting_learns_finite_task_weights(tmp_path):
    res = train_from_csv(None, config=TrainConfig(epochs=10, weighting="uncertainty", device="cpu"), out=tmp_path / "m.safetensors",
                         metrics_out=tmp_path / "m.json", verbose=False)
    topic, sentiment = res["meta"]["learned_log_vars"]  # s per task: the loss is exp(-s) * L + s, lowest at s = log L
    # both tasks' losses fall well below 1, so both s leave 0 downward; sentiment, the task with the larger loss, keeps
    # the larger s (the smaller weight): measured -2.24 (topic) and -1.42 (sentiment) after 10 epochs
    assert max(topic, sentiment) < -0.5 and sentiment > topic + 0.3, (topic, sentiment)
    assert res["metrics"]["test"]["topic"]["accuracy"] >= 0.9 and res["metrics"]["test"]["sentiment"]["accuracy"] >= 0.75


def test_static_task_weight_changes_only_that_head(tmp_path):
    a = train_from_csv(None, config=TrainConfig(epochs=3, device="cpu"), out=tmp_path / "a.safetensors", metrics_out=tmp_path / "a.json", verbose=False)
    b = train_from_csv(None, config=TrainConfig(epochs=3, task_weights={"sentiment": 0.01}, device="cpu"), out=tmp_path / "b.safetensors",
                       metrics_out=tmp_path / "b.json", verbose=False)
    assert not np.array_equal(a["state"]["sentiment.0.weight"], b["state"]["sentiment.0.weight"])
    np.testing.assert_array_equal(a["state"]["topic.0.weight"], b["state"]["topic.0.weight"])  # separate heads, separate Adam states


def test_files_with_different_task_columns_train_together(tmp_path):
    extra = tmp_path / "topic_only.csv"
    extra.write_text("text,topic\nThe referee sent off two players in the derby.,sports\nThe senate passed the farm bill.,politics\n")
    res = train_from_csv(["data/sentences.csv", extra], config=TrainConfig(epochs=5, device="cpu"), out=tmp_path / "m.safetensors",
                         metrics_out=tmp_path / "m.json", verbose=False)
    by_source = res["metrics"]["by_source"]
    assert "topic_only.csv:train" in by_source and set(by_source["topic_only.csv:train"]) == {"topic"}
    curated_train = int((pd.read_csv("data/sentences.csv")["split"] == "train").sum())
    assert res["meta"]["n_train"] == curated_train + 2
