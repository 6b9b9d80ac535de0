"""Running the numbered notebooks headless with papermill (`make run`, `mtl notebooks`), and
refreshing the outputs that nbval checks (`make notebook-outputs`).

The notebooks are stored stripped. The expected printed output of each `# NBVAL_CHECK_OUTPUT` cell
lives in `notebooks/checked_outputs.json`; the pytest plugin `mtl.nbtools.nbval_plugin` hands it to nbval's cells at
collection, so nbval compares a fresh run against it as if it were stored in the notebook."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mtl import paths
from mtl.errors import MTLError

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"  # cells whose printed output is compared by nbval
# {notebook name: [stdout outputs of each checked cell, in notebook order]}. Not keyed by cell id: nbstripout
# renumbers ids on commit, so a fresh clone's ids differ from the working copy's.
CHECKED_OUTPUTS = paths.NOTEBOOKS_DIR / "checked_outputs.json"
NO_EXTERNAL = " (without the external sets)"  # the key suffix of what a notebook prints when ../shared is absent
# The kernel warns at every start that it talks over TCP without encryption: a local kernel on 127.0.0.1, so in
# `make run`'s log that is one line of noise per notebook. Its errors still show.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


def notebook_list(only: list[str] | None = None) -> list[Path]:
    nbs = sorted(paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [nb for nb in nbs if any(nb.name.startswith(o) for o in only)]
    if not nbs:
        raise MTLError(f"no notebooks matching {only or '*'} in {paths.NOTEBOOKS_DIR}")
    return nbs


def needs_external(nb: Path) -> bool:
    """Whether a notebook is about the external sets alone (metadata `mtl.needs_external`): without them it has nothing to run."""
    return bool(json.loads(nb.read_text()).get("metadata", {}).get("mtl", {}).get("needs_external"))


def reads_external(nb: Path) -> bool:
    """Whether a notebook declares an `external_dir` parameter: it scores the external sets when they are present."""
    cells = json.loads(nb.read_text())["cells"]
    return any("parameters" in c.get("metadata", {}).get("tags", []) and "external_dir" in "".join(c["source"]) for c in cells)


def checked_key(nb: Path, external: bool | None = None) -> str:
    """Where `nb`'s checked outputs live in CHECKED_OUTPUTS: a notebook that reads the external sets but runs without
    them (on a user's clone, where ../shared is absent) prints other numbers then, stored under a key of their own."""
    external = paths.EXTERNAL_DIR.is_dir() if external is None else external
    return nb.name if external or not reads_external(nb) or needs_external(nb) else nb.name + NO_EXTERNAL


def skip_reason(nb: Path) -> str | None:
    """Why `nb` is skipped on this machine (the one guard for absent external data, for the runner and nbval alike), or None."""
    if needs_external(nb) and not paths.EXTERNAL_DIR.is_dir():
        return f"{nb.name} needs the external sets, not found at {paths.EXTERNAL_DIR} (they live beside the repo, never inside it)"
    return None


def command_line(params: dict, only: list[str] | None, out_dir, publish: bool) -> str:
    """The `mtl notebooks …` command that runs these notebooks with these parameters (recorded beside results)."""
    parts = ["mtl notebooks"] + (["--only", *only] if only else []) + (["--full"] if params.get("full") else [])
    parts += [f"-p {k} {v}" for k, v in params.items() if k != "full"] + (["--publish"] if publish else [])
    return " ".join(parts + ([f"--out {out_dir}"] if out_dir else []))


def run_all(params: dict, only: list[str] | None = None, out_dir: str | Path | None = None, publish: bool = False) -> Path:
    """Execute notebooks in order; each gets only the parameters its `parameters` cell declares.

    Figures and result tables go to `<out>/figures` and `<out>/results`, so a run leaves tracked files alone;
    `publish=True` writes the committed `figures/` and `results/` instead, and needs the research notebooks'
    full form (`full=True`): their quick forms are checks, not results. The research notebooks run their quick
    form unless `full=True` is given.
    """
    import os

    import papermill as pm

    from mtl.nbtools.results import COMMAND_ENV

    out = Path(out_dir) if out_dir else paths.RUNS_DIR / time.strftime("%Y%m%d-%H%M%S")
    declared_by = {nb: set(pm.inspect_notebook(str(nb))) for nb in notebook_list()}
    unknown = set(params) - set().union(*declared_by.values())
    if unknown:
        raise MTLError(f"unknown notebook parameter(s): {', '.join(sorted(unknown))}")
    chosen = notebook_list(only)
    if publish and not params.get("full") and (quick := [nb.name for nb in chosen if "full" in declared_by[nb]]):
        raise MTLError(f"--publish writes the committed results: {', '.join(quick)} publish from their full run only (add --full)")
    out.mkdir(parents=True, exist_ok=True)
    results = {"figures_dir": paths.FIGURES_DIR, "results_dir": paths.RESULTS_DIR} if publish else \
        {"figures_dir": out / "figures", "results_dir": out / "results"}
    defaults = {k: str(v) for k, v in {**results, "external_dir": paths.EXTERNAL_DIR}.items()}  # MTL_EXTERNAL_DIR reaches the notebooks
    os.environ[COMMAND_ENV] = command_line(params, only, out_dir, publish)  # the kernels inherit it: results record it
    for nb in chosen:
        if why := skip_reason(nb):
            print(f"skipping {why}", file=sys.stderr)
            continue
        declared = declared_by[nb]
        given = {k: v for k, v in {**defaults, **params}.items() if k in declared}
        print(f"running {nb.name} {given or ''}", file=sys.stderr)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), parameters=given, cwd=str(nb.parent), progress_bar=False, kernel_name="python3",
                                extra_arguments=KERNEL_ARGS)
        except pm.PapermillExecutionError as exc:
            raise MTLError(f"{nb.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}; see {out / nb.name}") from None
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"executed notebooks in {out}; figures in {results['figures_dir']}, tables in {results['results_dir']}", file=sys.stderr)
    return out


def refresh_checked_outputs(only: list[str] | None = None) -> list[Path]:
    """Run each notebook with its stored defaults (as nbval does) and store the stdout of its
    `# NBVAL_CHECK_OUTPUT` cells in CHECKED_OUTPUTS; the notebooks themselves stay stripped. A notebook that reads
    the external sets runs a second time without them (`checked_key`), as it runs on a clone without ../shared.

    Do this on purpose, after a change that moves a reported number, and commit the diff with it.
    """
    import tempfile

    import papermill as pm

    from mtl.atomic import write_text

    expected = json.loads(CHECKED_OUTPUTS.read_text()) if CHECKED_OUTPUTS.is_file() else {}
    have_external = paths.EXTERNAL_DIR.is_dir()
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        absent = str(Path(tmp) / "no-external-sets")
        for nb in notebook_list(only):
            # without ../shared only the "without" form can be refreshed; with it, both
            forms = [(have_external, {})] if have_external or not reads_external(nb) else []
            if reads_external(nb) and not needs_external(nb):
                forms.append((False, {"external_dir": absent}))
            for external, params in forms:
                print(f"refreshing checked outputs of {checked_key(nb, external)}", file=sys.stderr)
                executed = Path(tmp) / nb.name
                pm.execute_notebook(str(nb), str(executed), parameters=params, cwd=str(nb.parent), progress_bar=False, kernel_name="python3",
                                    extra_arguments=KERNEL_ARGS)
                expected[checked_key(nb, external)] = [
                    [o for o in c["outputs"] if o["output_type"] == "stream" and o["name"] == "stdout"]
                    for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code" and CHECK_MARK in "".join(c["source"])]
            if forms:
                done.append(nb)
    write_text(CHECKED_OUTPUTS, json.dumps(expected, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    return done


def attach_checked_outputs(items) -> None:
    """pytest hook body: give nbval's `# NBVAL_CHECK_OUTPUT` cells their expected output and a count
    (nbval treats a cell without one as unrun and skips the comparison). A checked cell with nothing stored
    expects a line saying so, so it fails (with that line in the diff) instead of stopping the whole session."""
    import pytest

    cells = [item for item in items if type(item).__name__ == "IPyNbCell"]
    if not cells:  # a tests/-only session: no notebook work (nbformat's import alone costs seconds)
        return
    import nbformat

    expected = json.loads(CHECKED_OUTPUTS.read_text()) if CHECKED_OUTPUTS.is_file() else {}
    seen: dict[str, int] = {}  # checked cells met so far per notebook (items come in notebook order)
    for item in cells:
        if why := skip_reason(Path(str(item.fspath))):
            item.add_marker(pytest.mark.skip(reason=why))
            continue
        cell = getattr(item, "cell", None)
        if cell is None or CHECK_MARK not in cell.source:
            continue
        name = checked_key(Path(str(item.fspath)))
        k = seen[name] = seen.get(name, -1) + 1
        outputs = expected.get(name, [])[k] if k < len(expected.get(name, [])) else None
        if outputs is None:
            outputs = [{"name": "stdout", "output_type": "stream",
                        "text": [f"no expected output stored in {CHECKED_OUTPUTS.name} for this cell: run `make notebook-outputs`\n"]}]
        # stored one line per list item, as .ipynb files store text; nbval compares the joined string
        cell.outputs = [nbformat.from_dict({**o, "text": "".join(o["text"])}) for o in outputs]
        cell.execution_count = 1


def check_params(**params) -> None:
    """Validate notebook parameters (papermill passes whatever the user typed); the CLI's rules (`config.RULES`).

    Every parameter needs a rule: file and folder parameters (`*_path`, `*_dir`, `test_sentences`) are paths, any
    other name must be in `config.RULES`, so a parameters cell cannot grow a setting that nobody checks."""
    from mtl.config import RULES, problem

    def rule(name: str) -> str:
        if name.endswith(("_path", "_dir")) or name == "test_sentences":
            return "path"
        if name not in RULES:
            raise MTLError(f"parameter {name}: no rule to check it (add one to mtl.config.RULES)")
        return name

    for name, value in params.items():
        if (why := problem(rule(name), value)) is not None:
            raise MTLError(f"parameter {name}: {why}")
