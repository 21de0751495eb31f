"""Notebook files: reading them (``.py`` percent scripts or ``.ipynb``), the defaults of the
``parameters`` cell, the errors of an executed notebook, the site's tags, and the check that
every ``notebooks/*.py`` has an in-sync ``.ipynb``."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any


def read_notebook(path: Path):
    """Read a notebook (``.py`` percent script or ``.ipynb``) with jupytext."""
    import jupytext

    return jupytext.read(str(path))


def _literal_assignment(path: Path, stmt: ast.stmt) -> tuple[str, Any]:
    """``(name, value)`` of one ``name = literal`` line of a parameters cell."""
    target = value = None
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, value = stmt.target, stmt.value
    if not isinstance(target, ast.Name):
        raise ValueError(f"{path}: line {stmt.lineno} of the parameters cell is not `name = literal`")
    try:
        return target.id, ast.literal_eval(value)
    except ValueError:
        raise ValueError(
            f"{path}: parameter {target.id!r} must default to a literal "
            f"(number, string, None, list, dict), got `{ast.unparse(value)}`"
        ) from None


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Defaults declared in the notebook's single cell tagged ``parameters``.

    The cell may only hold assignments of Python literals (and comments), so that the defaults
    can be read without running anything.
    """
    nb = read_notebook(path)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise ValueError(f"{path}: the parameters cell is not valid Python: {exc}") from None
    return dict(_literal_assignment(path, stmt) for stmt in tree.body)


def find_notebook(notebooks_dir: Path, name: str) -> Path:
    """``notebooks/<name>.py`` (the jupytext source), else ``<name>.ipynb``."""
    for ext in (".py", ".ipynb"):
        p = notebooks_dir / f"{name}{ext}"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no notebook {name}.py or {name}.ipynb in {notebooks_dir}")


def notebook_errors(path: Path) -> list[str]:
    """``ename: evalue`` of every error output in an executed notebook."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for c in nb.cells if c.cell_type == "code"
        for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]


def tag_for_site(nb, suffix: str | None = None) -> None:
    """Prepare an executed notebook for the site: the injected-parameters cell collapsed
    (``hide-input``), the overridden defaults cell removed, the title marks a variant run."""
    tags_of = lambda c: c.setdefault("metadata", {}).setdefault("tags", [])  # noqa: E731
    injected = any("injected-parameters" in tags_of(c) for c in nb.cells)
    for c in nb.cells:
        tags = tags_of(c)
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
        if injected and "parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    if suffix:
        for c in nb.cells:
            if c.cell_type == "markdown" and c.source.lstrip().startswith("# "):
                head, _, rest = c.source.lstrip().partition("\n")
                c.source = f"{head} ({suffix})\n{rest}"
                break


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [
        (c.cell_type, c.source.strip(), tuple(sorted(c.get("metadata", {}).get("tags", []))))
        for c in nb.cells
    ]


def pairing_problems(notebooks_dir: Path) -> list[str]:
    """Each ``notebooks/*.py`` must have a paired ``.ipynb`` with the same cells (type, source,
    tags). Returns one message per problem; empty when every pair is in sync."""
    problems = []
    for py in sorted(Path(notebooks_dir).glob("*.py")):
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.is_file():
            problems.append(f"{py} has no paired {ipynb.name}: run `jupytext --sync {py}`")
            continue
        a, b = _cells(read_notebook(py)), _cells(read_notebook(ipynb))
        if a != b:
            diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            problems.append(
                f"{py} and {ipynb.name} differ (first at cell {diff}; {len(a)} vs {len(b)} cells): "
                f"edit the .py and run `jupytext --sync {py}`"
            )
    for ipynb in sorted(Path(notebooks_dir).glob("*.ipynb")):
        if not ipynb.with_suffix(".py").is_file():
            problems.append(f"{ipynb} has no .py source: run `jupytext --set-formats ipynb,py:percent {ipynb}`")
    return problems
