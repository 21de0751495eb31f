"""Packaging: pyproject.toml declares every third-party module the package imports, agrees with
the versions requirements.txt pins, and its `mocoxr` console command is `python -m mocoxr.book`
(checked in-process)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mocoxr import book, cli

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


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
    monkeypatch.setattr(book, "main", lambda argv: seen.append(list(argv)) or 7)
    assert entry(["book", "run", "--profile", "tiny", "--force"]) == 7
    assert seen == [["run", "--profile", "tiny", "--force"]]
    monkeypatch.setattr(sys, "argv", ["mocoxr", "book", "status"])
    assert entry() == 7 and seen[-1] == ["status"]


def test_console_command_runs_a_real_subcommand_and_reports_bad_ones(capsys):
    assert cli.main(["book", "check"]) == 0
    assert "all notebook pairs in sync" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0 and "mocoxr book run" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["book", "--help"])
