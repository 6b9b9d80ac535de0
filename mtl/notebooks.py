"""Running the numbered notebooks headless with papermill (`make run`, `mtl notebooks`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mtl import paths
from mtl.errors import MTLError


def notebook_list(only: list[str] | None = None) -> list[Path]:
    nbs = sorted(paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only:
        nbs = [nb for nb in nbs if any(nb.name.startswith(o) for o in only)]
    if not nbs:
        raise MTLError(f"no notebooks matching {only or '*'} in {paths.NOTEBOOKS_DIR}")
    return nbs


def run_all(params: dict, only: list[str] | None = None, out_dir: str | Path | None = None) -> Path:
    """Execute notebooks in order; each gets only the parameters its `parameters` cell declares."""
    import papermill as pm

    out = Path(out_dir) if out_dir else paths.RUNS_DIR / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    declared_by = {nb: set(pm.inspect_notebook(str(nb))) for nb in notebook_list()}
    unknown = set(params) - set().union(*declared_by.values())
    if unknown:
        raise MTLError(f"unknown notebook parameter(s): {', '.join(sorted(unknown))}")
    for nb in notebook_list(only):
        declared = declared_by[nb]
        given = {k: v for k, v in params.items() if k in declared}
        print(f"running {nb.name} {given or ''}", file=sys.stderr)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out / nb.name), parameters=given, cwd=str(nb.parent), progress_bar=False, kernel_name="python3")
        except pm.PapermillExecutionError as exc:
            raise MTLError(f"{nb.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}; see {out / nb.name}") from None
        print(f"  done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(f"executed notebooks in {out}; figures in {paths.FIGURES_DIR}", file=sys.stderr)
    return out


def check_params(**params) -> None:
    """Validate notebook parameters (papermill passes whatever the user typed)."""
    from mtl.backbone import DEVICES

    for name, value in params.items():
        if name in ("epochs", "batch_size", "seed") and (not isinstance(value, int) or isinstance(value, bool) or (value <= 0 and name != "seed")):
            raise MTLError(f"parameter {name}: expected a {'non-negative' if name == 'seed' else 'positive'} integer, got {value!r}")
        if name == "lr" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise MTLError(f"parameter lr: expected a positive number, got {value!r}")
        if name == "device" and value not in DEVICES:
            raise MTLError(f"parameter device: expected one of {', '.join(DEVICES)}, got {value!r}")
