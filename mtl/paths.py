"""Every path the project uses, derived from one root.

The root is the repository checkout (the folder holding `pyproject.toml`) or,
when `mtl` is installed elsewhere, `$MTL_ROOT` or the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def _find_root() -> Path:
    if os.environ.get("MTL_ROOT"):
        return Path(os.environ["MTL_ROOT"]).resolve()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():
        return repo
    return Path.cwd().resolve()


ROOT = _find_root()

# The curated data and its card (committed).
DATA_DIR = ROOT / "data"
DATA_CSV = DATA_DIR / "sentences.csv"
TEST_SENTENCES = DATA_DIR / "test_sentences.txt"

# The evidence the full runs publish (committed): figures, and the research notebooks' tables (results/<notebook>/<table>.csv).
FIGURES_DIR = ROOT / "figures"
RESULTS_DIR = ROOT / "results"

# What `mtl train` / 03 write, and `mtl compare`'s table (not committed).
CHECKPOINT = ROOT / "saved_models" / "multi_task_model.safetensors"
METRICS_JSON, COMPARISON_CSV = CHECKPOINT.with_name("metrics.json"), CHECKPOINT.with_name("comparison.csv")

# The notebooks, and where `make run` writes executed copies (runs/<timestamp>/).
NOTEBOOKS_DIR = ROOT / "notebooks"
RUNS_DIR = ROOT / "runs"
# Embedding cache and exported ONNX backbones; override to share one cache between checkouts.
CACHE_DIR = Path(os.environ.get("MTL_CACHE_DIR", ROOT / ".cache")).resolve()
# Real text the project did not write; absent on users' machines (code that needs it skips).
EXTERNAL_DIR = Path(os.environ.get("MTL_EXTERNAL_DIR", ROOT.parent / "shared" / "data" / "external"))


def resolve(path: str | os.PathLike) -> Path:
    """Notebook/CLI-independent path: absolute stays, relative is taken from the repo root.

    Notebook parameters use this, so the same defaults work in JupyterLab (cwd notebooks/),
    papermill run from the repo root, and nbval.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p
