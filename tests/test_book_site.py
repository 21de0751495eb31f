"""Tests for mocoxr.book.site: what the site shows of an executed notebook (relative paths,
parameters within 90 columns, no widget state), stale pages refused or marked, the time page,
and the notebooks' code width."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from book_project import run, run_folder_project, write_profile

from mocoxr.book import runner, site
from mocoxr.book.ipynb import read_notebook

ROOT = Path(__file__).resolve().parents[1]


def executed_notebook(path: Path, run_dir: Path, data_dir: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = {"run_dir": str(run_dir), "data_dir": data_dir,
              "phantom": {"n_patients": 400, "n_valid_patients": 100, "image_size": 128,
                          "workers": 0, "population": {"prevalence": {"effusion": 0.46}}}}
    inj = nbformat.v4.new_code_cell("# Parameters\n" + "\n".join(
        f"{k} = {v!r}" for k, v in params.items()))
    inj.metadata["tags"] = ["injected-parameters", "hide-input"]
    inj.metadata["papermill"] = {"duration": 0.01}
    work = nbformat.v4.new_code_cell("print(run_dir)")
    work.metadata["papermill"] = {"duration": 2.5}
    work.outputs = [
        nbformat.v4.new_output("stream", name="stdout",
                               text=f"-> {run_dir}/checkpoints/backbone.pt in {run_dir}\n"
                                    f"data {data_dir}/train.csv, code {ROOT}/mocoxr/train.py\n"),
        nbformat.v4.new_output("display_data", data={
            site.WIDGET_MIME: {"model_id": "abc"}, "text/plain": "  0%|   | 0/3"}),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="}),
        nbformat.v4.new_output("display_data", data={  # an explorer: widget + static figure
            site.WIDGET_MIME: {"model_id": "def"}, "image/png": "iVBORw0KGgoA",
            "text/plain": "Explorer"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# A page"), inj, work]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["papermill"] = {"duration": 3.25, "start_time": "2026-11-29T10:00:00.5"}
    nb.metadata["mocoxr"] = {"parameters": params}
    nbformat.write(nb, path)
    return path


def test_staged_notebook_shows_relative_paths_and_narrow_parameters(tmp_path: Path):
    run_dir = ROOT / "runs" / "quick"
    src = executed_notebook(tmp_path / "02_x.ipynb", run_dir, "/data/chexpert")
    os.utime(src, (1_000_000, 1_000_000))
    dest = tmp_path / "out.ipynb"
    pairs = site.path_replacements(run_dir, ROOT, {"data_dir": "/data/chexpert"})
    site.stage_notebook(src, dest, pairs)
    text = dest.read_text()
    for absolute in (str(run_dir), str(ROOT), "/data/chexpert"):
        assert absolute not in text
    nb = json.loads(text)
    inj, work = nb["cells"][1], nb["cells"][2]
    assert "run_dir = 'runs/quick'" in inj["source"] and "data_dir = '<data_dir>'" in inj["source"]
    assert max(len(line) for line in inj["source"].splitlines()) <= site.CODE_WIDTH
    assert "'population': {'prevalence': {'effusion': 0.46}}" in inj["source"]
    out = "".join(work["outputs"][0]["text"])
    assert out.startswith("-> checkpoints/backbone.pt in runs/quick\n")
    assert "data <data_dir>/train.csv, code mocoxr/train.py" in out
    assert len(work["outputs"]) == 3 and "image/png" in work["outputs"][1]["data"]  # no widget
    assert set(work["outputs"][2]["data"]) == {"image/png", "text/plain"}  # figure kept
    assert "widgets" not in nb["metadata"]
    assert os.stat(dest).st_mtime == 1_000_000  # Sphinx sees an unchanged notebook as such


def test_run_folder_outside_the_project_is_named_generically(tmp_path: Path):
    pairs = site.path_replacements(tmp_path / "run", ROOT)
    assert site.scrub(f"{tmp_path}/run/cache/x.npy and {tmp_path}/run", pairs) == \
        "cache/x.npy and <run_dir>"
    assert site.scrub(f"{Path.home()}/.cache/torch", pairs) == "~/.cache/torch"


def test_time_page_tabulates_every_notebook(tmp_path: Path):
    a = executed_notebook(tmp_path / "01_a.ipynb", tmp_path, "/d")
    b = executed_notebook(tmp_path / "02_b.ipynb", tmp_path, "/d")
    page = site.write_time_page(tmp_path, [a, b], "tiny")
    text = page.read_text()
    assert text.startswith("# Where the time went")
    assert "[01_a](executed/01_a.ipynb) | 3.2 | 50% | `print(run_dir)` | 2.5 |" in text
    assert "started 2026-11-29 10:00:00 UTC" in text
    assert "**6.5**" in text and "`tiny`" in text


def test_notebook_code_fits_the_page():
    """Every code line the site shows (all cells but the parameters cell, which the site
    replaces by the injected one) fits within CODE_WIDTH columns."""
    problems = {}
    for py in sorted((ROOT / "notebooks").glob("*.py")):
        nb = json.loads(nbformat.writes(read_notebook(py)))
        long = site.long_code_lines(nb, skip_tags=("parameters",))
        if long:
            problems[py.name] = long
    assert not problems, problems


def test_long_lines_are_found():
    nb = {"cells": [{"cell_type": "code", "source": "x = 1\n" + "y" * 91, "metadata": {}},
                    {"cell_type": "code", "source": "z" * 95, "metadata": {"tags": ["remove-cell"]}}]}
    assert site.long_code_lines(nb) == ["cell 0: " + "y" * 91]


def test_build_refuses_stale_pages_or_marks_them(tmp_path: Path):
    proj = run_folder_project(tmp_path)
    rd = tmp_path / "run"
    profile = write_profile(proj, "parameters: {size: 2}\nnotebooks: {prep: {}}\n")
    assert run(proj, profile, rd) == {"prep": "ran"}
    profile = write_profile(proj, "parameters: {size: 3}\nnotebooks: {prep: {}}\n")
    with pytest.raises(RuntimeError, match=r"stale \(prep\)"):
        site.build_site(profile, rd, output=tmp_path / "out", root=proj, echo=lambda *a: None)
    prof, paths = runner.open_run(profile, proj, rd)
    assert runner.stale_runs(prof, paths) == ["prep"]
    staged = site.stage_site(prof, paths, proj, echo=lambda *a: None, stale=["prep"])
    text = (staged / "book" / "executed" / "prep.ipynb").read_text()
    assert "This page is **stale**" in text
    assert (staged / "_toc.yml").is_file() and (staged / "book" / "intro.md").is_file()
    assert (staged / "book" / "time.md").is_file()

