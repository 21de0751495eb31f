"""Tests for ``python -m mocoxr.book`` (mocoxr/book/__main__.py): exit codes, errors on stderr,
and the documented commands (README, usage page)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from book_project import PROFILE, abcd_project, write_profile

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
