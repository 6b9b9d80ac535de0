"""The executed notebooks read as reports: every figure a notebook writes is shown in its output, log lines are not
red stderr blocks, and JupyterLab renders the figures. Collected with the notebooks (`make test` runs
`pytest --nbval-lax notebooks/`), so the outputs checked are the ones nbval captured running them, not a second
execution (`mtl.nbtools.nbval_plugin.SESSION`); run alone, the file executes 03 and 04 itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from mtl.nbtools.nbval_plugin import SESSION

HERE = Path(__file__).parent
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[dict[str, nbformat.NotebookNode], Path]:
    """name -> executed notebook, and the folder its figures went to: nbval's run in this session, else 03 and 04 now."""
    got = {nb.name: run for nb in NOTEBOOKS if (run := SESSION.executed(nb)) is not None}
    if got:
        return got, SESSION.folder / "figures"
    from mtl.nbtools.run import run_all

    out = run_all({}, only=["03", "04"], out_dir=tmp_path_factory.mktemp("run"))
    return {p.name: nbformat.read(p, as_version=4) for p in out.glob("*.ipynb")}, out / "figures"


def _images(nb) -> list[str]:
    """The figure file named by each image output of a notebook ('?' where an image names none)."""
    return [o.get("metadata", {}).get("mtl", {}).get("figure", "?") for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


def test_every_figure_a_notebook_writes_is_shown_in_its_output(executed):
    notebooks, figures = executed
    shown = {name: _images(nb) for name, nb in notebooks.items()}
    assert len(shown["03_training.ipynb"]) >= 1 and len(shown["04_evaluation.ipynb"]) >= 3, shown
    written = {p.name for p in figures.glob("*.png")}
    displayed = {f for names in shown.values() for f in names}
    assert written and written == displayed, f"written but not shown: {written - displayed}; shown but not written: {displayed - written}"


def test_log_lines_are_not_stderr(executed):
    """stderr renders as a red block in JupyterLab: only warnings belong there."""
    for name, nb in executed[0].items():
        for c in nb.cells:
            for o in c.get("outputs", []) if c.cell_type == "code" else []:
                if o.get("name") == "stderr":
                    assert "warn" in o["text"].lower(), (name, o["text"][:300])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_renders_the_executed_evaluation_notebook_with_its_figures(executed, tmp_path):
    """JupyterLab on 127.0.0.1, opened in headless Chromium as a user would: the executed 04 shows its PNG figures."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`; .ci/run installs it)")
    root = tmp_path / "root"
    root.mkdir()
    nbformat.write(executed[0]["04_evaluation.ipynb"], root / "04_evaluation.ipynb")
    # render every cell (JupyterLab's default windowing leaves cells outside the viewport unrendered)
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = _free_port(), "mtl-render-test"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
                            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                            f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,4000", "--virtual-time-budget=30000",
                              "--dump-dom", f"http://127.0.0.1:{port}/lab/tree/04_evaluation.ipynb?token={token}"],
                             capture_output=True, text=True, timeout=180).stdout
    finally:
        lab.terminate()
        lab.wait(timeout=30)
    images = dom.count('src="data:image/png')
    assert images >= 3, f"{images} PNG images rendered; DOM starts {dom[:500]!r}"
