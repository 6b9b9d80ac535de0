"""Progress bars: a widget in JupyterLab (ipywidgets), a plain bar on a terminal, nothing in logs and pipes."""

from __future__ import annotations

import sys


def bar(total: int | None, desc: str, unit: str = "it", **kw):
    """A tqdm bar that shows where a reader can see it and stays silent elsewhere (one line per redraw would flood a log)."""
    from tqdm.auto import tqdm

    notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)  # tqdm.auto picked the widget: a kernel with ipywidgets
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=False if notebook else None, **kw)
