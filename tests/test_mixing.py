"""Source mixing (`TrainConfig.mix`), the CV that chose the mixed-data defaults, and low-label draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_tune import REPORT_ONLY  # the report-only files, from research.external

from mtl.config import TrainConfig
from mtl.errors import MTLError
from mtl.research import curves
from mtl.train import JointLoss, row_weights


def _shares(w: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    return {s: round(float(w[sources == s].sum() / w.sum()), 4) for s in dict.fromkeys(sources)}


def test_each_mix_gives_each_source_its_documented_share_of_the_loss():
    """10 rows of source a, 90 of b: rows -> 10/90, equal -> 50/50, temperature 2 -> sqrt(10):sqrt(90) = 25/75."""
    sources = np.array(["a"] * 10 + ["b"] * 90)
    y = np.zeros(100, dtype=int)
    assert _shares(row_weights(y, sources, "rows"), sources) == {"a": 0.1, "b": 0.9}
    assert _shares(row_weights(y, sources, "equal"), sources) == {"a": 0.5, "b": 0.5}
    assert _shares(row_weights(y, sources, "2"), sources) == {"a": 0.25, "b": 0.75}
    for mix in ("rows", "equal", "2"):
        w = row_weights(y, sources, mix)
        assert w.mean() == pytest.approx(1.0) and len(set(w[:10])) == 1 and len(set(w[10:])) == 1  # equal within a source


def test_class_balance_is_within_each_source_and_unlabelled_rows_weigh_nothing():
    sources = np.array(["a"] * 8 + ["b"] * 4)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, -1])  # a: 6 of class 0, 2 of class 1; b: 3 of class 2, one unlabelled
    w = row_weights(y, sources, "equal", balance=True)
    assert w[-1] == 0
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum())  # within a, each class the same share
    assert w[:8].sum() == pytest.approx(w[8:].sum())  # equal mix: a and b the same
    one_source = row_weights(y[:8], None, "rows", balance=True)  # one source: inverse class frequency, as before mixing
    assert one_source[0] / one_source[6] == pytest.approx(2 / 6)


def test_the_joint_loss_weighs_rows_by_source_and_equals_plain_cross_entropy_without_mixing():
    import torch
    import torch.nn.functional as F

    tasks = {"sentiment": ["negative", "neutral", "positive"]}
    y = {"sentiment": np.array([0, 1, 2, 0, 1, 2, 2, 2])}
    sources = np.array(["a", "a", "a", "b", "b", "b", "b", "b"])
    out = {"sentiment": torch.randn(8, 3, generator=torch.Generator().manual_seed(0))}
    ys = {"sentiment": torch.as_tensor(y["sentiment"])}
    idx = torch.arange(8)
    plain = JointLoss(tasks, TrainConfig(balance=False), y, sources)(out, ys, idx)
    assert float(plain) == pytest.approx(float(F.cross_entropy(out["sentiment"], ys["sentiment"])), abs=1e-6)
    equal = JointLoss(tasks, TrainConfig(mix="equal", balance=False), y, sources)(out, ys, idx)
    ce = F.cross_entropy(out["sentiment"], ys["sentiment"], reduction="none")
    assert float(equal) == pytest.approx(float(0.5 * ce[:3].mean() + 0.5 * ce[3:].mean()), abs=1e-6)


@pytest.mark.parametrize("mix", ["nope", "1", "0.5", "inf", ""])
def test_a_bad_mix_is_a_one_line_error(mix, capsys):
    with pytest.raises(MTLError, match="mix: expected rows, equal, or a temperature"):
        TrainConfig(mix=mix)
    from mtl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--mix", mix])
    assert exc.value.code == 2 and "--mix: expected rows, equal, or a temperature" in capsys.readouterr().err


def test_mix_is_recorded_in_the_checkpoint_and_metrics(tmp_path):
    from mtl.checkpoint import load_checkpoint
    from mtl.cli import main

    extra = tmp_path / "topic_only.csv"
    extra.write_text("text,topic\nThe referee sent off two players in the derby.,sports\nThe senate passed the farm bill.,politics\n")
    out, metrics = tmp_path / "m.safetensors", tmp_path / "m.json"
    assert main(["train", "--data", "data/sentences.csv", "--data", str(extra), "--mix", "3", "--epochs", "2", "--device", "cpu",
                 "--out", str(out), "--metrics", str(metrics)]) == 0
    assert load_checkpoint(out).meta["config"]["mix"] == "3" and json.loads(metrics.read_text())["meta"]["config"]["mix"] == "3"
    assert "topic_only.csv:train" in json.loads(metrics.read_text())["metrics"]["by_source"]


def test_mix_changes_the_trained_model_where_several_sources_label_a_task(tmp_path):
    """--mix from the CLI: with two files labelling topic, `equal` and `rows` train other topic heads; sentiment (one
    source) and a single file are untouched by it, bit for bit."""
    from conftest import SPORT, mtl_main

    from mtl.checkpoint import load_checkpoint

    extra = tmp_path / "topic_only.csv"
    extra.write_text("text,topic\n" + "".join(f'"{t}",sports\n' for t in SPORT))
    state = {}
    for files, mix in ((2, "rows"), (2, "equal"), (1, "rows"), (1, "equal")):
        out = tmp_path / f"{files}-{mix}.safetensors"
        data = ["--data", "data/sentences.csv"] + (["--data", str(extra)] if files == 2 else [])
        r = mtl_main("train", *data, "--mix", mix, "--epochs", "3", "--device", "cpu", "--out", str(out), "--metrics", str(tmp_path / "m.json"))
        assert r.returncode == 0, r.stderr
        state[files, mix] = load_checkpoint(out).state
    two, one = (state[2, "rows"], state[2, "equal"]), (state[1, "rows"], state[1, "equal"])
    assert np.abs(two[0]["topic.0.weight"] - two[1]["topic.0.weight"]).max() > 1e-3
    np.testing.assert_array_equal(two[0]["sentiment.0.weight"], two[1]["sentiment.0.weight"])
    for key in one[0]:
        np.testing.assert_array_equal(one[0][key], one[1][key])


def test_low_label_draws_are_reproducible_from_their_seed():
    y = np.array([0] * 30 + [1] * 20 + [2] * 3 + [-1] * 10)
    a, b, c = curves.few_labels(y, 4, 11), curves.few_labels(y, 4, 11), curves.few_labels(y, 4, 12)
    assert (a == b).all() and (a != c).any()
    assert [int((a & (y == k)).sum()) for k in (0, 1, 2)] == [4, 4, 3]  # k per class, all of a smaller class
    assert (curves.few_labels(y, "all", 0) == (y >= 0)).all()
    kept = curves.with_few({"topic": y, "sentiment": y}, "topic", a)
    assert (kept["topic"][~a] == -1).all() and (kept["sentiment"] == y).all()


@pytest.mark.parametrize("where", ["stand-in", pytest.param("shared", marks=pytest.mark.external)])
def test_choosing_the_mixed_data_defaults_never_opens_a_report_only_file(where, tmp_path, opened, monkeypatch):
    """What 08's mixed-source CV reads: the curated data, BBC and TweetEval val; nothing else. Every file Python opens
    is recorded (an audit hook), on a stand-in external folder (any machine) and on ../shared where it is present."""
    from conftest import external, standin_external

    from mtl import paths
    from mtl.config import Recipe
    from mtl.engine.embed import EmbedSpec
    from mtl.research import external as ext
    from mtl.research import select
    from mtl.tasks import DEFAULT_TASKS

    folder = standin_external(tmp_path / "external") if where == "stand-in" else external(ext.BBC).parent
    monkeypatch.setenv("MTL_JOBS", "1")  # the folds in this process too, where the hook sees them
    opened.clear()
    rows = select.train_rows([paths.DATA_CSV, *ext.training_files(folder)], DEFAULT_TASKS, EmbedSpec(backend="onnx"))
    grid = [Recipe("last", TrainConfig(epochs=1, mix=m, device="cpu")) for m in ("rows", "equal")]
    table, _, _ = select.cv_select(grid, lambda _: select.all_in_folds(rows), None, folds=2, per_source=True)
    assert {"cv_bbc_sport_politics.csv:topic_macro_recall", "cv_tweeteval_sentiment_val.csv:sentiment_macro_recall"} <= set(table)
    csvs = {p for p in opened if p.endswith(".csv")}
    assert csvs == {str(p) for p in [paths.DATA_CSV, folder / ext.BBC, folder / ext.TWEET_VAL]}, csvs
    assert not [p for p in opened if p.endswith(REPORT_ONLY)]
