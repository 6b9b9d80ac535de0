"""CLI tests, run as subprocesses: formats, order, flags that work, and the bad-input catalogue."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from conftest import external, run_cli

GOOD = ["The striker scored twice in a wonderful win.", "The council will vote on the budget on Monday."]


def test_predict_jsonl_one_row_per_line_in_order_including_empty_lines(trained, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(f"{GOOD[0]}\n\n{GOOD[1]}\n   \n")
    r = run_cli("predict", str(src), "--model", str(trained["path"]), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["text"] for row in rows] == [GOOD[0], "", GOOD[1], "   "]
    assert rows[0]["topic"] == "sports" and rows[2]["topic"] == "politics"
    assert set(rows[0]["sentiment_probs"]) == {"negative", "neutral", "positive"}
    assert abs(sum(rows[0]["sentiment_probs"].values()) - 1) < 1e-3
    assert rows[1]["topic"] is None and rows[1]["error"] == "empty text"
    assert "input 2: empty text" in r.stderr and "input 4" in r.stderr


def test_predict_stdin_csv_and_table(trained, tmp_path):
    r = run_cli("predict", "-", "--model", str(trained["path"]), "--format", "csv", stdin="\n".join(GOOD) + "\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "text,topic,topic_probs,sentiment,sentiment_probs,error" and len(lines) == 3
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("id,text\n1,Great goal\n")
    r = run_cli("predict", str(csv_in), "--model", str(trained["path"]))
    assert r.returncode == 0 and "topic=sports" in r.stdout


@pytest.mark.slow
def test_train_flags_are_used(tmp_path):
    out = tmp_path / "m.safetensors"
    r = run_cli("train", "--epochs", "3", "--lr", "0.005", "--batch-size", "16", "--seed", "4", "--out", str(out), "--metrics", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m.json").read_text())
    cfg = meta["meta"]["config"]
    assert (cfg["epochs"], cfg["lr"], cfg["batch_size"], cfg["seed"]) == (3, 0.005, 16, 4)
    assert len(meta["history"]) == 3
    assert "test split (held out)" in r.stdout and "train split" in r.stdout


@pytest.mark.slow
def test_layers_flag_is_stored_and_used_by_predict(tmp_path):
    """A checkpoint trained on layers 4-6 must be fed layers 4-6 at predict time (the metadata says so)."""
    from helpers import backend_of

    from mtl.engine.embed import EmbedSpec, encode
    from mtl.heads import predict_proba
    from mtl.predict import load_model

    out, cache = tmp_path / "m.safetensors", tmp_path / "cache"
    r = run_cli("train", "--layers", "4-6", "--epochs", "20", "--out", str(out), "--metrics", str(tmp_path / "m.json"), "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    ckpt = load_model(out)
    assert ckpt.meta["layers"] == "4-6"
    assert ckpt.meta["metrics"]["test"]["topic"]["accuracy"] >= 0.9  # held-out split
    r = run_cli("predict", "-", "--model", str(out), "--format", "jsonl", "--cache-dir", str(cache), stdin="\n".join(GOOD) + "\n")
    assert r.returncode == 0, r.stderr
    got = [json.loads(line)["sentiment_probs"] for line in r.stdout.splitlines()]
    x, stats = encode(GOOD, EmbedSpec(backend=backend_of(ckpt.meta["backend"]), cache_dir=cache, layers="4-6"))
    assert stats.encoded == 0  # predict already cached exactly these layer-4-6 vectors, in the mode training used
    want = predict_proba(ckpt.state, ckpt.tasks, x)["sentiment"]
    np.testing.assert_allclose([list(g.values()) for g in got], want, atol=1e-3)


@pytest.mark.parametrize("text, want", [("20", 20), ("1e-3", 1e-3), ("true", True), ("[1, 2]", [1, 2]), ("4-6", "4-6"), ("cpu", "cpu"), ("-3", -3),
                                        ("True", True), ("False", False), ("3-6", "3-6"), ("runs/x", "runs/x")])
def test_notebook_parameter_values(text, want):
    from mtl.cli import param_value

    assert param_value(text) == want


@pytest.mark.slow
def test_original_command_underfits_as_the_readme_says(tmp_path):
    """The README's original command: 100 full-batch epochs at lr 2e-5 end far below the default's held-out accuracy."""
    r = run_cli("train", "--epochs", "100", "--lr", "2e-5", "--batch-size", "620", "--out", str(tmp_path / "m.safetensors"),
                "--metrics", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    test = json.loads((tmp_path / "m.json").read_text())["metrics"]["test"]
    assert test["topic"]["accuracy"] < 0.9 and test["sentiment"]["accuracy"] < 0.7, test  # 620 = every train row: full batch


@pytest.mark.external
@pytest.mark.slow
def test_evaluate_on_external_files(trained):
    bbc = external("bbc_sport_politics.csv")
    r = run_cli("evaluate", "--data", str(bbc), "--model", str(trained["path"]))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("topic"))
    assert float(line.split()[2]) >= 0.95
    tw = external("tweeteval_sentiment_val.csv")
    r = run_cli("evaluate", "--data", str(tw), "--model", str(trained["path"]))
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("sentiment")


# --- the bad-input catalogue: every case is a one-line error, exit != 0, no traceback -----------------

BAD_FILES = {
    "empty": ("empty.csv", ""),
    "header": ("header.csv", "text,topic\n"),
    "notext": ("notext.csv", "sentence,topic\nhi there,sports\n"),
    "nolabels": ("nolabels.csv", "text,colour\nhi there,red\n"),
    "unknown": ("unknown.csv", "text,topic\nhi there,sports\nhow are you,weather\n"),
    "blank": ("blank.csv", 'text,topic\nhi there,sports\n"   ",sports\n'),
    "nan": ("nan.csv", "text,topic\n,sports\n"),
    "latin1": ("latin1.csv", "text,topic\ncaf\xe9,sports\n".encode("latin-1")),
    "leak": ("leak.csv", "text,topic,split\nA goal!,sports,train\na goal,sports,test\n"),
    "notckpt": ("notckpt.safetensors", "this is not a checkpoint"),
    "pickle": ("evil.pth", pickle.dumps({"a": 1})),
}


def _files(tmp):
    out = {}
    for key, (name, content) in BAD_FILES.items():
        out[key] = tmp / name
        out[key].write_bytes(content if isinstance(content, bytes) else content.encode())
    return out


CATALOGUE = [
    ("missing file", ["train", "--data", "{tmp}/nope.csv"], "file not found"),
    ("directory", ["train", "--data", "{tmp}"], "is a directory"),
    ("empty file", ["train", "--data", "{empty}"], "file is empty"),
    ("header only", ["train", "--data", "{header}"], "no rows"),
    ("no text column", ["train", "--data", "{notext}"], "no 'text' column"),
    ("no label column", ["train", "--data", "{nolabels}"], "no label column"),
    ("unknown label", ["train", "--data", "{unknown}"], "line 3: unknown topic label 'weather'"),
    ("whitespace text", ["train", "--data", "{blank}"], "line 3: empty text"),
    ("NaN text", ["train", "--data", "{nan}"], "line 2: empty text"),
    ("non-UTF-8", ["train", "--data", "{latin1}"], "line 2 is not valid UTF-8"),
    ("train/test duplicate", ["train", "--data", "{leak}"], "also appears in the train split"),
    ("negative epochs", ["train", "--epochs", "-3"], "--epochs: expected a positive integer"),
    ("zero epochs", ["train", "--epochs", "0"], "--epochs: expected a positive integer"),
    ("text epochs", ["train", "--epochs", "ten"], "--epochs: expected a positive integer"),
    ("zero lr", ["train", "--lr", "0"], "--lr: expected a positive number"),
    ("nan lr", ["train", "--lr", "nan"], "--lr: expected a positive number"),
    ("text lr", ["train", "--lr", "fast"], "--lr: expected a positive number"),
    ("negative batch", ["train", "--batch-size", "-1"], "--batch-size: expected a positive integer"),
    ("unknown device", ["train", "--device", "tpu"], "--device: invalid choice"),
    ("negative seed", ["train", "--seed", "-1"], "--seed: expected an integer >= 0"),
    ("bad dropout", ["train", "--dropout", "1.5"], "--dropout: expected a number in [0, 1)"),
    ("one fold", ["compare", "--folds", "1"], "--folds: expected an integer >= 2"),
    ("cuda absent", ["train", "--device", "cuda", "--epochs", "1"], "--device cuda: not available"),
    ("unknown flag", ["train", "--epoch", "3"], "unrecognized arguments"),
    ("model missing", ["predict", "--model", "{tmp}/none.safetensors"], "checkpoint not found"),
    ("model is dir", ["predict", "--model", "{tmp}"], "is a directory"),
    ("not a checkpoint", ["predict", "--model", "{notckpt}"], "not an mtl checkpoint"),
    ("pickle checkpoint", ["predict", "--model", "{pickle}"], "not an mtl checkpoint"),
    ("truncated checkpoint", ["predict", "--model", "{truncated}"], "not an mtl checkpoint"),
    ("predict missing input", ["predict", "{tmp}/none.txt", "--model", "{model}"], "file not found"),
    ("predict csv no text", ["predict", "{notext}", "--model", "{model}"], "no 'text' column"),
    ("evaluate no labels", ["evaluate", "--data", "{nolabels}", "--model", "{model}"], "no label column"),
    ("read-only output", ["train", "--epochs", "1", "--out", "{ro}/m.safetensors", "--metrics", "{tmp}/m.json"], "cannot write"),
    ("unknown task weights", ["train", "--task-weights", "topic=heavy"], "--task-weights: expected task=weight"),
    ("layer out of range", ["train", "--layers", "4-9"], "--layers '4-9': expected 'last' or A-B with 1 <= A <= B <= 6"),
    ("layer not a range", ["train", "--layers", "middle"], "--layers 'middle': expected 'last' or A-B"),
]


def _catalogue_args(argv: list[str], trained, tmp_path) -> list[str]:
    import os

    f = _files(tmp_path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(trained["path"].read_bytes()[:500])
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if os.geteuid() == 0:  # root ignores permission bits; /sys is a read-only file system
        ro = "/sys/mtl-read-only-test"
    fmt = {**{k: str(v) for k, v in f.items()}, "tmp": str(tmp_path), "model": str(trained["path"]), "truncated": str(truncated), "ro": str(ro)}
    return [a.format(**fmt) for a in argv]


def _one_error_line(code: int, stderr: str, needle: str) -> None:
    assert code == 2, (code, stderr)  # the README promises exit code 2 for every user mistake
    assert needle in stderr, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1, stderr


@pytest.mark.parametrize("name, argv, needle", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_catalogue(trained, tmp_path, capsys, name, argv, needle):
    """In-process `main()` (fast): any exception other than the one-line MTLError would fail the test itself."""
    import warnings

    from mtl.cli import main

    saved = warnings.showwarning  # main() reroutes warnings to one-line prints; keep that out of later tests
    try:
        try:
            code = main(_catalogue_args(argv, trained, tmp_path))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    finally:
        warnings.showwarning = saved
    _one_error_line(code, capsys.readouterr().err, needle)


@pytest.mark.parametrize("name, argv, needle", [c for c in CATALOGUE if c[0] in ("missing file", "text epochs", "pickle checkpoint", "unknown label")])
def test_bad_input_as_a_real_process(trained, tmp_path, name, argv, needle):
    """The same promise through a real `python -m mtl` process, for a few cases of each kind."""
    r = run_cli(*_catalogue_args(argv, trained, tmp_path))
    _one_error_line(r.returncode, r.stderr, needle)


def test_debug_flag_shows_the_traceback(tmp_path):
    r = run_cli("train", "--data", str(tmp_path / "nope.csv"), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_help_of_every_command_is_clean():
    from mtl.cli import COMMANDS

    for cmd in COMMANDS:
        r = run_cli(cmd, "--help")
        assert r.returncode == 0 and f"usage: mtl {cmd}" in r.stdout, (cmd, r.stderr)


def test_predict_from_stdin_on_a_cpu_imports_neither_torch_nor_pandas(trained):
    """What keeps `mtl predict` starting in under a second: numpy heads, ONNX encoder, no heavy imports."""
    from mtl.engine.devices import maybe_accelerator

    if maybe_accelerator():
        pytest.skip("with a GPU present, `auto` imports torch to use it")
    code = ("import sys; from mtl.cli import main; main(['predict', '-', '--model', sys.argv[1]]); "
            "print('heavy:', sorted(m for m in ('torch', 'pandas', 'sentence_transformers') if m in sys.modules), file=sys.stderr)")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code, str(trained["path"])], input="A fine goal.\n", capture_output=True, text=True,
                       env={k: v for k, v in __import__("os").environ.items() if k != "MTL_BACKEND"})
    assert r.returncode == 0, r.stderr
    assert "heavy: []" in r.stderr, r.stderr


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path):
    """`ray job stop`, `docker stop` and `kill` send SIGTERM: one line and exit 130, no traceback."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    src = tmp_path / "in.txt"
    src.write_text("".join(f"Sentence number {i} about the cup final.\n" for i in range(200_000)))
    proc = subprocess.Popen([sys.executable, "-m", "mtl", "embed", str(src), "--out", str(tmp_path / "out"), "--backend", "onnx",
                             "--chunk-size", "500"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list((tmp_path / "out").glob("part-*")) and time.time() < deadline:  # running: past the imports, shards coming
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "mtl embed: interrupted" in err and "Traceback" not in err, err[-2000:]
