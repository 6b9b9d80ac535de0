"""pytest plugin, loaded by pyproject's `addopts`, for the notebooks under nbval (`make test`):

- its `# NBVAL_CHECK_OUTPUT` cells get their expected output from notebooks/checked_outputs.json (the notebooks
  are stored stripped);
- as `make run` does, each notebook's `figures_dir` and `results_dir` parameters point into one folder of this
  session (`SESSION.folder`), so nbval leaves tracked and earlier files alone and the figures it wrote are known;
- every cell's outputs as nbval captured them are kept (`SESSION.executed(name)`), so the tests in
  notebooks/test_executed.py read the executed notebooks without running them a second time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mtl import paths
from mtl.nbtools.run import attach_checked_outputs

REDIRECTED = ("figures_dir", "results_dir")


class Session:
    """The nbval run of this pytest session: where its notebooks wrote, and what each cell printed and showed."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self.outputs: dict[str, list] = {}  # notebook file name -> [(cell, outputs or None if it did not run)]

    @property
    def folder(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="mtl-nbval-"))
        return self._folder

    def executed(self, notebook: Path):
        """The notebook with the outputs nbval captured in this session, or None if not all its code cells ran."""
        import nbformat

        ran = self.outputs.get(notebook.name)
        nb = nbformat.read(notebook, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        if not ran or len(ran) != len(code) or any(outs is None for _, outs in ran):
            return None
        for cell, (_, outs) in zip(code, ran):
            cell.outputs = [nbformat.from_dict(o) for o in outs]
        return nb


SESSION = Session()


def pytest_collection_modifyitems(items):
    attach_checked_outputs(items)
    for item in items:
        cell = getattr(item, "cell", None)
        if type(item).__name__ == "IPyNbCell" and cell is not None and "parameters" in cell.get("metadata", {}).get("tags", []):
            names = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
            cell.source += "".join(f"\n{k} = {str(SESSION.folder / k.removesuffix('_dir'))!r}  # this nbval session's folder"
                                   for k in REDIRECTED if k in names)
            if "external_dir" in names:  # where this machine keeps them (MTL_EXTERNAL_DIR), as `checked_key` looks
                cell.source += f"\nexternal_dir = {str(paths.EXTERNAL_DIR)!r}"


def pytest_runtest_teardown(item):
    if type(item).__name__ == "IPyNbCell" and getattr(item, "cell", None) is not None:
        SESSION.outputs.setdefault(Path(str(item.fspath)).name, []).append((item.cell, getattr(item, "test_outputs", None)))
