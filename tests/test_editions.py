"""Student edition and RESULTS.md: generated from the executed notebooks, never by hand (the site: test_course_site.py)."""

import ast
from pathlib import Path

import nbformat
import pytest
from conftest import load_tool

from deeplsp_helpers import checks

ROOT = Path(__file__).resolve().parents[1]
editions = load_tool("editions")

NOTEBOOKS = editions.chapter_notebooks(ROOT)


def _cells(nb, tag):
    return [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]


def _bodies(source):
    """Every statement inside every function or method except docstrings, as normalised source."""
    return {ast.unparse(stmt) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for stmt in node.body
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))}


def test_stub_source_keeps_signatures_docstrings_and_imports():
    source = '''import math


@staticmethod
def area(r,
         pi=math.pi):
    """Area of a disc."""
    return pi * r * r


class Scaler:
    factor = 2

    def __call__(self, x):
        y = x * self.factor
        return y
'''
    stub = editions.stub_source(source)
    namespace = {}
    exec(compile(stub, "stub", "exec"), namespace)
    assert "import math" in stub and '"""Area of a disc."""' in stub and "factor = 2" in stub
    assert "pi * r * r" not in stub and "x * self.factor" not in stub
    for call in (lambda: namespace["area"](1.0), lambda: namespace["Scaler"]()(3)):
        with pytest.raises(NotImplementedError, match="Exercise: write"):
            call()


def test_stub_source_blanks_answers_read_off_a_measurement():
    stub = editions.stub_source("def f(x):\n    return 2 * x\n\n\nanswer_best = max([3, 1], key=f)\n")
    namespace = {}
    exec(compile(stub, "stub", "exec"), namespace)
    assert namespace["answer_best"] is Ellipsis and "max(" not in stub


@pytest.mark.parametrize("source", ["x = 1\n", "answer_a, b = 1, 2\n", "def f(): return 1\n",
                                    "for i in range(3):\n    pass\n"])
def test_stub_source_refuses_what_it_cannot_stub(source):
    with pytest.raises(ValueError):
        editions.stub_source(source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_has_exercises_with_checks_and_a_summary(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    solutions = _cells(nb, "solution")
    assert 3 <= len(solutions) <= 5
    for cell in solutions:
        following = code[code.index(cell) + 1]
        assert following.source.startswith("checks.check_"), following.source[:80]
    assert editions.headline(nb)
    assert "find_spec(\"deeplsp_helpers\")" in code[0].source  # the open-anywhere first cell


def test_student_edition_is_valid_has_no_solutions_and_fails_helpfully(tmp_path, capsys):
    written = editions.write_student(ROOT, out=tmp_path)
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for original, student_path in zip(NOTEBOOKS, written):
        nb, student = nbformat.read(str(original), 4), nbformat.read(str(student_path), 4)
        nbformat.validate(student)
        code = [c for c in student.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code)
        namespace = {}
        for cell in code:  # the notebook's imports only: enough to define the stubs and call the checks
            for node in ast.parse(cell.source).body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    exec(compile(ast.Module([node], []), "imports", "exec"), namespace)
        for solution, stub in zip(_cells(nb, "solution"), _cells(student, "solution")):
            assert not _bodies(solution.source) & _bodies(stub.source), stub.source
            assert all(b.startswith("raise NotImplementedError(") for b in _bodies(stub.source)), stub.source
            exec(compile(stub.source, student_path.name, "exec"), namespace)
            check_source = code[code.index(stub) + 1].source
            check_call = ast.get_source_segment(check_source, ast.parse(check_source).body[0])  # its first statement
            with pytest.raises(checks.CheckFailed, match="not written yet") as info:
                exec(check_call, namespace)
            assert len(info.value._render_traceback_()) == 1, check_call
    capsys.readouterr()


def test_results_and_readme_table_come_from_the_notebooks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{editions.RESULTS_BEGIN}\nold table\n{editions.RESULTS_END}\nrest\n")
    out = editions.write_results(ROOT, out=tmp_path / "RESULTS.md", readme=readme)
    text, table = out.read_text(), readme.read_text()
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), 4)
        assert f"## {path.stem}" in text and editions.summary_output(nb) in text
        assert all(line in text for line in editions.summary_text(nb).splitlines())
        assert editions.headline(nb) in table
        assert editions.wall_time(nb) > 0
        slowest = editions.cell_times(nb)[0]
        assert f"cell {slowest[1]}: {slowest[0]:.0f} s" in text  # the slowest cell is named in RESULTS.md
    assert "old table" not in table and table.startswith("intro\n") and table.endswith("rest\n")
    assert "float32 lanes" in editions.executed_on(ROOT)  # the CPU kind is recorded with the times
    assert f"Executed on: {editions.executed_on(ROOT)}." in text and editions.executed_on(ROOT) in table


def test_cli_rejects_an_unknown_edition():
    with pytest.raises(SystemExit) as info:
        editions.main(["pdf"])
    assert info.value.code == 2


def test_html_tables_become_aligned_text_rows():
    markup = ("<style>td {color: red}</style><table><thead><tr><th></th><th>val %</th></tr></thead>"
              "<tbody><tr><th>dense</th><td>93.40</td></tr><tr><th>DeepLSP 3x</th><td>92.98</td></tr></tbody></table>")
    assert editions.html_table_text(markup).splitlines() == ["            val %", "dense       93.40",
                                                             "DeepLSP 3x  92.98"]
    assert editions.html_table_text("<p>no table</p>") == ""
