"""Model tests: masking, heads, checkpoints, determinism, held-out accuracy, behaviour, encoder equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SENTENCES

from mtl import paths
from mtl.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from mtl.config import TrainConfig
from mtl.engine.embed import EmbedSpec, encode
from mtl.errors import MTLError
from mtl.heads import build_heads, predict_proba, state_to_numpy
from mtl.predict import predict
from mtl.tasks import DEFAULT_TASKS, MIN_HELD_OUT_ACCURACY
from mtl.train import train


def test_all_missing_labels_for_a_task_give_finite_loss_and_no_gradient():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 384)).astype(np.float32)
    y = {"topic": np.array([0, 1] * 4), "sentiment": np.full(8, -1)}
    heads, hist, _ = train(x, y, DEFAULT_TASKS, TrainConfig(epochs=1, batch_size=8))
    assert np.isfinite(hist[0]["train_loss"])
    # the sentiment head never received a gradient, so it kept its initial weights
    torch.manual_seed(0)
    fresh = build_heads(DEFAULT_TASKS, 384)
    assert torch.equal(heads["sentiment"][0].weight, fresh["sentiment"][0].weight)
    assert not torch.equal(heads["topic"][0].weight, fresh["topic"][0].weight)


def test_numpy_inference_matches_torch_heads():
    torch.manual_seed(1)
    heads = build_heads(DEFAULT_TASKS, 384, hidden=16).eval()
    x = np.random.default_rng(1).normal(size=(5, 384)).astype(np.float32)
    probs = predict_proba(state_to_numpy(heads), DEFAULT_TASKS, x)
    with torch.no_grad():
        ref = torch.softmax(heads["sentiment"](torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(probs["sentiment"], ref, atol=1e-5)


def test_default_training_reaches_held_out_thresholds(trained):
    test = trained["metrics"]["test"]
    for task, least in MIN_HELD_OUT_ACCURACY.items():
        assert test[task]["accuracy"] >= least, (task, test[task]["accuracy"])
    assert trained["meta"]["n_test"] > 80  # scored on the held-out split, not the training rows


def test_checkpoint_is_small_heads_only_and_round_trips(trained, tmp_path):
    path = trained["path"]
    assert path.stat().st_size < 100_000
    ckpt = load_checkpoint(path)
    assert ckpt.tasks == DEFAULT_TASKS and ckpt.meta["embedding_dim"] == 384
    assert all(k.split(".")[0] in DEFAULT_TASKS for k in ckpt.state)  # no backbone tensors
    for k, v in trained["state"].items():
        np.testing.assert_array_equal(ckpt.state[k], v)
    save_checkpoint(tmp_path / "copy.safetensors", ckpt.state, {k: v for k, v in ckpt.meta.items() if k != "format"})
    assert load_checkpoint(tmp_path / "copy.safetensors").meta == ckpt.meta


def test_checkpoint_for_other_backbone_or_labels_is_refused(trained):
    ckpt = load_checkpoint(trained["path"])
    with pytest.raises(MTLError, match="trained on backbone"):
        check_compatible(ckpt, "m", "other-model-123", 384)
    with pytest.raises(MTLError, match="768-d"):
        check_compatible(ckpt, "m", ckpt.meta["backbone_identity"], 768)


def test_same_seed_same_numbers_different_seed_recorded(tmp_path):
    from mtl.train import train_from_csv

    runs = [
        train_from_csv(None, config=TrainConfig(epochs=20, seed=s, device="cpu"), out=tmp_path / f"m{i}.safetensors", metrics_out=tmp_path / f"m{i}.json", verbose=False)
        for i, s in enumerate((7, 7, 8))
    ]
    assert runs[0]["metrics"] == runs[1]["metrics"]
    for k in runs[0]["state"]:
        np.testing.assert_array_equal(runs[0]["state"][k], runs[1]["state"][k])
    assert (tmp_path / "m0.safetensors").read_bytes() == (tmp_path / "m1.safetensors").read_bytes()
    assert any(not np.array_equal(runs[0]["state"][k], runs[2]["state"][k]) for k in runs[0]["state"])
    assert load_checkpoint(tmp_path / "m2.safetensors").meta["config"]["seed"] == 8


@pytest.mark.parametrize(
    "a, b",
    [
        ("The striker scored a brilliant winner in the last minute.", "In the final minute the forward netted a superb winning goal."),
        ("Parliament will vote on the budget on Tuesday.", "On Tuesday, MPs will hold a vote on the budget."),
        ("Fans were furious about the awful refereeing.", "Supporters were angry at the terrible decisions by the referee."),
    ],
)
def test_rewording_keeps_labels(trained, a, b):
    ra, rb = predict([a, b], trained["path"])
    for task in DEFAULT_TASKS:
        assert ra[task] == rb[task], (task, ra, rb)


def test_changing_a_name_keeps_labels_and_flipping_sentiment_changes_it(trained):
    rows = predict(
        [
            "The minister's brilliant reform was warmly welcomed by voters.",
            "The senator's brilliant reform was warmly welcomed by voters.",
            "The minister's disastrous reform was angrily condemned by voters.",
        ],
        trained["path"],
    )
    assert rows[0]["topic"] == rows[1]["topic"] == rows[2]["topic"] == "politics"
    assert rows[0]["sentiment"] == rows[1]["sentiment"] == "positive"
    assert rows[2]["sentiment"] == "negative"



@pytest.mark.slow
def test_layer_average_is_the_same_on_both_backends_and_differs_from_last(cache_dir):
    ref, stats = encode(SENTENCES, EmbedSpec(backend="torch", cache_dir=cache_dir, layers="4-6"))
    fast, fstats = encode(SENTENCES, EmbedSpec(backend="onnx", cache_dir=cache_dir, layers="4-6"))
    last, lstats = encode(SENTENCES, EmbedSpec(backend="onnx", cache_dir=cache_dir))
    assert (stats.layers, fstats.layers, lstats.layers) == ("4-6", "4-6", "last")
    assert lstats.encoded == len(SENTENCES)  # layer choices never share cache entries
    assert (ref * fast).sum(1).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1, atol=1e-5)
    assert (fast * last).sum(1).max() < 0.95
    same, sstats = encode(SENTENCES, EmbedSpec(backend="onnx", cache_dir=cache_dir, layers="6"))  # layer 6 alone is the standard embedding
    assert sstats.layers == "last" and sstats.encoded == 0


@pytest.mark.parametrize("spec, want", [("last", None), ("6", None), ("6-6", None), ("4-6", (4, 6)), ("3", (3, 3)), (" 1-6 ", (1, 6))])
def test_parse_layers(spec, want):
    from mtl.engine.backbone import parse_layers

    assert parse_layers(spec, 6) == want


@pytest.mark.parametrize("spec", ["0-3", "4-9", "5-4", "a-b", "", "4-", "-6"])
def test_parse_layers_rejects(spec):
    from mtl.engine.backbone import parse_layers

    with pytest.raises(MTLError, match="--layers"):
        parse_layers(spec, 6)


@pytest.mark.parametrize(
    "raw, want",
    [
        ("I love it 😍", "I love it smiling face with heart-shaped eyes"),
        ("nice 👍🏽 🇺🇸!", "nice thumbs up sign !"),  # skin tone and flag letters carry no sentiment
        ("so sad ❤️", "so sad heavy black heart"),  # variation selector dropped
        ("Don\\u2019t stop\\u002c ok &amp; go", "Don\u2019t stop, ok & go"),  # scraping artefacts undone
        ("\\ud83d\\ude02 lol", "face with tears of joy lol"),  # escaped surrogate pair
        ("Café “quoted” – fine", "Café “quoted” – fine"),  # ordinary Unicode text is untouched
    ],
)
def test_backbone_text_spells_out_emoji_the_vocabulary_lacks(raw, want):
    from mtl.engine.tokens import backbone_text

    assert backbone_text(raw) == want


def test_plain_text_reaches_the_backbone_unchanged():
    from mtl.engine.tokens import backbone_text

    text = "The striker scored twice in the derby."
    assert backbone_text(text) is text


def test_emoji_now_move_the_embedding(cache_dir):
    """Before spelling them out, "so sad 😢" and "so sad 🎉" both read "so sad [UNK]"."""
    x, _ = encode(["what a day 😢", "what a day 🎉"], EmbedSpec(cache_dir=cache_dir))
    assert float(x[0] @ x[1]) < 0.95


def test_cache_encodes_only_new_texts(cache_dir):
    spec = EmbedSpec(cache_dir=cache_dir)  # whatever `auto` (or $MTL_BACKEND) is on this machine
    _, first = encode(SENTENCES[:3], spec)
    x, second = encode(SENTENCES + SENTENCES[:1], spec)
    assert (first.encoded, first.cached) == (3, 0)
    assert (second.encoded, second.cached) == (2, 3)
    assert x.shape == (len(SENTENCES) + 1, 384)
    np.testing.assert_array_equal(x[0], x[-1])  # a repeated text is one vector
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-3)


def test_corrupt_cache_file_is_detected_and_re_encoded(cache_dir):
    spec = EmbedSpec(cache_dir=cache_dir)
    x, _ = encode(SENTENCES, spec)
    db = next((cache_dir / "embeddings").rglob("cache.sqlite"))
    data = bytearray(db.read_bytes())
    data[:16] = b"not a database!!"  # the SQLite header: the whole file is unreadable
    db.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        y, stats = encode(SENTENCES, spec)
    assert stats.encoded == len(SENTENCES)
    assert (x * y).sum(1).min() >= 0.9999


def test_shipped_data_uses_the_project_cache():
    """After one encode, the project cache answers every shipped sentence (notebooks rely on it)."""
    from mtl.data import load_dataset

    texts = list(load_dataset(paths.DATA_CSV)["text"])
    encode(texts)
    _, stats = encode(texts)
    assert stats.encoded == 0 and stats.cached == len(texts)


@pytest.mark.slow
def test_finetune_trains_only_the_top_layers_and_pools_like_the_frozen_path(tmp_path):
    import copy

    from helpers import torch_embedding

    from mtl.config import Adapt, Recipe
    from mtl.data import label_ids, load_dataset
    from mtl.engine.backbone import resolve_backbone, sentence_transformer
    from mtl.engine.tokens import backbone_text
    from mtl.research.adapt import Prefix, finetune, predict_finetuned

    df = load_dataset(paths.DATA_CSV).head(40)
    y = label_ids(df, DEFAULT_TASKS)
    x, _ = encode(list(df["text"]), EmbedSpec(backend="torch", cache_dir=tmp_path, layers="4-6"))
    init = train(x, y, DEFAULT_TASKS, TrainConfig(epochs=5, device="cpu"))[0]
    before = copy.deepcopy(init.state_dict())

    backbone = resolve_backbone()
    fresh = sentence_transformer(backbone)
    with torch.no_grad():
        same = torch_embedding(fresh, list(df["text"][:5]), (4, 6)).numpy()
    assert (same * x[:5]).sum(1).min() >= 0.9999  # fine-tuning starts from exactly the frozen features
    from mtl.engine.backbone import tokenize
    from mtl.engine.tokens import tokenizer

    long = "word " * 400  # both tokenisers cut at the backbone's maximum length (Backbone.max_length, its one home)
    assert tokenize(fresh, [long])["input_ids"].shape[1] == len(tokenizer(backbone).encode(long).ids) == backbone.max_length == 256

    seen = []  # on_epoch runs after each epoch, in eval mode (CV scores every epoch count from one run)
    prefix = Prefix(backbone, 1, "4-6", "cpu")
    model, heads, _ = finetune(list(df["text"]), y, DEFAULT_TASKS, Recipe("4-6", TrainConfig(device="cpu")), Adapt(unfreeze=1, epochs=2), prefix,
                               init_heads=init, verbose=False, on_epoch=lambda e, m, h: seen.append((e, m.training, h.training)))
    assert seen == [(1, False, False), (2, False, False)]
    assert (prefix.frozen, prefix.span) == (5, (4, 6))
    with torch.no_grad():  # the stored frozen-layer states + top layer give what the whole backbone gives
        texts = [backbone_text(t) for t in df["text"][:7]]
        np.testing.assert_allclose(prefix.embedding(model, texts).numpy(), torch_embedding(model, texts, (4, 6)).numpy(), atol=2e-5)
    old, new = fresh[0].auto_model.encoder.layer, model[0].auto_model.encoder.layer
    assert all(torch.equal(a, b) for i in range(5) for a, b in zip(old[i].parameters(), new[i].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(old[5].parameters(), new[5].parameters()))
    assert all(torch.equal(before[k], v) for k, v in init.state_dict().items())  # the caller's heads are copied, not changed
    probs = predict_finetuned(model, heads, ["A late goal won the cup 😍", "The vote was delayed."], DEFAULT_TASKS, prefix)
    assert probs["sentiment"].shape == (2, 3)
    np.testing.assert_allclose(probs["topic"].sum(1), 1, atol=1e-5)


@pytest.fixture(scope="module")
def curated_train():
    """Curated train rows, their (cached) embeddings and the label-description vectors."""
    from mtl.data import load_encoded
    from mtl.prior import prototypes

    spec = EmbedSpec(backend="onnx")
    tr = load_encoded([paths.DATA_CSV], DEFAULT_TASKS, spec, verbose=False)[0].split()[0]
    return tr, prototypes(DEFAULT_TASKS, spec)


def test_prior_head_starts_as_the_zero_shot_classifier_and_learns_away_from_it(curated_train):
    from mtl.prior import zero_shot

    tr, protos = curated_train
    m = tr.y["sentiment"] >= 0
    x, y = tr.x[m], {"sentiment": tr.y["sentiment"][m]}
    one = {"sentiment": DEFAULT_TASKS["sentiment"]}
    zs = zero_shot(x, protos["sentiment"])

    def fit(**kw):
        heads, _, _ = train(x, y, one, TrainConfig(prior="descriptions", **kw), prior=protos)
        return predict_proba(state_to_numpy(heads), one, x)["sentiment"].argmax(1)

    assert (fit(epochs=1, lr=1e-7) == zs).all()  # Δ = 0: exactly the zero-shot classifier, folded into a plain head
    assert (fit(epochs=20, weight_decay=1.0) == zs).mean() >= 0.9  # strong decay keeps it near the prior
    free = fit(epochs=30, weight_decay=0.0)
    assert (free == y["sentiment"]).mean() >= (zs == y["sentiment"]).mean() + 0.2  # weak decay: it learns from the rows


def test_prior_needs_its_vectors_and_linear_heads(curated_train):
    tr, _ = curated_train
    with pytest.raises(MTLError, match="label-description vectors"):
        train(tr.x, tr.y, DEFAULT_TASKS, TrainConfig(epochs=1, prior="descriptions"))
    with pytest.raises(MTLError, match="needs linear heads"):
        TrainConfig(prior="descriptions", share="trunk")


def test_by_group_scores_each_domain_on_its_labelled_rows_only():
    import pandas as pd

    from mtl.evaluate import by_group

    frame = pd.DataFrame({"text": list("abcd"), "topic": ["sports", "politics", None, None],
                          "sentiment": ["positive", "negative", "neutral", "neutral"], "domain": ["x", "x", "y", "y"]})
    probs = {"topic": np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.5, 0.5]]),
             "sentiment": np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=float)}
    table = by_group(frame, probs, DEFAULT_TASKS)
    assert table.loc["x", "topic accuracy"] == "0.500" and table.loc["x", "topic n"] == 2
    assert table.loc["y", "topic n"] == "" and table.loc["y", "sentiment accuracy"] == "0.500"
    assert table.loc["x", "sentiment accuracy"] == "1.000"


def test_a_layer_choice_travels_from_training_to_predict(tmp_path):
    """Fast counterpart of the CLI test: heads trained on layers 4-6 are fed layers 4-6 by `predict`, which the
    caller does not name (the checkpoint does)."""
    from mtl.train import train_from_csv

    out = tmp_path / "m.safetensors"
    train_from_csv(None, config=TrainConfig(epochs=3, device="cpu"), spec=EmbedSpec(backend="onnx", layers="4-6"), out=out,
                   metrics_out=tmp_path / "m.json", verbose=False)
    ckpt = load_checkpoint(out)
    assert ckpt.layers == "4-6"
    texts = ["The striker scored twice in a wonderful win.", "The council will vote on the budget on Monday."]
    rows = predict(texts, out, EmbedSpec(backend="onnx"))
    x46, x_last = (encode(texts, EmbedSpec(backend="onnx", layers=lay))[0] for lay in ("4-6", "last"))
    for task in DEFAULT_TASKS:
        got = np.array([list(r[f"{task}_probs"].values()) for r in rows])
        np.testing.assert_allclose(got, predict_proba(ckpt.state, ckpt.tasks, x46)[task], atol=1e-4)
        assert np.abs(got - predict_proba(ckpt.state, ckpt.tasks, x_last)[task]).max() > 1e-3  # the wrong layers would differ
