"""Publishing the built site: ``python -m mocoxr.book publish`` (``make publish``) pushes
``_build/html`` to the ``gh-pages`` branch of a git remote with ``ghp-import``, the Jupyter Book
1.x convention (GitHub Pages then serves that branch).

It refuses a site that is not what the run holds (:func:`site_problems`): a notebook that
``status`` lists as stale (the same check as ``build``), a notebook of the profile that never
ran, a page older than its executed notebook, or a ``results.csv`` / ``deltas.csv`` beside the
site that differs from the run's. Rebuilding with ``python -m mocoxr.book build`` fixes the
last two.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from mocoxr.book import paths
from mocoxr.book.paths import RunPaths
from mocoxr.book.profile import Profile
from mocoxr.book.runner import open_run, stale_runs

SITE_CSVS = ("results.csv", "deltas.csv")


def default_site(root: Path) -> Path:
    """Where ``build`` writes the site by default: ``<root>/_build/html``."""
    return Path(root) / "_build" / "html"


def site_problems(prof: Profile, rd: RunPaths, html: Path) -> list[str]:
    """Why the site in ``html`` is not the run's current result (empty when it is)."""
    html = Path(html)
    if not (html / "index.html").is_file():
        return [f"no built site at {html} (no index.html): run "
                f"`python -m mocoxr.book build --profile {prof.name}` first"]
    problems = [f"{run} is stale: its notebook, parameters, package code or an upstream step "
                "changed after it ran" for run in stale_runs(prof, rd)]
    for run in prof.runs:
        nb = rd.executed_nb(run.run_id)
        page = html / "book" / "executed" / f"{nb.stem}.html"
        if not nb.is_file():
            problems.append(f"{run.run_id} has not run (no {nb})")
        elif not page.is_file() or page.stat().st_mtime < nb.stat().st_mtime:
            problems.append(f"{page.relative_to(html)} is older than its executed notebook")
    for name in SITE_CSVS:
        ours, shown = rd.root / name, html / name
        if ours.is_file() and (not shown.is_file() or shown.read_bytes() != ours.read_bytes()):
            problems.append(f"{name} beside the site differs from the run's {ours}")
    return problems


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def remote_url(repo: Path, remote: str) -> str:
    """The URL of ``remote`` in the git checkout ``repo`` (a clear error when there is none)."""
    found = _git(repo, "remote", "get-url", remote)
    if found.returncode != 0:
        raise RuntimeError(f"{repo} has no git remote {remote!r}: add one with `git remote add "
                           f"{remote} URL`, or name another with --remote")
    return found.stdout.strip()


def publish(profile: str | Path, run_dir: Path | None = None, site: Path | None = None,
            remote: str = "origin", branch: str = "gh-pages", root: Path | None = None,
            repo: Path | None = None, overrides: dict[str, Any] | None = None,
            echo=print) -> str:
    """Push the built site of a profile's run to ``branch`` of ``remote`` (``ghp-import -n -p
    -f``: a ``.nojekyll`` file added, the branch's new commit force-pushed) from the git
    checkout ``repo`` (default: the project root). ``site`` defaults to ``<root>/_build/html``.
    Refuses, naming every problem, when :func:`site_problems` finds one. Returns the remote's
    URL."""
    root = Path(root) if root else paths.project_root()
    prof, rd = open_run(profile, root, run_dir, overrides)
    html = Path(site) if site else default_site(root)
    problems = site_problems(prof, rd, html)
    if problems:
        raise RuntimeError(f"not publishing {html}: it is not the current result of the "
                           f"{prof.name} run in {rd.root}:\n  " + "\n  ".join(problems))
    repo = Path(repo) if repo else root
    url = remote_url(repo, remote)
    cmd = [sys.executable, "-m", "ghp_import", "-n", "-p", "-f", "-r", remote, "-b", branch,
           "-m", f"Publish the book ({prof.name} profile)", str(html.resolve())]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ghp-import could not push {html} to {remote}/{branch} "
                           f"(exit {done.returncode}):\n{(done.stdout + done.stderr).strip()[-2000:]}")
    echo(f"published {html} to branch {branch} of remote {remote} ({url})")
    return url
