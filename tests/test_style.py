"""The project's one string-formatting style (issue 7): f-strings only, no str.format and no % formatting."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["*.py", "kernels/*.py", "plumbing/*.py", "scripts/*.py", "tests/**/*.py"]


def project_files():
    """Every Python file of the project (the top level, kernels/, plumbing/, scripts/, tests/; not .venv)."""
    paths = {path for pattern in SOURCES for path in glob.glob(os.path.join(ROOT, pattern), recursive=True)}
    return sorted(os.path.relpath(path, ROOT) for path in paths)


def is_str(node):
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def offenders(is_offending):
    """'file:line' of every node of every project file for which is_offending(node) is true."""
    found = []
    for path in project_files():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        lines = sorted({node.lineno for node in ast.walk(tree) if is_offending(node)})
        found += [f"{path}:{line}" for line in lines]
    return found


def test_the_project_files_are_found():
    files = project_files()
    assert {"binary_connect.py", "kernels/cpu.py", "plumbing/cli.py", "tests/test_style.py"} <= set(files)
    assert not any(path.startswith(".venv") for path in files)


def test_no_str_format_calls():
    """Issue 7: no str.format method called on a string literal; write an f-string."""
    found = offenders(lambda node: isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr == "format" and is_str(node.func.value))
    assert not found, "str.format call(s), use an f-string: " + ", ".join(found)


def test_no_percent_formatting():
    """Issue 7: no "..." % values; write an f-string."""
    found = offenders(lambda node: isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and is_str(node.left))
    assert not found, "% formatting, use an f-string: " + ", ".join(found)
