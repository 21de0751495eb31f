"""Tests for mocoxr.book.ipynb: the parameters cell, and the jupytext pairing of the real
notebooks (the .py is the source; its .ipynb must hold the same cells)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from book_project import empty_project, write_nb

from mocoxr.book.ipynb import notebook_parameters, pairing_problems

ROOT = Path(__file__).resolve().parents[1]


def test_parameters_cell_must_hold_literals(tmp_path: Path):
    nbs = empty_project(tmp_path) / "notebooks"
    write_nb(nbs / "e.py", "import os\nx = 1", "pass")
    with pytest.raises(ValueError, match="e.py.*line 1"):
        notebook_parameters(nbs / "e.py")
    write_nb(nbs / "f.py", "x = len('ab')", "pass")
    with pytest.raises(ValueError, match="'x' must default to a literal"):
        notebook_parameters(nbs / "f.py")
    write_nb(nbs / "g.py", "x = 1  # one\ny: dict = {'a': [1, None]}", "pass")
    assert notebook_parameters(nbs / "g.py") == {"x": 1, "y": {"a": [1, None]}}


def test_every_notebook_pair_is_in_sync():
    """notebooks/*.py are the source; their .ipynb must hold the same cells (jupytext --sync)."""
    assert list((ROOT / "notebooks").glob("*.py")), "no notebooks found"
    assert pairing_problems(ROOT / "notebooks") == []


def test_pairing_check_catches_an_out_of_sync_pair(tmp_path: Path):
    import jupytext

    for src in (ROOT / "notebooks").glob("01_data.*"):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    assert pairing_problems(tmp_path) == []
    nb = jupytext.read(tmp_path / "01_data.py")
    nb.cells[-1].source += "\nprint('edited only in the .py')"
    jupytext.write(nb, tmp_path / "01_data.py", fmt="py:percent")
    problems = pairing_problems(tmp_path)
    assert len(problems) == 1 and "01_data.py" in problems[0] and "jupytext --sync" in problems[0]
    (tmp_path / "01_data.ipynb").unlink()
    assert "no paired 01_data.ipynb" in pairing_problems(tmp_path)[0]


def test_jupyterlab_opens_the_py_notebooks_as_notebooks():
    """`make setup` installs this override: a double click on notebooks/*.py in JupyterLab opens
    the Jupytext notebook view, not the text editor."""
    settings = json.loads((ROOT / "notebooks" / "jupyterlab-overrides.json").read_text())
    viewers = settings["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers["python"] == "Jupytext Notebook"
    makefile = (ROOT / "Makefile").read_text()
    assert "notebooks/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json" in makefile
