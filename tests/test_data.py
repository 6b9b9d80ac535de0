"""Data tests: the shipped CSV keeps its data card's promises; loading rejects bad input clearly."""

from __future__ import annotations

import pandas as pd
import pytest

from mtl import paths
from mtl.data import label_ids, load_dataset, normalise
from mtl.errors import MTLError
from mtl.inputs import read_all
from mtl.tasks import DEFAULT_TASKS, parse_tasks


@pytest.fixture(scope="module")
def df():
    return load_dataset(paths.DATA_CSV)


def test_shipped_data_has_sixty_per_cell_and_a_fixed_stratified_split(df):
    cells = df.groupby(["topic", "sentiment"]).size()
    assert len(cells) == 6 and cells.min() >= 60
    share = df.groupby(["topic", "sentiment"])["split"].apply(lambda s: (s == "test").mean())
    assert share.between(0.2, 0.3).all(), share


def test_every_shipped_row_names_its_domain_and_each_domain_is_split(df):
    # leave-one-domain-out CV (experiments.default_cv) needs every row in a domain, and a quarter of each held out
    assert (df["domain"] != "").all()
    assert df["domain"].nunique() == 16
    share = df.groupby(["domain", "sentiment"])["split"].apply(lambda s: (s == "test").mean())
    assert share.between(0.2, 0.3).all(), share
    assert set(df.loc[df["topic"].isna(), "domain"]).isdisjoint({"sport", "politics", "news wire"})


def test_shipped_data_has_no_duplicates_after_folding(df):
    assert not df["text"].map(normalise).duplicated().any()


def test_shipped_data_lengths_and_test_sentences(df):
    words = df["text"].str.split().str.len()
    assert words.min() >= 6 and words.max() <= 45  # news-wire leads run to 41 words
    assert len([t for t in read_all([str(paths.TEST_SENTENCES)]) if t.strip()]) >= 3


def test_label_ids_mask_missing_labels(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,topic,sentiment\nA fine match today,sports,\nThe vote is on Monday,,neutral\n")
    y = label_ids(load_dataset(p), DEFAULT_TASKS)
    assert y["topic"].tolist() == [0, -1] and y["sentiment"].tolist() == [-1, 1]


def test_file_with_one_task_column_is_fine(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,topic\nA fine match today,sports\n")
    df = load_dataset(p)
    assert "sentiment" not in df and label_ids(df, DEFAULT_TASKS)["sentiment"].tolist() == [-1]


@pytest.mark.parametrize(
    "content, needle",
    [
        ("", "empty"),
        ("text,topic\n", "no rows"),
        ("words,topic\nhello there,sports\n", "no 'text' column"),
        ("text,colour\nhello there,red\n", "no label column"),
        ("text,topic\nhello there,football\n", "line 2: unknown topic label 'football'"),
        ("text,topic\nfine,sports\n   ,sports\n", "line 3: empty text"),
        ("text,topic\nfine,sports\n,sports\n", "line 3: empty text"),
        ("text,topic,split\nfine one,sports,train\nfine two,sports,dev\n", "line 3: split 'dev'"),
        ("text,topic,split\nSame text!,sports,train\nsame   TEXT,sports,test\n", "also appears in the train split"),
    ],
)
def test_bad_csv_gives_a_one_line_error_naming_the_problem(tmp_path, content, needle):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(MTLError) as exc:
        load_dataset(p)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_non_utf8_names_the_line(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes("text,topic\nok,sports\ncaf\xe9 society,politics\n".encode("latin-1"))
    with pytest.raises(MTLError, match="line 3 is not valid UTF-8"):
        load_dataset(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MTLError, match="file not found"):
        load_dataset(tmp_path / "nope.csv")
    with pytest.raises(MTLError, match="is a directory"):
        load_dataset(tmp_path)


def test_huge_line_is_truncated_with_a_warning(tmp_path):
    p = tmp_path / "huge.csv"
    p.write_text("text,topic\n" + "word " * 2_000_000 + ",sports\n")
    with pytest.warns(UserWarning, match="truncated"):
        df = load_dataset(p)
    assert len(df.loc[0, "text"]) <= 5000


def test_nan_text_is_kept_as_text_and_nan_label_is_rejected(tmp_path):
    p = tmp_path / "nan.csv"
    p.write_text("text,topic\nNaN,sports\n")
    assert load_dataset(p).loc[0, "text"] == "NaN"
    p.write_text("text,topic\nhello there,NaN\n")
    with pytest.raises(MTLError, match="unknown topic label 'NaN'"):
        load_dataset(p)


def test_read_inputs_keeps_empty_lines(tmp_path):
    p = tmp_path / "in.txt"
    p.write_text("first\n\nthird\n")
    assert read_all([str(p)]) == ["first", "", "third"]


def test_one_truncation_rule_for_labelled_rows_and_texts_to_label(tmp_path):
    """Both readers cut long text at MAX_CHARS with one warning per file naming the first long line."""
    from mtl.data import MAX_CHARS

    long = "word " * 3000
    (tmp_path / "in.txt").write_text(f"short\n{long}\n{long}\n")
    (tmp_path / "in.csv").write_text(f"text,topic\nshort,sports\n{long},sports\n")
    with pytest.warns(UserWarning, match=r"in.txt: 2 text\(s\) longer than 5,000 characters truncated \(first at line 2\)"):
        texts = read_all([str(tmp_path / "in.txt")])
    with pytest.warns(UserWarning, match=r"in.csv: 1 text\(s\) longer than 5,000 characters truncated \(first at line 3\)"):
        df = load_dataset(tmp_path / "in.csv")
    assert [len(t) for t in texts] == [5, MAX_CHARS, MAX_CHARS] and len(df.loc[1, "text"]) == MAX_CHARS


def test_parse_tasks():
    assert parse_tasks("urgency=low,high") == {"urgency": ["low", "high"]}
    with pytest.raises(MTLError):
        parse_tasks("urgency=low")


def test_hundred_thousand_rows_load(tmp_path):
    p = tmp_path / "big.csv"
    pd.DataFrame({"text": [f"sentence number {i} about the match" for i in range(100_000)], "topic": "sports"}).to_csv(p, index=False)
    assert len(load_dataset(p)) == 100_000


def test_duplicate_texts_warn_once_per_file(tmp_path):
    p = tmp_path / "dups.csv"
    p.write_text("text,topic\nA fine match today,sports\nA fine match today!,sports\nThe vote is on Monday,politics\n")
    with pytest.warns(UserWarning, match="1 duplicate texts"):
        load_dataset(p)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second read of the same file stays quiet
        load_dataset(p)


def test_labels_shown_names_empty_cells_and_leaves_the_data_alone(tmp_path):
    from mtl.data import NO_LABEL, labels_shown

    p = tmp_path / "d.csv"
    p.write_text("text,topic,sentiment\nA fine match today,sports,\nThe vote is on Monday,,neutral\n")
    df = load_dataset(p)
    shown = labels_shown(df)
    assert shown["topic"].tolist() == ["sports", NO_LABEL] and shown["sentiment"].tolist() == [NO_LABEL, "neutral"]
    assert label_ids(df, DEFAULT_TASKS)["topic"].tolist() == [0, -1]  # the original frame keeps its missing labels


def test_a_sample_of_train_rows_is_drawn_before_encoding_and_keeps_every_test_row(tmp_path, monkeypatch):
    """`load_encoded(sample=n)` (the quick forms' samples): n train rows drawn with the seed, all test rows, and only
    those texts reach the encoder."""
    import numpy as np

    import mtl.engine.embed as embed
    from mtl.data import load_encoded

    seen = []
    monkeypatch.setattr(embed, "encode", lambda texts, spec=None, verbose=False: (seen.append(list(texts)) or np.zeros((len(texts), 4)), None))
    rows = [f"sentence number {i},{'sports' if i % 2 else 'politics'},{'test' if i < 3 else 'train'}" for i in range(20)]
    (tmp_path / "d.csv").write_text("text,topic,split\n" + "\n".join(rows) + "\n")
    enc, _ = load_encoded([tmp_path / "d.csv"], {"topic": DEFAULT_TASKS["topic"]}, sample=5, seed=1)
    tr, te = enc.split()
    assert len(tr.x) == 5 and len(te.x) == 3 and seen == [list(enc.frame["text"])]
    again, _ = load_encoded([tmp_path / "d.csv"], {"topic": DEFAULT_TASKS["topic"]}, sample=5, seed=1)
    other, _ = load_encoded([tmp_path / "d.csv"], {"topic": DEFAULT_TASKS["topic"]}, sample=5, seed=2)
    assert list(again.frame["text"]) == list(enc.frame["text"]) != list(other.frame["text"])
