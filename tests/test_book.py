"""Tests for mocoxr.book: profiles, the papermill runner (skip, resume, failure isolation),
site tagging and the jupytext pairing of the real notebooks.

Runner tests use trivial stand-in notebooks in tmp_path (a few seconds of kernel start-up each);
the real notebooks run in tests/test_notebooks.py.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import nbformat
import pytest

from mocoxr import book

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- stand-in project


def write_nb(path: Path, params: str, body: str, title: str = "Stand-in") -> None:
    """A py:percent notebook with a parameters cell."""
    path.write_text(
        f"# %% [markdown]\n# # {title}\n\n"
        f"# %% tags=[\"parameters\"]\n{textwrap.dedent(params).strip()}\n\n"
        f"# %%\n{textwrap.dedent(body).strip()}\n"
    )


@pytest.fixture(autouse=True)
def fixed_code_hash(monkeypatch):
    """The package code is part of a run's key; pin it so edits elsewhere do not rerun steps."""
    monkeypatch.setattr(book, "code_hash", lambda: "code-v1")


def empty_project(tmp_path: Path) -> Path:
    """A project root with the book's files and an empty notebooks/ folder."""
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "book").mkdir()
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (root / "_config.yml").write_text("title: t\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A tiny project: a writes a file, b may fail, c is independent of b, d needs b."""
    root = empty_project(tmp_path)
    nbs = root / "notebooks"
    write_nb(nbs / "a.py", 'run_dir = "."\nsize = 1\nopts = {"x": 1, "y": 2}',
             'from pathlib import Path\n(Path(run_dir) / "a.txt").write_text(f"{size} {opts}")')
    write_nb(nbs / "b.py", 'run_dir = "."\nfail = False\nbackbone = "r18"',
             'from pathlib import Path\nassert not fail, "b was told to fail"\n'
             '(Path(run_dir) / f"b-{backbone}.txt").write_text("ok")')
    write_nb(nbs / "c.py", 'run_dir = "."\nsize = 1',
             'from pathlib import Path\n(Path(run_dir) / "c.txt").write_text("c")')
    write_nb(nbs / "d.py", 'run_dir = "."\nbackbone = "r18"',
             'from pathlib import Path\n(Path(run_dir) / f"d-{backbone}.txt").write_text("d")')
    return root


def write_profile(root: Path, text: str, name: str = "p.yaml") -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text))
    return path


PROFILE = """
    parameters:
      size: 3
      opts: {y: 5}
    notebooks:
      a: {}
      b:
        needs: [a]
        runs:
          - {fail: %s}
      c:
        needs: [a]
      d:
        needs: [b]
"""


def run(root: Path, profile: Path, **kw) -> dict[str, str]:
    outcomes = book.run_profile(profile, root / "runs" / "p", root=root, progress=False,
                                echo=lambda *a: None, **kw)
    return {o.run_id: o.status for o in outcomes}


# ----------------------------------------------------------------------------- profiles


def test_load_profile_merges_defaults_shared_and_run(project: Path):
    path = write_profile(project, """
        parameters: {size: 3, opts: {y: 5}, backbone: r50}
        notebooks:
          a: {}
          b:
            runs: [{}, {backbone: d121}, {backbone: vit, name: big one}]
          d:
            needs: [b]
            runs: [{backbone: d121}, {backbone: r50}]
    """)
    prof = book.load_profile(path, project / "notebooks")
    ids = [r.run_id for r in prof.runs]
    assert ids == ["a", "b", "b-d121", "b-big_one", "d", "d-r50"]
    a = prof.run("a")
    assert a.parameters == {"size": 3, "opts": {"x": 1, "y": 5}}  # dict merged key by key
    assert prof.run("b-d121").parameters == {"fail": False, "backbone": "d121"}
    assert prof.run("b").needs == ["a"]  # default: every notebook listed above
    assert prof.run("b").deps == ["a"]
    # d (backbone d121) depends only on the b runs whose own parameters agree with it
    assert prof.run("d").deps == ["b", "b-d121"]
    assert prof.run("d-r50").deps == ["b"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("notebooks: {a: {}}\nparamters: {size: 1}\n", ["'paramters'"]),
        ("notebooks: {zz: {}}\n", ["notebooks.zz", "zz.py"]),
        ("notebooks: {a: {runs: [{sise: 2}]}}\n", ["notebooks.a.runs[0]", "'sise'"]),
        ("parameters: {colour: red}\nnotebooks: {a: {}}\n", ["parameters.colour"]),
        ("parameters: {opts: {z: 1}}\nnotebooks: {a: {}}\n", ["parameters.opts.z"]),
        ("notebooks: {a: {needs: [b]}, b: {}}\n", ["notebooks.a.needs", "'b'"]),
        ("notebooks: {a: {runs: {size: 2}}}\n", ["notebooks.a.runs"]),
        ("notebooks: {a: {rusn: []}}\n", ["'rusn'"]),
        ("parameters: {run_dir: x}\nnotebooks: {a: {}}\n", ["parameters.run_dir"]),
        ("requires: [size]\nparameters: {size: null}\nnotebooks: {a: {}}\n", ["requires", "'size'"]),
        ("notebooks: {b: {runs: [{}, {fail: true}, {fail: true}]}}\n", ["repeats run"]),
        ("notebooks: [a, b]\n", ["'notebooks'"]),
        ("notebooks: {a: {}\n", ["not valid YAML"]),
    ],
)
def test_bad_profile_names_file_and_key(project: Path, text: str, words: list[str]):
    path = write_profile(project, text, "bad.yaml")
    with pytest.raises(book.ProfileError) as exc:
        book.load_profile(path, project / "notebooks")
    msg = str(exc.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg


def test_parameters_cell_must_hold_literals(project: Path):
    write_nb(project / "notebooks" / "e.py", "import os\nx = 1", "pass")
    with pytest.raises(ValueError, match="e.py.*line 1"):
        book.notebook_parameters(project / "notebooks" / "e.py")
    write_nb(project / "notebooks" / "f.py", "x = len('ab')", "pass")
    with pytest.raises(ValueError, match="'x' must default to a literal"):
        book.notebook_parameters(project / "notebooks" / "f.py")


def test_unknown_profile_name_lists_packaged_ones():
    with pytest.raises(FileNotFoundError, match="quick"):
        book.profile_path("no-such-profile")


@pytest.mark.parametrize("name", ["tiny", "quick", "paper"])
def test_packaged_profiles_match_the_notebooks(name: str, tmp_path: Path):
    overrides = {"data_dir": str(tmp_path), "shenzhen_dir": str(tmp_path)} if name == "paper" else None
    prof = book.load_profile(name, ROOT / "notebooks", overrides)
    notebooks = [r.notebook for r in prof.runs]
    assert notebooks[0] == "01_data" and "06_results" in notebooks
    every = sorted(p.stem for p in (ROOT / "notebooks").glob("*.py"))
    if name == "paper":  # the stability page needs a seeds batch (run --seeds) first
        every.remove("08_stability")
    assert sorted(set(notebooks)) == every
    results = [r for r in prof.runs if r.notebook == "06_results"]
    assert len(results) == 1 and set(results[0].deps) >= {
        r.run_id for r in prof.runs if r.notebook in ("03_linear_probe", "04_finetune", "05_shenzhen")
    }


def test_quick_profile_is_the_notebooks_own_defaults():
    """A reader who runs the notebooks by hand gets the numbers of `make book` (seed 0)."""
    prof = book.load_profile("quick", ROOT / "notebooks")
    for run in prof.runs:
        defaults = book.notebook_parameters(run.source)
        defaults.pop("run_dir")
        assert run.parameters == defaults, run.run_id
    assert book.load_profile("quick").parameters == {}


def test_a_run_may_not_change_the_shared_data_settings(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parameters: {}\nnotebooks:\n  01_data: {}\n  03_linear_probe:\n"
                   "    runs: [{phantom: {n_patients: 10}}]\n")
    with pytest.raises(book.ProfileError, match="phantom.*every notebook"):
        book.load_profile(bad, ROOT / "notebooks")


def test_paper_profile_requires_data_folders():
    with pytest.raises(book.ProfileError, match="requires parameter 'data_dir'.*--data-dir"):
        book.load_profile("paper", ROOT / "notebooks")


def test_paper_profile_runs_both_backbones(tmp_path: Path):
    prof = book.load_profile("paper", ROOT / "notebooks",
                             {"data_dir": str(tmp_path), "shenzhen_dir": str(tmp_path)})
    ids = [r.run_id for r in prof.runs]
    assert "03_linear_probe-densenet121" in ids and "02_pretrain-densenet121" in ids
    assert prof.run("03_linear_probe-densenet121").deps == ["01_data", "02_pretrain-densenet121"]
    assert prof.parameters["image_size"] == 320


# ----------------------------------------------------------------------------- runner


def test_failure_is_isolated_and_rerun_resumes(project: Path):
    runs = project / "runs" / "p"
    path = write_profile(project, PROFILE % "true")
    assert run(project, path) == {"a": "ran", "b": "failed", "c": "ran", "d": "skipped"}
    assert (runs / "a.txt").read_text() == "3 {'x': 1, 'y': 5}"
    assert (runs / "c.txt").exists() and not (runs / "d-r18.txt").exists()
    assert (runs / "failed" / "b.ipynb").exists()  # partial notebook kept for reading
    assert not (runs / "executed" / "b.ipynb").exists()
    assert book.notebook_errors(runs / "failed" / "b.ipynb")

    # rerun without changes: finished runs are skipped, the failed one is tried again
    assert run(project, path) == {"a": "up to date", "b": "failed", "c": "up to date", "d": "skipped"}

    # fix the cause: b and d run, nothing else
    path = write_profile(project, PROFILE % "false")
    assert run(project, path) == {"a": "up to date", "b": "ran", "c": "up to date", "d": "ran"}
    assert not (runs / "failed" / "b.ipynb").exists()
    assert run(project, path) == dict.fromkeys("abcd", "up to date")

    # editing a notebook reruns it and everything downstream of it
    nb = project / "notebooks" / "b.py"
    nb.write_text(nb.read_text() + "\n# %%\nprint('edited')\n")
    assert run(project, path) == {"a": "up to date", "b": "ran", "c": "up to date", "d": "ran"}
    # a changed shared parameter reruns the notebooks that declare it, and their dependents
    path = write_profile(project, (PROFILE % "false").replace("size: 3", "size: 4"))
    assert run(project, path) == dict.fromkeys("abcd", "ran")


def test_changed_package_code_or_force_reruns_everything(project: Path, monkeypatch):
    path = write_profile(project, "notebooks: {a: {}, c: {}}\n")
    assert run(project, path) == dict.fromkeys("ac", "ran")
    assert run(project, path) == dict.fromkeys("ac", "up to date")
    monkeypatch.setattr(book, "code_hash", lambda: "code-v2")
    assert run(project, path) == dict.fromkeys("ac", "ran")
    assert run(project, path, force=True) == dict.fromkeys("ac", "ran")


def test_missing_or_broken_output_is_not_up_to_date(project: Path):
    path = write_profile(project, PROFILE % "false")
    run(project, path)
    runs = project / "runs" / "p"
    (runs / "executed" / "c.ipynb").unlink()
    stamp = json.loads((runs / "stamps" / "a.json").read_text())
    assert stamp["parameters"]["size"] == 3 and stamp["run_id"] == "a"
    nb = nbformat.read(runs / "executed" / "d.ipynb", as_version=4)
    nb.cells[-1].outputs = [nbformat.v4.new_output("error", ename="X", evalue="boom", traceback=[])]
    nbformat.write(nb, runs / "executed" / "d.ipynb")
    assert run(project, path) == {"a": "up to date", "b": "up to date", "c": "ran", "d": "ran"}


def test_executed_notebook_is_tagged_for_the_site(project: Path):
    path = write_profile(project, """
        notebooks:
          b:
            runs: [{}, {backbone: d121}]
    """)
    assert run(project, path) == {"b": "ran", "b-d121": "ran"}
    nb = nbformat.read(project / "runs" / "p" / "executed" / "b-d121.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert any("injected-parameters" in t and "hide-input" in t for t in tags)
    assert any("parameters" in t and "remove-cell" in t for t in tags)
    assert nb.cells[0].source.startswith("# Stand-in (d121)")
    assert nb.metadata["mocoxr"]["parameters"]["backbone"] == "d121"
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert 'backbone = "d121"' in injected.source and "run_dir = " in injected.source


def test_cli_reports_bad_profile_and_failures(project: Path, capsys, monkeypatch):
    monkeypatch.setattr(book, "project_root", lambda start=None: project)
    bad = write_profile(project, "notebooks: {a: {runs: [{sise: 2}]}}\n", "bad.yaml")
    assert book.main(["run", "--profile", str(bad)]) == 2
    assert "sise" in capsys.readouterr().err
    assert book.main(["run", "--profile", str(project / "nope.yaml")]) == 2
    path = write_profile(project, PROFILE % "true")
    assert book.main(["run", "--profile", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and str(project / "notebooks" / "b.py") in out
    assert "b was told to fail" in out and "failed/b.ipynb" in out
    assert book.main(["status", "--profile", str(path)]) == 1
    assert book.main(["check"]) == 1  # the stand-in .py files have no paired .ipynb
    assert "no paired a.ipynb" in capsys.readouterr().out


def test_deep_merge_does_not_alias():
    base = {"a": {"b": [1]}, "c": 1}
    out = book.deep_merge(base, {"a": {"d": 2}})
    out["a"]["b"].append(2)
    assert base == {"a": {"b": [1]}, "c": 1} and out == {"a": {"b": [1, 2], "d": 2}, "c": 1}


# ----------------------------------------------------------------------------- pairing


def test_every_notebook_pair_is_in_sync():
    """notebooks/*.py are the source; their .ipynb must hold the same cells (jupytext --sync)."""
    assert list((ROOT / "notebooks").glob("*.py")), "no notebooks found"
    assert book.pairing_problems(ROOT / "notebooks") == []


def test_pairing_check_catches_an_out_of_sync_pair(tmp_path: Path):
    import jupytext

    for src in (ROOT / "notebooks").glob("01_data.*"):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    assert book.pairing_problems(tmp_path) == []
    nb = jupytext.read(tmp_path / "01_data.py")
    nb.cells[-1].source += "\nprint('edited only in the .py')"
    jupytext.write(nb, tmp_path / "01_data.py", fmt="py:percent")
    problems = book.pairing_problems(tmp_path)
    assert len(problems) == 1 and "01_data.py" in problems[0] and "jupytext --sync" in problems[0]
    (tmp_path / "01_data.ipynb").unlink()
    assert "no paired 01_data.ipynb" in book.pairing_problems(tmp_path)[0]


def test_paper_results_file_names_its_source():
    from mocoxr import plots

    head = plots.PAPER_RESULTS.read_text().splitlines()[0]
    assert head.startswith("#") and "MoCo-CXR" in head


def test_jupyterlab_opens_the_py_notebooks_as_notebooks():
    """`make setup` installs this override: a double click on notebooks/*.py in JupyterLab opens
    the Jupytext notebook view, not the text editor."""
    settings = json.loads((ROOT / "notebooks" / "jupyterlab-overrides.json").read_text())
    viewers = settings["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["python"] == "Jupytext Notebook"
    makefile = (ROOT / "Makefile").read_text()
    assert "notebooks/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json" in makefile
