"""CLI tests: formats, order, flags that work, new tasks as data, backends, and the bad-input catalogue. Most run
`mtl.cli.main` in this process (`mtl_main`); what only a real process shows (the console script, imports, signals,
exit codes) runs as one (`run_cli`)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import external, mtl_main, run_cli

GOOD = ["The striker scored twice in a wonderful win.", "The council will vote on the budget on Monday."]


def test_predict_jsonl_one_row_per_line_in_order_including_empty_lines(trained, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text(f"{GOOD[0]}\n\n{GOOD[1]}\n   \n")
    r = mtl_main("predict", str(src), "--model", str(trained["path"]), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["text"] for row in rows] == [GOOD[0], "", GOOD[1], "   "]
    assert rows[0]["topic"] == "sports" and rows[2]["topic"] == "politics"
    assert set(rows[0]["sentiment_probs"]) == {"negative", "neutral", "positive"}
    assert abs(sum(rows[0]["sentiment_probs"].values()) - 1) < 1e-3
    assert rows[1]["topic"] is None and rows[1]["error"] == "empty text"
    assert "input 2: empty text" in r.stderr and "input 4" in r.stderr


def test_predict_stdin_csv_and_table(trained, tmp_path):
    r = mtl_main("predict", "-", "--model", str(trained["path"]), "--format", "csv", stdin="\n".join(GOOD) + "\n\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "text,topic,topic_probs,sentiment,sentiment_probs,error" and len(lines) == 4
    assert lines[1].startswith(f"{GOOD[0]},sports,") and lines[3] == ',,,,,empty text'  # an empty line keeps its row
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("id,text\n1,Great goal\n")
    r = mtl_main("predict", str(csv_in), "--model", str(trained["path"]))
    assert r.returncode == 0 and "topic=sports" in r.stdout


def test_echo_into_mtl_predict_uses_the_default_checkpoint_and_imports_neither_torch_nor_pandas(trained, tmp_path):
    """`echo ... | mtl predict -` as the README shows it: the console script, the default checkpoint
    (saved_models/multi_task_model.safetensors under the project root; here a temp root, so the real one is never
    touched), and a fast start: numpy heads and the ONNX encoder, no torch or pandas import."""
    from conftest import ROOT

    from mtl import paths
    from mtl.engine.devices import maybe_accelerator

    (tmp_path / "saved_models").mkdir()
    (tmp_path / "saved_models" / "multi_task_model.safetensors").write_bytes(trained["path"].read_bytes())
    env = {**{k: v for k, v in os.environ.items() if k != "MTL_BACKEND"}, "MTL_ROOT": str(tmp_path), "MTL_CACHE_DIR": str(paths.CACHE_DIR),
           "PYTHONPROFILEIMPORTTIME": "1"}
    mtl = Path(sys.executable).with_name("mtl")
    r = subprocess.run(f"echo 'The striker scored a late winner.' | {mtl} predict -", shell=True, capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("The striker scored a late winner.") and "topic=sports" in r.stdout, r.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "mtl.predict" in imported  # the import log is there, so an absent heavy module means it was not imported
    if not maybe_accelerator():  # with a GPU present, `auto` imports torch to use it
        assert not {m for m in imported if m.split(".")[0] in ("torch", "pandas", "sentence_transformers")}
    (tmp_path / "saved_models" / "multi_task_model.safetensors").unlink()
    r = subprocess.run([mtl, "predict", "-"], input="hello\n", capture_output=True, text=True, env={**env, "PYTHONPROFILEIMPORTTIME": ""}, timeout=120)
    assert r.returncode == 2 and f"{tmp_path}/saved_models/multi_task_model.safetensors: checkpoint not found" in r.stderr, r.stderr


@pytest.mark.slow
def test_train_flags_are_used(tmp_path):
    out = tmp_path / "m.safetensors"
    r = mtl_main("train", "--epochs", "3", "--lr", "0.005", "--batch-size", "16", "--seed", "4", "--out", str(out), "--metrics", str(tmp_path / "m.json"))
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

    out = tmp_path / "m.safetensors"
    r = mtl_main("train", "--layers", "4-6", "--epochs", "20", "--out", str(out), "--metrics", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    ckpt = load_model(out)
    assert ckpt.meta["layers"] == "4-6"
    assert ckpt.meta["metrics"]["test"]["topic"]["accuracy"] >= 0.9  # held-out split
    texts = [f"{t} ({tmp_path.name})" for t in GOOD]  # new to the project cache: predict encodes them
    r = mtl_main("predict", "-", "--model", str(out), "--format", "jsonl", stdin="\n".join(texts) + "\n")
    assert r.returncode == 0, r.stderr
    got = [json.loads(line)["sentiment_probs"] for line in r.stdout.splitlines()]
    x, stats = encode(texts, EmbedSpec(backend=backend_of(ckpt.meta["backend"]), layers="4-6"))
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
    r = mtl_main("train", "--epochs", "100", "--lr", "2e-5", "--batch-size", "620", "--out", str(tmp_path / "m.safetensors"),
                 "--metrics", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    test = json.loads((tmp_path / "m.json").read_text())["metrics"]["test"]
    assert test["topic"]["accuracy"] < 0.9 and test["sentiment"]["accuracy"] < 0.7, test  # 620 = every train row: full batch


@pytest.mark.external
@pytest.mark.slow
def test_evaluate_on_external_files(trained):
    bbc = external("bbc_sport_politics.csv")
    r = mtl_main("evaluate", "--data", str(bbc), "--model", str(trained["path"]))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("topic"))
    assert float(line.split()[2]) >= 0.95
    tw = external("tweeteval_sentiment_val.csv")
    r = mtl_main("evaluate", "--data", str(tw), "--model", str(trained["path"]))
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("sentiment")
    assert float(r.stdout.splitlines()[-1].split()[4]) >= 0.55  # macro-recall on tweets the heads never saw (chance: 1/3)


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
    ("cuda absent", ["train", "--device", "cuda", "--epochs", "1", "--out", "{tmp}/m.safetensors", "--metrics", "{tmp}/m.json"],
     "--device cuda: not available"),
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
def test_bad_input_catalogue(trained, tmp_path, name, argv, needle):
    """In-process `main()` (fast): any exception other than the one-line MTLError would fail the test itself."""
    from mtl.engine.devices import cuda_available

    if name == "cuda absent" and cuda_available():
        pytest.skip("CUDA is present here")
    r = mtl_main(*_catalogue_args(argv, trained, tmp_path))
    _one_error_line(r.returncode, r.stderr, needle)


@pytest.mark.parametrize("name, argv, needle", [c for c in CATALOGUE if c[0] in ("missing file", "text epochs")])
def test_bad_input_as_a_real_process(trained, tmp_path, name, argv, needle):
    """The same promise through a real `python -m mtl` process: an MTLError and an argparse error."""
    r = run_cli(*_catalogue_args(argv, trained, tmp_path))
    _one_error_line(r.returncode, r.stderr, needle)


def test_debug_flag_shows_the_traceback(tmp_path):
    from mtl.errors import MTLError

    with pytest.raises(MTLError, match="file not found"):  # re-raised: Python prints the traceback
        mtl_main("train", "--data", str(tmp_path / "nope.csv"), "--debug")


def test_help_of_every_command_is_clean():
    from mtl.cli import COMMANDS

    for cmd in COMMANDS:
        r = mtl_main(cmd, "--help")
        assert r.returncode == 0 and f"usage: mtl {cmd}" in r.stdout and not r.stderr, (cmd, r.stderr)


def test_sigterm_ends_a_run_like_ctrl_c(tmp_path):
    """`ray job stop`, `docker stop` and `kill` send SIGTERM: one line and exit 130, no traceback."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    src = tmp_path / "in.txt"
    src.write_text("".join(f"Sentence number {i} about the cup final.\n" for i in range(50_000)))
    proc = subprocess.Popen([sys.executable, "-m", "mtl", "embed", str(src), "--out", str(tmp_path / "out"), "--backend", "onnx",
                             "--chunk-size", "500"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list((tmp_path / "out").glob("part-*")) and time.time() < deadline:  # running: past the imports, shards coming
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "mtl embed: interrupted" in err and "Traceback" not in err, err[-2000:]


# --- a new task as data, and the opt-in backends, end to end ---------------------------------------------------

URGENT = ["The server is down, fix it now.", "Fire alarm in building B, evacuate immediately.", "Patient collapsed, call an ambulance now.",
          "Water is flooding the basement right now.", "Payment system failing for all customers, urgent.",
          "The bridge is cracking, close the road immediately.", "Gas leak reported on Main Street, act now.",
          "Security breach in progress, lock every account at once."]
CALM = ["Could you send the minutes when you have a moment?", "Lunch options for next month are on the board.",
        "The newsletter will be published next quarter.", "Feel free to review the draft whenever convenient.",
        "The library extends its opening hours in summer.", "A reminder that the picnic is planned for August.",
        "Let's catch up about the garden project sometime.", "The annual report is available for reading at leisure."]


def test_a_new_task_defined_as_data_trains_and_predicts_from_the_cli(tmp_path):
    """The README's "add a task": a label column and `--tasks`, no code; the checkpoint carries the task and predict labels it."""
    data = tmp_path / "urgency.csv"
    data.write_text("text,urgency\n" + "".join(f'"{t}",high\n' for t in URGENT) + "".join(f'"{t}",low\n' for t in CALM))
    out, metrics = tmp_path / "m.safetensors", tmp_path / "m.json"
    r = mtl_main("train", "--data", str(data), "--tasks", "urgency=low,high", "--epochs", "40", "--device", "cpu",
                 "--out", str(out), "--metrics", str(metrics))
    assert r.returncode == 0, r.stderr
    assert "urgency" in r.stdout and "topic" not in r.stdout
    from mtl.checkpoint import load_checkpoint

    assert load_checkpoint(out).tasks == {"urgency": ["low", "high"]}
    r = mtl_main("predict", "-", "--model", str(out), "--format", "jsonl",
                 stdin="Smoke is pouring from the kitchen, call the fire brigade now!\nThe book club meets again next spring.\n")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["urgency"] for row in rows] == ["high", "low"] and set(rows[0]) == {"text", "urgency", "urgency_probs"}


@pytest.fixture(scope="module")
def curated_held_out(tmp_path_factory):
    """The curated held-out texts as a file to label."""
    import csv

    from mtl import paths

    with open(paths.DATA_CSV, newline="") as fh:
        texts = [row["text"] for row in csv.DictReader(fh) if row["split"] == "test"]
    path = tmp_path_factory.mktemp("held") / "held_out.txt"
    path.write_text("\n".join(texts) + "\n")
    return path, len(texts)


def _labels(r) -> list[tuple]:
    assert r.returncode == 0, r.stderr
    return [(row["topic"], row["sentiment"]) for row in map(json.loads, r.stdout.splitlines())]


@pytest.mark.slow
@pytest.mark.parametrize("backend, least", [("bf16", 0.99), ("int8", 0.95)])
def test_opt_in_backends_keep_the_labels_of_the_default_from_the_cli(trained, curated_held_out, backend, least, tmp_path):
    """`mtl predict --backend bf16|int8` against the fp32 default, on the curated held-out split: bf16 keeps >= 99 % of the
    labels per task (measured on this split: 100 % / 100 %), int8 >= 95 % (measured: 98.6 % topic / 99.0 % sentiment; on tweets
    ~98 % / 95 %, docs/performance.md)."""
    from conftest import linked_cache

    path, n = curated_held_out
    common = ["predict", str(path), "--model", str(trained["path"]), "--format", "jsonl"]
    base = _labels(mtl_main(*common))
    cache = linked_cache(tmp_path / "cache", openvino=True)  # empty: the backend encodes every text (exports shared)
    other = _labels(mtl_main(*common, "--backend", backend, "--cache-dir", str(cache)))
    assert len(base) == len(other) == n
    for task in (0, 1):
        kept = np.mean([a[task] == b[task] for a, b in zip(base, other)])
        assert kept >= least, (backend, task, kept)


def test_an_int8_checkpoint_is_fed_int8_vectors_unless_told_otherwise(tmp_path, cache_dir):
    """A checkpoint trained with `--backend int8` learnt int8's vectors: `auto` gives it int8 again
    (`devices.checkpoint_backend`); an explicit --backend still wins."""
    from conftest import POLITICS, SPORT

    from mtl.engine.embed import EmbedSpec, encode
    from mtl.heads import predict_proba
    from mtl.predict import load_model

    data = tmp_path / "small.csv"  # a few rows: this is about which vectors the heads get, not how good they are
    data.write_text("text,topic\n" + "".join(f'"{t}",sports\n' for t in SPORT) + "".join(f'"{t}",politics\n' for t in POLITICS))
    out = tmp_path / "m.safetensors"
    r = mtl_main("train", "--data", str(data), "--backend", "int8", "--epochs", "5", "--device", "cpu", "--cache-dir", str(cache_dir),
                 "--out", str(out), "--metrics", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    ckpt = load_model(out)
    assert ckpt.meta["backend"] == "onnx-int8"
    probs = {}
    for backend in ("auto", "onnx"):
        r = mtl_main("predict", "-", "--model", str(out), "--format", "jsonl", "--backend", backend, "--cache-dir", str(cache_dir),
                     stdin="\n".join(GOOD) + "\n")
        assert r.returncode == 0, r.stderr
        probs[backend] = np.array([list(json.loads(line)["topic_probs"].values()) for line in r.stdout.splitlines()])
    for backend, mode in (("auto", "int8"), ("onnx", "onnx")):
        x, stats = encode(GOOD, EmbedSpec(backend=mode, cache_dir=cache_dir))
        assert stats.encoded == 0  # predict cached these vectors in this mode's cache folder
        np.testing.assert_allclose(probs[backend], predict_proba(ckpt.state, ckpt.tasks, x)["topic"], atol=1e-4)
    assert np.abs(probs["auto"] - probs["onnx"]).max() > 1e-3  # int8 and fp32 vectors do give other probabilities
