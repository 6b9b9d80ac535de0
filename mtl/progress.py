"""Progress bars and log lines: where a reader sees them, and out of the way of the data a command prints.

In a notebook kernel stderr renders as a red block, so log lines and bars go to stdout there; on a terminal they
go to stderr, so that `mtl predict … > out.csv` keeps the data alone on stdout. Warnings always go to stderr.
"""

from __future__ import annotations

import sys


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (JupyterLab, papermill, nbval)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and type(shell).__name__ == "ZMQInteractiveShell"


def log(text: str) -> None:
    """One log line (not a warning): stdout in a notebook, stderr on a terminal."""
    print(text, file=sys.stdout if in_kernel() else sys.stderr, flush=True)


def bar(total: int | None, desc: str, unit: str = "it", **kw):
    """A tqdm bar that shows where a reader can see it and stays silent elsewhere (one line per redraw would flood a log)."""
    from tqdm.auto import tqdm

    notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)  # tqdm.auto picked the widget: a kernel with ipywidgets
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stdout if in_kernel() else sys.stderr, disable=False if notebook else None, **kw)
