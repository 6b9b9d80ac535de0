"""Result tables leave a notebook as data: `results/<notebook>/<table>.csv` (and named settings as JSON), with
`meta.json` beside them saying what made them: the command, the commit, the date, the machine and the
notebook's parameters. Docs quote only numbers found in these files (a test checks README and docs/results.md).

`make run` writes them under `runs/<timestamp>/results/`; `mtl notebooks --full --publish` writes the committed
`results/`. Every write is atomic, so an interrupted run leaves the last good files.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from mtl import paths
from mtl.atomic import write_text

COMMAND_ENV = "MTL_RUN_COMMAND"  # set by the runner (`mtl notebooks …`) for the kernels it starts


def _git(*args: str) -> str:
    try:
        # rstrip only: `status --porcelain` lines start with a space (" M path") that the path slicing counts on
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(notebook: str) -> dict:
    """Command, commit (and whether code differed from it), date and machine of this run."""
    from mtl.engine.devices import cpu_flags, cpu_name

    # results/ and figures/ are what a run writes and prose (README, docs/) cannot move a number; any other changed path
    # means the code or data differed from the commit, and is listed
    dirty = [line[3:] for line in _git("status", "--porcelain").splitlines()
             if not line[3:].startswith(("results/", "figures/", "docs/")) and line[3:] != "README.md"]
    flags = [f for f in ("avx2", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    return {"notebook": notebook,
            "command": os.environ.get(COMMAND_ENV) or f"notebooks/{notebook}.ipynb, run in a notebook kernel",
            "commit": _git("rev-parse", "--short", "HEAD") or "unknown", "uncommitted_changes": dirty,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": f"{cpu_name()}, {os.cpu_count()} logical cores, {' '.join(flags) or 'no AVX2'}"}


class Results:
    """The tables of one notebook run: `Results(results_dir, "07_low_label", params).table("effects", frame)`."""

    def __init__(self, results_dir: str | Path, notebook: str, params: dict | None = None):
        self.folder = Path(results_dir) / notebook
        self.meta = {**provenance(notebook), "parameters": {k: v for k, v in (params or {}).items()}, "files": {}}

    def _wrote(self, name: str, rows: int | None) -> Path:
        self.meta["files"][name] = {"rows": rows} if rows is not None else {}
        write_text(self.folder / "meta.json", json.dumps(self.meta, indent=1, ensure_ascii=False, default=str) + "\n")
        return self.folder / name

    def table(self, name: str, frame) -> Path:
        """Write `frame` as `<name>.csv` (8 significant digits; the docs quote 3 decimals)."""
        write_text(self.folder / f"{name}.csv", frame.to_csv(index=False, float_format="%.8g"))
        return self._wrote(f"{name}.csv", len(frame))

    def json(self, name: str, obj) -> Path:
        """Write a named setting (e.g. a chosen recipe) as `<name>.json`, for the notebooks that read it."""
        write_text(self.folder / f"{name}.json", json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n")
        return self._wrote(f"{name}.json", None)
