"""pytest plugin, loaded by pyproject's `addopts`: before nbval runs, its `# NBVAL_CHECK_OUTPUT` cells get
their expected output from notebooks/checked_outputs.json (the notebooks are stored stripped)."""

from mtl.nbtools.run import attach_checked_outputs


def pytest_collection_modifyitems(items):
    attach_checked_outputs(items)
