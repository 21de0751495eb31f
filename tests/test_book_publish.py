"""Tests for mocoxr.book.publish (``python -m mocoxr.book publish``, ``make publish``): the built
site goes to the gh-pages branch of a local bare repository; a stale site is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from book_project import run, run_folder_project, write_profile

from mocoxr.book import __main__ as cli
from mocoxr.book import paths, publish

PROFILE = "parameters: {size: %d}\nnotebooks: {prep: {}}\n"


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """A stand-in project that ran its one notebook (once for the module: a kernel start)."""
    proj = run_folder_project(tmp_path_factory.mktemp("ran"))
    assert run(proj, write_profile(proj, PROFILE % 2), proj / "runs" / "p") == {"prep": "ran"}
    return proj


@pytest.fixture
def project(ran: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path, Path]:
    """A copy of ``ran`` with a built-looking site in _build/html, and a git checkout of it
    whose ``origin`` is a local bare repository."""
    for var in ("GIT_COMMITTER_NAME", "GIT_AUTHOR_NAME"):
        monkeypatch.setenv(var, "mocoxr tests")
    for var in ("GIT_COMMITTER_EMAIL", "GIT_AUTHOR_EMAIL"):
        monkeypatch.setenv(var, "tests@example.org")
    proj = tmp_path / "proj"
    shutil.copytree(ran, proj)  # keeps the files' times
    profile, rd = proj / "p.yaml", proj / "runs" / "p"
    (rd / "results.csv").write_text("auc\n0.8\n")
    html = publish.default_site(proj)
    (html / "book" / "executed").mkdir(parents=True)
    (html / "index.html").write_text("<html>the book</html>")
    (html / "book" / "executed" / "prep.html").write_text("<html>prep</html>")
    (html / "results.csv").write_text("auc\n0.8\n")
    bare = tmp_path / "remote.git"
    git("init", "-q", "--bare", str(bare))
    git("init", "-q", cwd=proj)
    git("remote", "add", "origin", str(bare), cwd=proj)
    monkeypatch.setattr(paths, "project_root", lambda start=None: proj)
    return proj, profile, bare


def test_publish_pushes_the_site_to_gh_pages(project, capsys):
    proj, profile, bare = project
    assert cli.main(["publish", "--profile", str(profile)]) == 0
    out = capsys.readouterr().out
    assert f"to branch gh-pages of remote origin ({bare})" in out
    assert git("--git-dir", str(bare), "show", "gh-pages:index.html") == "<html>the book</html>"
    files = set(git("--git-dir", str(bare), "ls-tree", "-r", "--name-only", "gh-pages").split())
    assert files == {".nojekyll", "index.html", "book/executed/prep.html", "results.csv"}
    assert git("--git-dir", str(bare), "branch", "--list").split() == ["gh-pages"]
    # another branch and remote name, and a second publication on top of the first
    git("remote", "add", "pages", str(bare), cwd=proj)
    (publish.default_site(proj) / "index.html").write_text("<html>again</html>")
    publish.publish(profile, remote="pages", branch="site", echo=lambda *a: None)
    assert git("--git-dir", str(bare), "show", "site:index.html") == "<html>again</html>"


def test_publish_refuses_a_stale_site(project, capsys):
    proj, profile, bare = project
    html = publish.default_site(proj)
    page, nb = html / "book" / "executed" / "prep.html", proj / "runs" / "p" / "executed" / "prep.ipynb"
    os.utime(page, (nb.stat().st_mtime - 60,) * 2)  # built before the notebook last ran
    assert cli.main(["publish", "--profile", str(profile)]) == 2
    err = capsys.readouterr().err
    assert "not publishing" in err and "book/executed/prep.html is older than its executed notebook" in err
    os.utime(page, None)
    (html / "results.csv").write_text("auc\n0.7\n")
    with pytest.raises(RuntimeError, match="results.csv beside the site differs"):
        publish.publish(profile)
    (html / "results.csv").write_text("auc\n0.8\n")
    changed = write_profile(proj, PROFILE % 3, "changed.yaml")  # new parameters: stale
    with pytest.raises(RuntimeError, match="prep is stale"):
        publish.publish(changed, run_dir=proj / "runs" / "p")
    with pytest.raises(RuntimeError, match="no built site"):
        publish.publish(profile, site=proj / "elsewhere")
    with pytest.raises(RuntimeError, match="no git remote 'upstream'"):
        publish.publish(profile, remote="upstream")
    assert git("--git-dir", str(bare), "branch", "--list") == ""  # nothing was pushed


def test_the_workflow_runs_the_readme_commands_and_deploys_the_site():
    import yaml

    root = Path(__file__).resolve().parents[1]
    flow = yaml.safe_load((root / ".github" / "workflows" / "book.yml").read_text())
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as True
    assert "push" in triggers
    steps = flow["jobs"]["build"]["steps"]
    runs = [s["run"].strip() for s in steps if "run" in s]
    readme = (root / "README.md").read_text()
    two = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in two.strip().splitlines()]
    assert commands == ["make book", "make test"] and runs == commands  # in the README's order
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    deploy = flow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["permissions"]["pages"] == "write"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])
    publishing = readme.split("## Publishing", 1)[1].split("\n## ", 1)[0]
    for shown in ("make publish", "python -m mocoxr.book publish", ".github/workflows/book.yml",
                  "gh-pages", "static host", "make book", "make test"):
        assert shown in publishing, shown
    assert "\npublish: " in (root / "Makefile").read_text()
