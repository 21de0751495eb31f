"""The package's shape: small modules and functions (one idea per module)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mocoxr"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80  # not counting the docstring


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_module_is_too_long():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_too_long():
    long = {}
    for p in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and (n := _body_lines(node)) > MAX_FUNCTION_LINES:
                long[f"{p.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (docstring excluded): {long}"


def test_the_counter_sees_a_long_function():
    src = "def f():\n    '''doc\n    more'''\n" + "    x = 1\n" * (MAX_FUNCTION_LINES + 1)
    (fn,) = ast.parse(src).body
    assert _body_lines(fn) == MAX_FUNCTION_LINES + 2  # the def line and the body, no docstring
