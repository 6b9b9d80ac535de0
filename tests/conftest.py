"""Shared fixtures. The real all-MiniLM-L6-v2 is used throughout; embeddings go through the
project cache (.cache/), so the shipped sentences are encoded once for tests and notebooks."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Default training run on the shipped data, written to a temp folder."""
    from mtl.config import TrainConfig
    from mtl.train import train_from_csv

    out = tmp_path_factory.mktemp("model")
    res = train_from_csv(None, config=TrainConfig(device="cpu"), out=out / "model.safetensors", metrics_out=out / "metrics.json", verbose=False)
    res["path"] = out / "model.safetensors"
    return res


def linked_cache(d: Path) -> Path:
    """`d` as an empty embedding cache that shares the project's ONNX export (so no test re-exports it)."""
    from mtl.engine.embed import EmbedSpec, encode

    if not (paths.CACHE_DIR / "onnx").is_dir():
        encode(["warm up"], EmbedSpec(backend="onnx"))
    d.mkdir(parents=True)
    (d / "onnx").symlink_to(paths.CACHE_DIR / "onnx")
    return d


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    """An empty embedding cache that shares the project's ONNX export."""
    return linked_cache(tmp_path / "cache")


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """Run `python -m mtl ...` as a user would; returns CompletedProcess with text output."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mtl", *args], input=stdin, capture_output=True, text=True, env=full_env, cwd=cwd or ROOT, timeout=timeout
    )


def external(name: str) -> Path:
    path = paths.EXTERNAL_DIR / name
    if not path.is_file():
        pytest.skip(f"external data not found at {path} (it lives beside the repo in ../shared/data/external)")
    return path
