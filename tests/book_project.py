"""Stand-in projects for the book tests: a project root with the book's files, trivial
py:percent notebooks (a few seconds of kernel start-up each) and profiles."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mocoxr.book import runner


def write_nb(path: Path, params: str, body: str, title: str = "Stand-in") -> None:
    """A py:percent notebook with a parameters cell."""
    path.write_text(
        f"# %% [markdown]\n# # {title}\n\n"
        f"# %% tags=[\"parameters\"]\n{textwrap.dedent(params).strip()}\n\n"
        f"# %%\n{textwrap.dedent(body).strip()}\n"
    )


def empty_project(tmp_path: Path) -> Path:
    """A project root with the book's files and an empty notebooks/ folder."""
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "book").mkdir()
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (root / "_config.yml").write_text("title: t\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    return root


def project_with(tmp_path: Path, notebooks: dict[str, tuple[str, str]]) -> Path:
    """:func:`empty_project` with stand-in notebooks ``{name: (parameters cell, body)}``."""
    root = empty_project(tmp_path)
    for name, (params, body) in notebooks.items():
        write_nb(root / "notebooks" / f"{name}.py", params, body)
    return root


def abcd_project(tmp_path: Path) -> Path:
    """A tiny project: a writes a file, b may fail, c is independent of b, d needs b."""
    return project_with(tmp_path, {
        "a": ('run_dir = "."\nsize = 1\nopts = {"x": 1, "y": 2}',
              'from pathlib import Path\n(Path(run_dir) / "a.txt").write_text(f"{size} {opts}")'),
        "b": ('run_dir = "."\nfail = False\nbackbone = "r18"',
              'from pathlib import Path\nassert not fail, "b was told to fail"\n'
              '(Path(run_dir) / f"b-{backbone}.txt").write_text("ok")'),
        "c": ('run_dir = "."\nsize = 1', 'from pathlib import Path\n(Path(run_dir) / "c.txt").write_text("c")'),
        "d": ('run_dir = "."\nbackbone = "r18"',
              'from pathlib import Path\n(Path(run_dir) / f"d-{backbone}.txt").write_text("d")'),
    })


def run_folder_project(tmp_path: Path) -> Path:
    """prep reads the data flags, slow sleeps, bad raises a two-line error."""
    return project_with(tmp_path, {
        "prep": ('run_dir = "."\ndata_dir = None\nshenzhen_dir = None\nsize = 1',
                 'from pathlib import Path\n(Path(run_dir) / "prep.txt").write_text(f"{shenzhen_dir} {size}")'),
        "slow": ('run_dir = "."\nseconds = 0',
                 'import time\nfrom pathlib import Path\ntime.sleep(seconds)\n'
                 'with open(Path(run_dir) / "slow.txt", "a") as fh:\n    fh.write("ran\\n")'),
        "bad": ('run_dir = "."', 'raise ValueError("first line names the cause\\nsecond line: details")'),
    })


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


def run(root: Path, profile: Path, run_dir: Path | None = None, **kw) -> dict[str, str]:
    """Run a profile quietly (default folder: ``<root>/runs/p``); ``{run id: status}``."""
    outcomes = runner.run_profile(profile, run_dir or root / "runs" / "p", root=root, progress=False,
                                  echo=lambda *a: None, **kw)
    return {o.run_id: o.status for o in outcomes}
