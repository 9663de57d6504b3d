"""An nbgrader course folder made from the chapter notebooks, for teachers who grade a class with nbgrader.

Build tooling, not part of the installed package. From the repository root (``make nbgrader`` does this)::

    python tools/nbgrader_course.py                       # every chapter, into nbgrader/
    python tools/nbgrader_course.py --out DIR --chapters 04 06

writes ``DIR/nbgrader_config.py`` and, for each chapter, the nbgrader *source* notebook
``DIR/source/NN_name/NN_name.ipynb`` (one assignment per chapter):

- each cell tagged ``solution`` becomes an nbgrader solution cell: every function or method body, and every
  ``answer_… = …`` line, is wrapped in ``### BEGIN SOLUTION`` / ``### END SOLUTION`` (signatures, docstrings,
  imports and class attributes stay for the student);
- the check cell after it becomes an autograded test cell (``points``, a ``grade_id`` named after its check, so it
  stays the same when the notebook changes), with the teacher-only cases of ``tools/teacher_cases.py`` inside
  ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``, right after the public check;
- outputs are cleared; every other cell is left as it is.

Then, inside ``DIR``: ``nbgrader generate_assignment NN_name`` writes what students receive (``release/``): no
solutions, no hidden tests. The README's teacher section gives the whole round.
"""

from __future__ import annotations

import argparse
import ast
import copy
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import teacher_cases  # noqa: E402  (tools/, not the package: the teacher-only cases are not installed)
from editions import ROOT, _read, _tags, chapter_notebooks  # noqa: E402

from deeplsp_helpers.files import atomic_write  # noqa: E402

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
POINTS = 1  # per exercise
EXECUTE_TIMEOUT = 600  # seconds per cell when nbgrader autogrades (its default, 30 s, is shorter than some cells)

CONFIG = f'''"""nbgrader configuration of the DeepLSP pruning course, written by tools/nbgrader_course.py."""
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "deeplsp-pruning"
c.CourseDirectory.root = "."
c.Execute.timeout = {EXECUTE_TIMEOUT}
c.ClearSolutions.code_stub = {{"python": ("# YOUR CODE HERE\\nraise NotImplementedError("
                                          "\\"Exercise: write this, then run the check cell below\\")")}}
'''


def _nbgrader(grade_id: str, *, solution: bool = False, points: int | None = None) -> dict:
    meta = {"grade": points is not None, "grade_id": grade_id, "locked": points is not None,
            "schema_version": 3, "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return meta


def check_call(source: str) -> tuple[str, str, str]:
    """``(grade_id, check name, argument text)`` of a check cell, read off its first statement,
    ``checks.check_…(…)``; the grade_id is the check's name, or ``answer_…`` for ``check_answer``."""
    tree = ast.parse(source)
    first = tree.body[0] if tree.body else None
    call = first.value if isinstance(first, ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr.startswith("check_")):
        raise ValueError(f"a check cell must start with `checks.check_…(…)`, got: {source.splitlines()[0][:80]!r}")
    name = call.func.attr
    args = ", ".join(ast.get_source_segment(source, a) for a in call.args)
    grade_id = name
    if name == "check_answer":
        answers = [a.id for a in call.args if isinstance(a, ast.Name) and a.id.startswith("answer_")]
        if len(answers) != 1:
            raise ValueError(f"check_answer must be given one `answer_…` variable, got: {args[:80]!r}")
        grade_id = answers[0]
    return grade_id, name, args


def _wrap(lines: list[str], first: int, last: int, indent: str) -> None:
    """Put solution markers around ``lines[first:last]`` (0-based, ``last`` exclusive), in place."""
    lines.insert(last, indent + END)
    lines.insert(first, indent + BEGIN)


def solution_source(source: str) -> str:
    """A solution cell with its solution regions marked for nbgrader: each function or method body (after its
    docstring) and each ``answer_… = …`` assignment. Anything else a solution cell holds is kept for the student."""
    tree, lines = ast.parse(source), source.splitlines()
    regions = []  # (first line, last line exclusive, indent), 0-based

    def body_region(fn):
        body = fn.body
        if body[0].lineno == fn.lineno:
            raise ValueError(f"write {fn.name}'s body on its own lines so that it can be marked")
        doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
        start = body[1].lineno if doc and len(body) > 1 else body[0].lineno
        if doc and len(body) == 1:
            raise ValueError(f"{fn.name} has only a docstring: nothing to mark as its solution")
        regions.append((start - 1, body[-1].end_lineno, " " * body[0].col_offset))

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body_region(node)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    body_region(item)
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
              and node.targets[0].id.startswith("answer_")):
            regions.append((node.lineno - 1, node.end_lineno, ""))
        elif not isinstance(node, (ast.Import, ast.ImportFrom)):
            raise ValueError(f"a solution cell may hold only imports, functions, classes and `answer_… = …` "
                             f"assignments; line {node.lineno} is a {type(node).__name__}")
    for first, last, indent in sorted(regions, reverse=True):  # from the bottom, so earlier line numbers hold
        _wrap(lines, first, last, indent)
    return "\n".join(lines)


def hidden_tests(check: str, args: str) -> str:
    """The teacher-only cases of ``check`` (``teacher_cases.teacher_<name>``) as code for the hidden-tests region,
    called with the check's own arguments; empty for ``check_answer`` (it has none)."""
    if check == "check_answer":
        return ""
    name = "teacher_" + check[len("check_"):]
    case = getattr(teacher_cases, name, None)
    if not callable(case):
        raise ValueError(f"tools/teacher_cases.py has no {name}: write the teacher-only cases of {check} in the "
                         "teacher_cases_chNN_NN.py module of its chapter and import them in teacher_cases.py")
    text = Path(inspect.getsourcefile(case)).read_text(encoding="utf-8")  # the chapter module that defines it
    found = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == name]
    code = ast.get_source_segment(text, found[0])
    return (f"# teacher-only cases (tools/teacher_cases.py), run with their own random state\n{code}\n\n\n"
            f"import torch as _torch  # noqa: E402\n\nwith _torch.random.fork_rng(devices=[]):\n    {name}({args})")


def check_source(source: str, check: str, args: str) -> str:
    """A check cell with the teacher-only cases in nbgrader's hidden-tests region, right after the public check."""
    tree = ast.parse(source)
    lines = source.splitlines()
    hidden = hidden_tests(check, args)
    if not hidden:
        return source
    end = tree.body[0].end_lineno
    return "\n".join(lines[:end] + [BEGIN_HIDDEN, hidden, END_HIDDEN] + lines[end:])


def nbgrader_notebook(nb, points: int = POINTS):
    """The nbgrader source version of an executed chapter notebook (see the module's docstring)."""
    nb = copy.deepcopy(nb)
    cells = nb.cells
    exercises = 0
    for cell in cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    for i, cell in enumerate(cells):
        if "solution" not in _tags(cell):
            continue
        test = cells[i + 1] if i + 1 < len(cells) else None
        if test is None or test.cell_type != "code":
            raise ValueError(f"solution cell {i} must be followed by its check cell")
        grade_id, check, args = check_call(test.source)
        cell.source = solution_source(cell.source)
        cell.metadata["nbgrader"] = _nbgrader(f"{grade_id}_solution", solution=True)
        test.source = check_source(test.source, check, args)
        test.metadata["nbgrader"] = _nbgrader(grade_id, points=points)
        exercises += 1
    if exercises == 0:
        raise ValueError("the notebook has no cell tagged 'solution'")
    ids = [c.metadata["nbgrader"]["grade_id"] for c in cells if "nbgrader" in c.metadata]
    if len(ids) != len(set(ids)):
        raise ValueError(f"two exercises share a grade_id: {sorted(i for i in ids if ids.count(i) > 1)}")
    return nb


def strip_markers(source: str) -> str:
    """A solution cell's code as the teacher wrote it: the solution markers removed."""
    return "\n".join(line for line in source.split("\n") if line.strip() not in (BEGIN, END))


def write_course(root: Path | str = ROOT, out: Path | str | None = None, chapters: list[str] | None = None) -> list[Path]:
    """Write the nbgrader course folder (config and source notebooks); returns the notebooks written."""
    import nbformat

    out = Path(out) if out else Path(root) / "nbgrader"
    paths = chapter_notebooks(root)
    if chapters:
        unknown = [c for c in chapters if not any(p.name.startswith(c) for p in paths)]
        if unknown:
            raise ValueError(f"no chapter {unknown}; chapters are {[p.stem for p in paths]}")
        paths = [p for p in paths if any(p.name.startswith(c) for c in chapters)]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "nbgrader_config.py", lambda f: f.write(CONFIG.encode("utf-8")))
    written = []
    for path in paths:
        nb = nbgrader_notebook(_read(path))
        nbformat.validate(nb)
        target = out / "source" / path.stem / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f, nb=nb: f.write(nbformat.writes(nb).encode("utf-8")))
        written.append(target)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="the course checkout (default: the current folder)")
    parser.add_argument("--out", default=None, help="the course folder to write (default: ROOT/nbgrader)")
    parser.add_argument("--chapters", nargs="*", help="chapter numbers or names, e.g. 04 06 (default: all)")
    args = parser.parse_args(argv)
    try:
        written = write_course(args.root, args.out, args.chapters)
    except (ValueError, FileNotFoundError) as exc:
        print(f"nbgrader_course: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
