"""nbval checks what `make test` says it checks: a checked cell whose printed number differs from
notebooks/checked_outputs.json fails, and a timing or a path in the same output does not.

nbval skips the comparison for a cell without stored outputs, so if `mtl.nbtools.nbval_plugin` stopped attaching
them (e.g. dropped from pyproject's `addopts`), every checked cell would pass silently; and a sanitising regex in
notebooks/nbval_sanitize.cfg that blanked numbers would make every comparison pass. So the probe runs with the
project's own settings, copied: pyproject.toml (its `addopts` load the plugin; the probe passes no `-p`), the
sanitising file, and the nbval flags of the Makefile's `test` target.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from mtl.nbtools.run import CHECK_MARK

PRINTED = "held-out accuracy 0.984 in 12.3 s, model in /tmp/run-7/m.safetensors"
CASES = [  # one checked cell each, all printing PRINTED: (the output stored in checked_outputs.json, whether nbval passes it)
    (PRINTED, True),
    ("held-out accuracy 0.984 in 4 s, model in /home/u/x/m.safetensors", True),  # another timing and path
    ("held-out accuracy 0.899 in 12.3 s, model in /tmp/run-7/m.safetensors", False),  # the number moved
    ("held-out accuracy 0.985 in 12.3 s, model in /tmp/run-7/m.safetensors", False),  # its last digit moved
]


def make_test_nbval_flags() -> list[str]:
    """The flags `make test` hands pytest for the notebooks (the Makefile's NBVAL variable)."""
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if re.match(r"^NBVAL\s*:?=", x))
    return shlex.split(line.split("=", 1)[1])


@pytest.mark.slow
def test_a_checked_number_that_moves_fails_and_a_timing_or_path_that_moves_does_not(tmp_path):
    import nbformat  # here, not at collection: its jsonschema import costs seconds, which `make test-fast` need not pay

    root = tmp_path  # an mtl root (MTL_ROOT) with the project's own test settings
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "notebooks").mkdir()
    shutil.copy(ROOT / "notebooks" / "nbval_sanitize.cfg", root / "notebooks" / "nbval_sanitize.cfg")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1")] + [nbformat.v4.new_code_cell(f"{CHECK_MARK}\nprint({PRINTED!r})") for _ in CASES]
    nbformat.write(nb, root / "notebooks" / "99_probe.ipynb")
    stored = [[{"name": "stdout", "output_type": "stream", "text": [expected + "\n"]}] for expected, _ in CASES]
    (root / "notebooks" / "checked_outputs.json").write_text(json.dumps({"99_probe.ipynb": stored}))
    flags = make_test_nbval_flags()
    assert "--nbval-sanitize-with" in flags and not any(f.startswith("-p") and "nbval_plugin" in f for f in flags)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", *flags, "notebooks/"], capture_output=True, text=True, cwd=root,
                       timeout=300, env={**os.environ, "MTL_ROOT": str(root), "PYTHONPATH": str(ROOT)})
    for cell, (_, passes) in enumerate(CASES, start=1):
        assert f"{'PASSED' if passes else 'FAILED'} notebooks/99_probe.ipynb::Cell {cell}" in r.stdout, (cell, r.stdout[-3000:])
    assert "3 passed" in r.stdout and "2 failed" in r.stdout, r.stdout[-3000:]
