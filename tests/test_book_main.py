"""Tests for ``python -m mocoxr.book`` (mocoxr/book/__main__.py): exit codes, errors on stderr,
and the documented commands (README, usage page)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from book_project import PROFILE, abcd_project, run_folder_project, write_profile

from mocoxr import sources
from mocoxr.book import __main__ as cli
from mocoxr.book import paths, runner

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reports_bad_profile_and_failures(tmp_path: Path, capsys, monkeypatch):
    project = abcd_project(tmp_path)
    monkeypatch.setattr(runner, "code_hash", lambda: "code-v1")
    monkeypatch.setattr(paths, "project_root", lambda start=None: project)
    bad = write_profile(project, "notebooks: {a: {runs: [{sise: 2}]}}\n", "bad.yaml")
    assert cli.main(["run", "--profile", str(bad)]) == 2
    assert "sise" in capsys.readouterr().err
    assert cli.main(["run", "--profile", str(project / "nope.yaml")]) == 2
    assert cli.main(["run", "--profile", str(bad), "--data-dir", str(tmp_path / "none")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    path = write_profile(project, PROFILE % "true")
    assert cli.main(["run", "--profile", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and str(project / "notebooks" / "b.py") in out
    assert "b was told to fail" in out and "failed/b.ipynb" in out
    assert cli.main(["status", "--profile", str(path)]) == 1
    assert cli.main(["check"]) == 1  # the stand-in .py files have no paired .ipynb
    assert "no paired a.ipynb" in capsys.readouterr().out


def test_build_and_status_of_paper_read_the_recorded_data_folders(tmp_path: Path, capsys):
    """`python -m mocoxr.book build --profile paper` (README, usage page) after a run that was
    given --data-dir and --shenzhen-dir: no flags needed, no `requires` error."""
    rd = tmp_path / "runs" / "paper"
    cx, sz = tmp_path / "chexpert", tmp_path / "ChinaSet"
    cx.mkdir()
    sz.mkdir()
    sources.check_and_record(paths.run_paths(rd).root, {"data_dir": str(cx), "shenzhen_dir": str(sz)})
    assert cli.main(["status", "--profile", "paper", "--run-dir", str(rd)]) == 1
    out = capsys.readouterr()
    assert "02_pretrain-densenet121" in out.out and "requires" not in out.err
    assert cli.main(["build", "--profile", "paper", "--run-dir", str(rd)]) == 2
    err = capsys.readouterr().err
    assert "requires" not in err and "no executed notebooks" in err
    assert cli.main(["build", "--profile", "paper", "--run-dir", str(tmp_path / "fresh")]) == 2
    assert "--data-dir" in capsys.readouterr().err  # nothing recorded: the flag is named


@pytest.mark.slow
def test_documented_real_data_commands_at_toy_size(tmp_path: Path):
    """README / usage page: `run --profile paper --data-dir D --shenzhen-dir S`, then `status`
    and `build --profile paper` without the flags, through `python -m mocoxr.book`, on a toy
    copy of the paper profile (its `requires`, the data notebook, 32 px) and toy data folders."""
    import yaml

    from mocoxr import phantom

    cx, sz = tmp_path / "chexpert", tmp_path / "ChinaSet_AllFiles"
    phantom.generate_chexpert_tree(cx, n_patients=30, n_valid_patients=20, image_size=48)
    phantom.generate_shenzhen_tree(sz, n_images=30, image_size=48)
    paper = yaml.safe_load((ROOT / "mocoxr" / "profiles" / "paper.yaml").read_text())
    toy = {"description": "paper, toy size", "requires": paper["requires"],
           "parameters": {"data_dir": None, "shenzhen_dir": None, "image_size": 32,
                          "chexpert": {"fractions": [0.5, 1.0], "draws": [1, 1], "val_fraction": 0.2},
                          "shenzhen": {"fractions": [0.5, 1.0], "draws": [1, 1]}},
           "notebooks": {"01_data": {}}}
    profile = tmp_path / "paper.yaml"
    profile.write_text(yaml.safe_dump(toy))
    rd = tmp_path / "runs" / "paper"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def run_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mocoxr.book", *args, "--profile", str(profile),
                               "--run-dir", str(rd)], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=600)

    done = run_cli("run", "--data-dir", str(cx), "--shenzhen-dir", str(sz))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = run_cli("status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    built = run_cli("build", "--output", str(tmp_path / "site"))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert (tmp_path / "site" / "_build" / "html" / "index.html").is_file()
    again = run_cli("run")  # `run` itself needs the flags the profile requires
    assert again.returncode == 2 and "--data-dir" in again.stderr


def test_status_names_stale_and_unrun_steps_and_rows_of_another_configuration(tmp_path: Path, capsys,
                                                                                monkeypatch):
    """`status` says "not run yet" / "stale" and counts rows no run of the profile wrote with its
    current key; the next `run` moves them to archived/ with a line saying so."""
    project = abcd_project(tmp_path)
    monkeypatch.setattr(runner, "code_hash", lambda: "code-v1")
    monkeypatch.setattr(paths, "project_root", lambda start=None: project)
    path = write_profile(project, PROFILE % "false")
    rd = project / "runs" / "p"
    assert cli.main(["status", "--profile", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.count("not run yet") == 4 and not rd.exists()
    assert cli.main(["run", "--profile", str(path)]) == 0
    capsys.readouterr()
    row = {"experiment": "linear", "backbone": "r18", "init": "moco", "label_fraction": 0.1, "draw": -1,
           "auc": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n_train": 1, "n_test": 1,
           "run": "gone", "run_key": "old"}
    pd.DataFrame([row]).to_csv(rd / "results.csv", index=False)
    write_profile(project, (PROFILE % "false").replace("size: 3", "size: 4"))
    assert cli.main(["status", "--profile", str(path)]) == 1
    out = capsys.readouterr().out
    assert "stale" in out and "not run yet" not in out
    assert "results.csv: 1 row(s) of another configuration (written by gone" in out
    assert cli.main(["run", "--profile", str(path)]) == 0
    assert "results.csv: 1 row(s) of another configuration" in capsys.readouterr().out
    assert len(pd.read_csv(rd / "results.csv")) == 0
    assert pd.read_csv(rd / "archived" / "results.csv")["auc"].tolist() == [0.7]
    assert cli.main(["status", "--profile", str(path)]) == 0


def test_status_of_a_rejected_profile_creates_no_folder(tmp_path: Path, capsys, monkeypatch):
    project = abcd_project(tmp_path)
    monkeypatch.setattr(paths, "project_root", lambda start=None: project)
    bad = write_profile(project, "notebooks: {a: {runs: [{sise: 2}]}}\n", "bad.yaml")
    assert cli.main(["status", "--profile", str(bad), "--run-dir", str(tmp_path / "new")]) == 2
    assert "sise" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_stale_hint_names_the_profile_as_given(tmp_path: Path, capsys, monkeypatch):
    project = abcd_project(tmp_path)
    monkeypatch.setattr(runner, "code_hash", lambda: "code-v1")
    monkeypatch.setattr(paths, "project_root", lambda start=None: project)
    path = write_profile(project, PROFILE % "false")
    assert cli.main(["run", "--profile", str(path)]) == 0
    monkeypatch.setattr(runner, "code_hash", lambda: "code-v2")
    assert cli.main(["build", "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"--profile {path}`" in err and "--allow-stale" in err


def test_build_takes_the_run_lock(tmp_path: Path, capsys, monkeypatch):
    from mocoxr import store

    project = abcd_project(tmp_path)
    monkeypatch.setattr(runner, "code_hash", lambda: "code-v1")
    monkeypatch.setattr(paths, "project_root", lambda start=None: project)
    path = write_profile(project, PROFILE % "false")
    assert cli.main(["run", "--profile", str(path)]) == 0
    with store.run_lock(project / "runs" / "p"):
        assert cli.main(["build", "--profile", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "is in use by another" in err and f"pid {os.getpid()}" in err
    assert not (project / "runs" / "p" / "site").exists()


def test_broken_link_in_a_data_folder_names_the_flag(tmp_path: Path, capsys, monkeypatch):
    project = run_folder_project(tmp_path)
    monkeypatch.setattr(paths, "project_root", lambda start=None: project)
    path = write_profile(project, "notebooks: {prep: {}}\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("Path\n")  # a CheXpert-format folder (format detection passes)
    (data / "broken_link.png").symlink_to(tmp_path / "nowhere.png")
    for command in ("run", "status"):
        assert cli.main([command, "--profile", str(path), "--data-dir", str(data)]) == 2
        err = capsys.readouterr().err
        assert "--data-dir" in err and "broken_link.png" in err and "broken link" in err, err


def test_mocoxr_book_help_names_itself(capsys):
    from mocoxr import cli as mocoxr_cli

    with pytest.raises(SystemExit):
        mocoxr_cli.main(["book", "--help"])
    assert capsys.readouterr().out.startswith("usage: mocoxr book ")
