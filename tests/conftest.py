"""Shared fixtures. The real all-MiniLM-L6-v2 is used throughout; embeddings go through the
project cache (.cache/), so the shipped sentences are encoded once for tests and notebooks."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from mtl import paths
from mtl.engine.devices import cuda_available

ROOT = paths.ROOT

# Short and long, sports and politics: what the encoder tests embed.
SENTENCES = [
    "The match was postponed because of heavy snow.",
    "A wonderful afternoon of cricket ended in a thrilling tie.",
    "The council rejected the plan after a bitter debate.",
    "Short one.",
    "The minister will publish the report next week, officials said on Monday in the capital city.",
]


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where CUDA is usable (`pytest -m gpu` runs just them) and skip elsewhere."""
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (a `gpu` test)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _forget_encoders_of_temp_caches():
    """In-process CLI runs load an encoder per cache folder (`embed._ENCODERS`); drop those of a test's temp caches after it,
    so a long session does not hold a model per test."""
    yield
    from mtl.engine import embed

    for key in [k for k in embed._ENCODERS if k[3] != str(paths.CACHE_DIR)]:
        del embed._ENCODERS[key]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Default training run on the shipped data, written to a temp folder."""
    from mtl.config import TrainConfig
    from mtl.train import train_from_csv

    out = tmp_path_factory.mktemp("model")
    res = train_from_csv(None, config=TrainConfig(device="cpu"), out=out / "model.safetensors", metrics_out=out / "metrics.json", verbose=False)
    res["path"] = out / "model.safetensors"
    return res


def need_ray() -> None:
    """Ray comes with the `scale` extra. `make setup` installs it, so there a missing Ray fails the test; the Docker
    image (MTL_SYSTEM_ENV=1) leaves the extra out on purpose, so there the Ray tests skip and say why."""
    if os.environ.get("MTL_SYSTEM_ENV") == "1":
        pytest.importorskip("ray", reason="the Docker image installs no `scale` extra (Ray): pip install -e '.[scale]'")


def linked_cache(d: Path, openvino: bool = False) -> Path:
    """`d` as an empty embedding cache that shares the project's ONNX export (and with `openvino` its OpenVINO IR),
    so no test re-exports them."""
    from mtl.engine.backbone import resolve_backbone
    from mtl.engine.onnx_encoder import export_onnx

    export_onnx(resolve_backbone(), paths.CACHE_DIR)  # once per project cache (a no-op when it is there)
    d.mkdir(parents=True)
    (d / "onnx").symlink_to(paths.CACHE_DIR / "onnx")
    if openvino:
        from mtl.engine.openvino_encoder import export_openvino

        export_openvino(resolve_backbone(), paths.CACHE_DIR)
        (d / "openvino").symlink_to(paths.CACHE_DIR / "openvino")
    return d


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    """An empty embedding cache that shares the project's ONNX export."""
    return linked_cache(tmp_path / "cache")


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run `python -m mtl ...` as a user would, in a process of its own; returns CompletedProcess with text output.
    For what only a real process shows (exit status, imports, signals, the console script); otherwise `mtl_main`."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mtl", *args], input=stdin, capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout
    )


def mtl_main(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    """`mtl ARGS` in this process (`mtl.cli.main`, what the console script calls), its stdout and stderr captured:
    the same exit codes and one-line errors as `run_cli` without a Python start-up per call. Exceptions other than
    the ones `main` turns into exit codes propagate and fail the test."""
    import warnings

    from mtl.cli import main

    out, err = io.StringIO(), io.StringIO()
    data = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
    saved = sys.stdin, warnings.showwarning  # main() routes warnings to one-line prints
    sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's own errors and --help
                code = exc.code
    finally:
        sys.stdin, warnings.showwarning = saved
    return subprocess.CompletedProcess(["mtl", *args], code, out.getvalue(), err.getvalue())


# -- every file this process opens, while a test asks (`opened`) -----------------------------------------------
_RECORDERS: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if _RECORDERS and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        for seen in _RECORDERS:
            seen.append(path)


sys.addaudithook(_audit)  # for the whole session (a hook cannot be removed); it records only inside `opened`


@pytest.fixture
def opened() -> list[str]:
    """Every path that Python code in this process opens during the test (the `open` audit event: builtins.open,
    io.open, os.open, pathlib's readers, pandas' file handles), whoever calls it."""
    seen: list[str] = []
    _RECORDERS.append(seen)
    yield seen
    _RECORDERS.remove(seen)


SPORT = ["The striker scored twice in the cup final.", "The coach praised the young goalkeeper after the match.",
         "Fans cheered as the relay team broke the record.", "The tennis champion lost in straight sets.",
         "The winger signed a new contract with the club.", "Rain delayed the second day of the test match.",
         "The boxer retained his title in a tense bout.", "Our keeper saved a late penalty to win the derby."]
POLITICS = ["The senate passed the budget bill on Tuesday.", "The minister resigned after the election defeat.",
            "Parliament debated the new immigration law.", "The president met foreign leaders at the summit.",
            "The council voted to raise local taxes.", "The opposition leader called for an early election.",
            "Voters rejected the referendum on reform.", "The cabinet approved the new defence plan."]
TWEETS = {"negative": ["worst service ever, never again", "so tired of this traffic every single day", "my phone died again ugh",
                       "this update broke everything i hate it", "lost my keys and missed the bus", "terrible match tonight, awful refs"],
          "neutral": ["meeting moved to 3pm tomorrow", "the store opens at nine on sundays", "watching the news at six",
                      "new episode comes out on friday", "the train leaves from platform two", "weather report says cloudy"],
          "positive": ["love this song so much", "best day at the beach with friends", "so happy for you, congrats!",
                       "great game tonight, what a win", "this coffee is amazing", "finally finished my project, feeling great"]}


def standin_external(folder: Path) -> Path:
    """A stand-in for ../shared/data/external: hand-written rows under the real file names (training and report-only
    sets alike), so the code that reads the folder runs on any machine."""
    import csv

    from mtl.research import external as ext

    folder.mkdir(parents=True, exist_ok=True)
    topic = [(t, "sports") for t in SPORT] + [(t, "politics") for t in POLITICS]
    senti = [(t, label) for label, texts in TWEETS.items() for t in texts]
    rows = {ext.BBC: ("topic", topic), ext.AGNEWS: ("topic", topic[::-1]), ext.TWEET_VAL: ("sentiment", senti),
            ext.TWEET_TEST: ("sentiment", [(t.upper(), lab) for t, lab in senti]), ext.FPB: ("sentiment", [(t + ".", lab) for t, lab in senti])}
    for name, (task, pairs) in rows.items():
        with open(folder / name, "w", newline="") as fh:
            csv.writer(fh).writerows([["text", task], *pairs])
    return folder


def external(name: str) -> Path:
    path = paths.EXTERNAL_DIR / name
    if not path.is_file():
        pytest.skip(f"external data not found at {path} (it lives beside the repo in ../shared/data/external)")
    return path
