"""The nbval plugin really attaches the stored outputs: a checked cell whose output differs must fail.

nbval skips the comparison for a cell without stored outputs, so if `mtl.nbtools.nbval_plugin` stopped
attaching them, every checked cell would pass silently. Run on a two-cell probe notebook in a temp root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nbformat
import pytest
from conftest import ROOT

from mtl.nbtools.run import CHECK_MARK


def _probe(root, printed: str, expected: str) -> subprocess.CompletedProcess:
    (root / "notebooks").mkdir(exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(f"{CHECK_MARK}\nprint({printed!r})")]
    nbformat.write(nb, root / "notebooks" / "99_probe.ipynb")
    (root / "notebooks" / "checked_outputs.json").write_text(json.dumps(
        {"99_probe.ipynb": [[{"name": "stdout", "output_type": "stream", "text": [expected + "\n"]}]]}))
    (root / "pyproject.toml").write_text("")  # the probe root is an mtl root (paths.ROOT), with no pytest settings of its own
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "mtl.nbtools.nbval_plugin", "--nbval-lax", "-p", "no:cacheprovider",
                           str(root / "notebooks" / "99_probe.ipynb")], capture_output=True, text=True, cwd=root, timeout=300,
                          env={**os.environ, "MTL_ROOT": str(root), "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_a_checked_cell_whose_output_differs_from_checked_outputs_json_fails(tmp_path):
    same = _probe(tmp_path, "held-out accuracy 0.984", "held-out accuracy 0.984")
    assert same.returncode == 0 and "2 passed" in same.stdout, same.stdout[-2000:]
    moved = _probe(tmp_path, "held-out accuracy 0.984", "held-out accuracy 0.899")
    assert moved.returncode == 1 and "1 failed" in moved.stdout, moved.stdout[-2000:]
