"""The notebooks keep their evidence: every interval the docs report is in a committed results table, notebook
settings are checked and read from where they were chosen, and result files say what made them."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import fields

import pandas as pd
import pytest
from conftest import ROOT

from mtl.config import TrainConfig
from mtl.errors import MTLError

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DOCS = [ROOT / "README.md", ROOT / "docs" / "results.md"]
NUM = r"[+\-−]?\d+\.\d{3}"
INTERVAL = re.compile(rf"({NUM}) \[({NUM}), ({NUM})\]")
# (point, low, high) columns of the results tables: scores, paired differences, effects
TRIPLES = [("estimate", "ci_lo", "ci_hi"), ("estimate", "lo", "hi"), ("A_minus_B", "ci_lo", "ci_hi"), ("diff", "lo", "hi"),
           ("test_accuracy", "test_accuracy_lo", "test_accuracy_hi")]


def _norm(value: str | float) -> str:
    """A number to 3 decimals as text, sign-normalised: '−0.005' -> '-0.005', '+0.003' -> '0.003', -0.0001 -> '0.000'."""
    v = float(value.replace("−", "-")) if isinstance(value, str) else float(value)
    return f"{v:.3f}".replace("-0.000", "0.000")


def _published() -> dict[tuple[str, str, str], str]:
    """Every (point, low, high) triple, to 3 decimals, of every committed results CSV -> the file it is in."""
    found = {}
    for csv in sorted((ROOT / "results").glob("*/*.csv")):
        frame = pd.read_csv(csv)
        for point, lo, hi in TRIPLES:
            if {point, lo, hi} <= set(frame.columns):
                for row in frame[[point, lo, hi]].dropna().itertuples(index=False):
                    found.setdefault(tuple(_norm(v) for v in row), str(csv.relative_to(ROOT)))
    return found


def test_every_interval_in_readme_and_results_doc_is_in_a_committed_results_table():
    published = _published()
    missing = []
    for doc in DOCS:
        for m in INTERVAL.finditer(doc.read_text()):
            if tuple(map(_norm, m.groups())) not in published:
                missing.append(f"{doc.name}: {m.group(0)}")
    assert published, "no results tables committed under results/"
    assert not missing, f"{len(missing)} reported intervals found in no results/*/*.csv: {missing[:10]}"


def test_the_interval_check_finds_signed_and_unicode_minus_numbers():
    text = "diff −0.005 [−0.010, +0.000] and 0.634 [0.626, 0.643]"
    assert [tuple(map(_norm, m.groups())) for m in INTERVAL.finditer(text)] == [("-0.005", "-0.010", "0.000"), ("0.634", "0.626", "0.643")]


def _cells(nb) -> list[dict]:
    return [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


def _parameters(nb) -> dict:
    cell = next(c for c in _cells(nb) if "parameters" in c.get("metadata", {}).get("tags", []))
    return {t.targets[0].id: ast.literal_eval(t.value) for t in ast.parse("".join(cell["source"])).body}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_every_parameter_of_a_notebook_is_checked(nb):
    """Its `check_params(...)` call names every parameter of its parameters cell, and each has a rule that accepts the default."""
    from mtl.nbtools.run import check_params

    params = _parameters(nb)
    calls = [n for c in _cells(nb) for n in ast.walk(ast.parse("".join(c["source"])))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "check_params"]
    assert len(calls) == 1, "one check_params call"
    assert {k.arg for k in calls[0].keywords} == set(params)
    check_params(**params)


def test_a_parameter_without_a_rule_or_with_a_bad_value_is_one_line_error():
    from mtl.nbtools.run import check_params

    with pytest.raises(MTLError, match="parameter foo: no rule"):
        check_params(foo=1)
    with pytest.raises(MTLError, match="parameter figures_dir: expected a path"):
        check_params(figures_dir="")
    with pytest.raises(MTLError, match="parameter full: expected true or false, got 'yes'"):
        check_params(full="yes")


def test_the_training_notebook_trains_with_train_configs_defaults():
    """03 restates TrainConfig's defaults as plain values (papermill needs literals): they must stay equal."""
    from mtl.engine.embed import EmbedSpec

    params, default = _parameters(ROOT / "notebooks/03_training.ipynb"), TrainConfig()
    shared = {f.name for f in fields(TrainConfig)} & set(params)
    assert {"epochs", "lr", "batch_size", "hidden", "weighting", "device", "seed"} <= shared
    assert {k: params[k] for k in shared} == {k: getattr(default, k) for k in shared}
    assert params["layers"] == EmbedSpec().layers


def test_adaptation_reads_the_recipe_05_publishes():
    nb05 = "".join("".join(c["source"]) for c in _cells(ROOT / "notebooks/05_external_sets.ipynb"))
    name = re.search(r'out\.json\("(\w+)", recipe_t\.as_dict\(\)\)', nb05).group(1)
    assert _parameters(ROOT / "notebooks/09_adaptation.ipynb")["recipe_path"] == f"results/05_external_sets/{name}.json"


def test_results_tables_are_written_with_what_made_them(tmp_path, monkeypatch):
    from mtl.nbtools.results import COMMAND_ENV, Results

    monkeypatch.setenv(COMMAND_ENV, "mtl notebooks --only 07 --full --publish")
    out = Results(tmp_path, "07_low_label", {"draws": 20})
    out.table("effects", pd.DataFrame({"diff": [0.0123456789], "lo": [-0.01], "hi": [0.03]}))
    meta = json.loads((tmp_path / "07_low_label" / "meta.json").read_text())
    assert meta["command"] == "mtl notebooks --only 07 --full --publish" and meta["parameters"] == {"draws": 20}
    in_git = (ROOT / ".git").exists()  # the Docker image copies no .git
    assert (re.fullmatch(r"[0-9a-f]{4,}", meta["commit"]) if in_git else meta["commit"] == "unknown")
    assert meta["date"][:2] == "20" and "cores" in meta["machine"]
    assert isinstance(meta["uncommitted_changes"], list)  # the paths that differed from the commit, none when clean
    assert meta["files"] == {"effects.csv": {"rows": 1}}
    assert pd.read_csv(tmp_path / "07_low_label" / "effects.csv")["diff"][0] == pytest.approx(0.0123456789, abs=1e-8)
    assert not list((tmp_path / "07_low_label").glob(".*"))  # atomic writes leave no temp files behind


def test_publishing_research_results_needs_their_full_run(tmp_path):
    from mtl.nbtools.run import run_all

    with pytest.raises(MTLError, match="07_low_label.ipynb publish from their full run only"):
        run_all({}, only=["07"], out_dir=tmp_path, publish=True)
    assert not list(tmp_path.iterdir())  # refused before anything ran or was written


def test_adaptation_uses_the_heads_optimiser_with_the_recipes_weight_decay(monkeypatch):
    """One optimiser for heads and adapted layers: the recipe's weight decay reaches the adapted layers' Adam."""
    import mtl.train
    from mtl.config import Adapt, Recipe
    from mtl.engine.backbone import resolve_backbone
    from mtl.research.adapt import Prefix, finetune
    from mtl.tasks import DEFAULT_TASKS

    made = []
    real = mtl.train.optimiser
    monkeypatch.setattr(mtl.train, "optimiser", lambda groups, config: made.append(real(groups, config)) or made[-1])
    texts = ["A late goal won the cup.", "The vote was delayed again.", "What a dreadful match.", "The budget passed."]
    y = {"topic": [0, 1, 0, 1], "sentiment": [2, 1, 0, 1]}
    y = {t: __import__("numpy").array(v) for t, v in y.items()}
    recipe = Recipe("last", TrainConfig(weight_decay=0.0123, device="cpu"))
    finetune(texts, y, DEFAULT_TASKS, recipe, Adapt(unfreeze=1, epochs=1), Prefix(resolve_backbone(), 1, "last", "cpu"), verbose=False)
    assert len(made) == 1 and type(made[0]).__name__ == "Adam"
    assert [g["weight_decay"] for g in made[0].param_groups] == [0.0123, 0.0123]
    assert [g["lr"] for g in made[0].param_groups] == [Adapt().lr_backbone, Adapt().lr_heads]


def test_the_readme_example_prints_what_the_default_model_prints(trained):
    """README's `echo … | mtl predict -` block shows the output of the model `mtl train` / 03 trains with the defaults."""
    from conftest import mtl_main

    block = re.search(r"```console\n\$ echo \"(.+)\" \| mtl predict -\n(.+)\n```", (ROOT / "README.md").read_text())
    r = mtl_main("predict", "-", "--model", str(trained["path"]), stdin=block.group(1) + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == block.group(2).strip()


def test_provenance_lists_the_changed_paths_whole(tmp_path, monkeypatch):
    """meta.json's `uncommitted_changes` names each changed file as git does (a modified tracked file's line starts
    with a space), leaving out what a run writes (results/, figures/) and prose."""
    import subprocess

    from mtl import paths
    from mtl.nbtools.results import provenance

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("mtl/code.py", "results/x/t.csv", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a\n")
    git("add", ".")
    git("commit", "-qm", "first")
    for name in ("mtl/code.py", "results/x/t.csv", "README.md"):
        (tmp_path / name).write_text("b\n")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    assert provenance("07_low_label")["uncommitted_changes"] == ["mtl/code.py"]
