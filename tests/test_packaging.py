"""Packaging: pyproject.toml declares every third-party module the package imports and nothing
it does not use, agrees with the versions requirements.txt pins, builds a wheel holding every
subpackage and resource, and its `mocoxr` console command is `python -m mocoxr.book` (checked
in-process)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mocoxr import cli
from mocoxr.book import __main__ as book_cli

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Declared, used, but never imported by the package: what each one is for.
RUNTIME_ONLY = {
    "ipykernel": "the kernel papermill executes the notebooks in",
    "ghp-import": "python -m mocoxr.book publish runs it in a subprocess",
    "jupyter-book": "the site build runs its command line in a subprocess",
    "sphinx-mathjax-offline": "the Sphinx extension _config.yml names (MathJax without a CDN)",
}


def declared() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return {md.metadata(r.name)["Name"].lower().replace("_", "-"): r for r in reqs}


def imported_modules() -> set[str]:
    """Top-level names imported anywhere in mocoxr/ (module level or inside functions)."""
    names = set()
    for py in (ROOT / "mocoxr").rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"mocoxr", "__future__"}


def test_every_imported_distribution_is_declared():
    dists = md.packages_distributions()
    deps = declared()
    missing = {}
    for mod in sorted(imported_modules()):
        owners = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
        assert owners, f"{mod} is imported by mocoxr but installed by no distribution"
        if not owners & set(deps):
            missing[mod] = sorted(owners)
    # myst_nb / papermill / jupytext are imported; websocket comes from websocket-client
    assert not missing, f"imported by mocoxr, not in pyproject dependencies: {missing}"


def test_every_declared_distribution_is_used():
    dists = md.packages_distributions()
    used = {d.lower().replace("_", "-") for mod in imported_modules() for d in dists.get(mod, [])}
    unused = set(declared()) - used - set(RUNTIME_ONLY)
    assert not unused, f"declared in pyproject but neither imported nor in RUNTIME_ONLY: {unused}"
    assert set(RUNTIME_ONLY) <= set(declared())


def test_wheel_holds_every_module_and_resource(tmp_path):
    """`pip install .` ships the subpackages, the profiles and the paper's CSV (a bare
    `packages = ["mocoxr"]` would silently drop mocoxr/data/, mocoxr/phantom/, mocoxr/book/)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "mocoxr", src / "mocoxr", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("mocoxr-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mocoxr").rglob("*")
                if p.is_file() and p.suffix in (".py", ".csv", ".yaml") and "__pycache__" not in p.parts}
    assert expected and not expected - shipped, sorted(expected - shipped)


def test_requirements_pins_satisfy_the_declared_ranges():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    for name, req in declared().items():
        version = pins.get(name) or md.version(req.name)
        assert req.specifier.contains(version, prereleases=True), (name, version, str(req))
    assert "ipywidgets" in pins  # notebooks' progress bars render as widgets, no TqdmWarning


def test_console_command_is_the_book_cli(capsys, monkeypatch):
    assert PYPROJECT["project"]["scripts"]["mocoxr"] == "mocoxr.cli:main"
    module, func = PYPROJECT["project"]["scripts"]["mocoxr"].split(":")
    entry = getattr(importlib.import_module(module), func)
    assert entry is cli.main
    seen = []
    monkeypatch.setattr(book_cli, "main", lambda argv, prog: seen.append([prog, *argv]) or 7)
    assert entry(["book", "run", "--profile", "tiny", "--force"]) == 7
    assert seen == [["mocoxr book", "run", "--profile", "tiny", "--force"]]
    monkeypatch.setattr(sys, "argv", ["mocoxr", "book", "status"])
    assert entry() == 7 and seen[-1] == ["mocoxr book", "status"]


def test_console_command_runs_a_real_subcommand_and_reports_bad_ones(capsys):
    assert cli.main(["book", "check"]) == 0
    assert "all notebook pairs in sync" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0 and "mocoxr book run" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["book", "--help"])
