"""Project hygiene: notebooks stored clean, Dockerfile and environment.yml agree with pyproject, JupyterLab serves."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import tomllib
import yaml
from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", req.strip())
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def _pyproject_reqs() -> dict[str, str]:
    reqs = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    return dict(_split(r) for r in reqs)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.name for n in NOTEBOOKS])
def test_notebook_is_stored_clean_with_one_parameters_cell(nb):
    """Stripped: no outputs, no counts. The output nbval checks lives in notebooks/checked_outputs.json."""
    from mtl.nbtools.run import CHECK_MARK, CHECKED_OUTPUTS, checked_key

    data = json.loads(nb.read_text())
    code = [c for c in data["cells"] if c["cell_type"] == "code"]
    for c in code:
        assert not c.get("outputs") and c.get("execution_count") is None, "strip outputs (nbstripout)"
    stored = json.loads(CHECKED_OUTPUTS.read_text())
    checked = [c for c in code if CHECK_MARK in "".join(c["source"])]
    for key in {checked_key(nb, external=True), checked_key(nb, external=False)}:  # with ../shared and, where it differs, without
        expected = stored.get(key, [])
        assert len(expected) == len(checked), f"{key}: run `make notebook-outputs`"  # every checked cell has its output, none is stale
        for outputs in expected:
            assert outputs and all(o["output_type"] == "stream" and o["name"] == "stdout" for o in outputs)
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    src = "".join(tagged[0]["source"])
    assert all(re.match(r"^\w+ = .+$", line) for line in src.splitlines() if line.strip()), "plain assignments only"


def test_the_step_by_step_notebooks_have_thin_cells():
    """01-04 walk through the model one step per cell: logic lives in mtl/, no code cell over 10 lines (imports and
    blank lines not counted). The research notebooks (05-09) show their experiments' steps (grids, CV, bootstrap),
    so their cells may be longer; anything two of them repeat lives in mtl.research."""
    for nb in NOTEBOOKS[:4]:
        for c in json.loads(nb.read_text())["cells"]:
            lines = [ln for ln in "".join(c["source"]).splitlines() if ln.strip() and not ln.startswith(("from ", "import ", "#"))]
            if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []):
                assert len(lines) <= 10, (nb.name, lines[:3])


def test_numbered_notebooks_exist_and_training_takes_the_core_parameters():
    names = [n.stem for n in NOTEBOOKS]
    assert names[:4] == ["01_data", "02_embeddings", "03_training", "04_evaluation"]
    params = "".join(json.loads((ROOT / "notebooks/03_training.ipynb").read_text())["cells"][1]["source"])
    for p in ("epochs", "lr", "device", "seed", "data_path", "model_path"):
        assert re.search(rf"^{p} = ", params, re.M), p


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.update(_split(r) for r in dep["pip"] if not r.startswith("-"))
        elif not dep.startswith(("python=", "pip")):
            name, spec = _split(dep)
            conda[name] = spec
    assert any(d.startswith("python=3.1") for d in env["dependencies"] if isinstance(d, str))
    for name, spec in _pyproject_reqs().items():
        found = conda.get(name, pip.get(name))
        assert found is not None, f"{name} missing from environment.yml"
        assert found == spec, f"{name}: pyproject says {spec!r}, environment.yml says {found!r}"


def test_dockerfile_is_consistent():
    text = (ROOT / "Dockerfile").read_text()
    torch_pin = _pyproject_reqs()["torch"]
    assert f"ARG TORCH_VERSION={torch_pin.removeprefix('==')}" in text
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    for src in re.findall(r"^COPY (?!.*--from=)(.+) \S+$", text, re.M):  # COPY --from copies between stages
        for path in (p for p in src.split() if not p.startswith("--")):
            assert (ROOT / path.rstrip("/")).exists(), f"COPY {path}: not in the repo"
    assert re.search(r"^EXPOSE 8888$", text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:2] == ["jupyter", "lab"] and "--port=8888" in cmd and "--ip=0.0.0.0" in cmd
    assert "HF_HUB_OFFLINE=1" in text


@pytest.mark.slow
def test_jupyterlab_serves_the_notebooks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "mtl-test-token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={ROOT}", "--ServerApp.open_browser=False", "--allow-root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**__import__("os").environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path)},
    )
    try:
        url = f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}"
        body = None
        for _ in range(120):
            try:
                body = json.loads(urllib.request.urlopen(url, timeout=2).read())
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, "JupyterLab did not answer"
        names = {item["name"] for item in body["content"]}
        assert {"01_data.ipynb", "04_evaluation.ipynb"} <= names
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/notebooks", timeout=2)  # no token, no access
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_make_run_executes_notebooks_into_a_new_runs_folder_with_the_parameters_and_leaves_the_checkout_clean():
    """`make run` is `mtl notebooks` with the Makefile's flags; `mtl notebooks` injects the parameters a notebook declares,
    writes executed copies and figures under runs/<timestamp>/, and leaves every tracked and unignored file alone."""
    import shutil

    from conftest import mtl_main

    from mtl import paths

    dry = subprocess.run(["make", "--no-print-directory", "-n", "run", "SEED=3", "EPOCHS=7"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and dry.stdout.split()[-5:] == ["notebooks", "--epochs", "7", "--seed", "3"], dry.stdout
    assert dry.stdout.strip().splitlines()[-1].split()[0].endswith("mtl")

    def status() -> str:  # where a notebook run could write
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "data", "figures", "notebooks", "results",
                               "saved_models"], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    before, runs, had_runs = status(), set(paths.RUNS_DIR.glob("*")), paths.RUNS_DIR.is_dir()
    r = mtl_main("notebooks", "--only", "01", "--seed", "3", "--epochs", "7", "-p", "examples_per_cell", "1")
    (new,) = set(paths.RUNS_DIR.glob("*")) - runs
    try:
        assert r.returncode == 0, r.stderr
        assert re.fullmatch(r"\d{8}-\d{6}", new.name) and sorted(p.name for p in new.glob("*.ipynb")) == ["01_data.ipynb"]
        cells = [c for c in json.loads((new / "01_data.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
        injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(injected) == 1, "papermill injects one parameters cell"
        given = dict(line.split(" = ", 1) for line in "".join(injected[0]["source"]).splitlines() if " = " in line)
        assert given["seed"] == "3" and given["examples_per_cell"] == "1" and json.loads(given["figures_dir"]) == str(new / "figures")
        assert "epochs" not in given  # 01 declares no epochs: a notebook gets only the parameters it declares
        assert all(c["execution_count"] for c in cells) and not [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
        assert status() == before
    finally:
        shutil.rmtree(new)
        if not had_runs and not any(paths.RUNS_DIR.iterdir()):
            paths.RUNS_DIR.rmdir()  # as it was (Ray's `--working-dir` upload, for one, would carry an empty runs/)
