"""Grading a class with nbgrader: the teacher-only cases, the nbgrader source notebooks, and a round trip through the
real nbgrader (generate_assignment, autograde, export) on one chapter."""

import contextlib
import csv
import inspect
import io
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_cases  # noqa: E402  (the right and known-wrong answers of every exercise)
import nbgrader_course  # noqa: E402
import teacher_cases  # noqa: E402
import test_checks_ch04  # noqa: E402

from deeplsp_helpers import checks  # noqa: E402

CHAPTER = "04_torch_nn_utils_prune"  # the round trip's chapter: the shortest to execute (about 10 s)
WRONG_EXERCISE = "check_strip_pruning"  # (c) gets one known-wrong answer here, from tests/test_checks_ch04.py
RIGHT, RIGHT_ALSO, WRONG = check_cases.all_answers()


def _run_quietly(fn, args):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        fn(*args)
    return out.getvalue()


# ---- the teacher-only cases --------------------------------------------------------------------------------

def test_every_check_has_teacher_only_cases():
    names = sorted(n[len("check_"):] for n in checks.__all__ if n.startswith("check_") and n != "check_answer")
    assert names == sorted(n[len("teacher_"):] for n in vars(teacher_cases) if n.startswith("teacher_"))


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_teacher_only_cases_pass_every_right_answer(name):
    case = getattr(teacher_cases, f"teacher_{name}")
    for right in [RIGHT[name]] + RIGHT_ALSO.get(name, [])[1:]:
        assert "passed" in _run_quietly(case, check_cases.args_of(right))


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_teacher_only_cases_catch_known_wrong_answers(name):
    case = getattr(teacher_cases, f"teacher_{name}")
    caught = 0
    for wrong in WRONG[name]:
        try:
            _run_quietly(case, check_cases.args_of(wrong))
        except Exception:  # an assert, or the wrong answer's own crash
            caught += 1
    assert caught >= 2, f"the teacher-only cases of {name} catch {caught} of {len(WRONG[name])} wrong answers"


def test_the_installed_package_does_not_hold_the_teacher_only_cases():
    package = ROOT / "deeplsp_helpers"
    names = [n for n in vars(teacher_cases) if n.startswith("teacher_")]
    leaked = [(p.name, n) for p in package.rglob("*.py") for n in names if n in p.read_text(encoding="utf-8")]
    assert not leaked
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'include = ["deeplsp_helpers", "deeplsp_helpers.*"]' in pyproject  # tools/ is not packaged


# ---- the nbgrader source notebooks ----------------------------------------------------------------------------

def test_a_solution_cell_gets_markers_around_bodies_and_answers():
    source = ('import torch\n\n\nclass P:\n    KIND = "x"\n\n    def f(self, a):\n        """Doc."""\n        b = a + 1\n'
              '        return b\n\n\ndef g(x):\n    return x\n\n\nanswer_best = max({"a": 1, "b": 2},\n'
              '                  key=len)\n')
    marked = nbgrader_course.solution_source(source)
    assert marked.count("### BEGIN SOLUTION") == 3 == marked.count("### END SOLUTION")
    assert ('        """Doc."""\n        ### BEGIN SOLUTION\n        b = a + 1\n        return b\n'
            '        ### END SOLUTION') in marked
    assert '    KIND = "x"' in marked and "import torch" in marked
    assert "### BEGIN SOLUTION\nanswer_best = max(" in marked and "key=len)\n### END SOLUTION" in marked
    assert nbgrader_course.strip_markers(marked) == source.rstrip("\n")
    with pytest.raises(ValueError, match="only imports"):
        nbgrader_course.solution_source("x = 1\n")


def test_a_check_cell_is_named_after_its_check():
    assert nbgrader_course.check_call("checks.check_keep_zero(keep_zero)\nprint(1)") == \
        ("check_keep_zero", "check_keep_zero", "keep_zero")
    assert nbgrader_course.check_call('checks.check_answer("q", answer_x,\n    lambda: 3)')[0] == "answer_x"
    with pytest.raises(ValueError, match="must start with"):
        nbgrader_course.check_call("print(1)\nchecks.check_keep_zero(keep_zero)")


def test_every_chapter_becomes_an_nbgrader_source_notebook(tmp_path):
    written = nbgrader_course.write_course(ROOT, tmp_path)
    assert (tmp_path / "nbgrader_config.py").is_file()
    assert [p.parent.name for p in written] == [p.stem for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
    for path in written:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
        graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        solutions = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert 3 <= len(graded) == len(solutions) <= 5, path.name
        assert all("### BEGIN SOLUTION" in c.source for c in solutions)
        for cell in graded:
            meta = cell.metadata["nbgrader"]
            assert meta["locked"] and meta["points"] == nbgrader_course.POINTS
            assert cell.source.startswith("checks.check_")
            hidden = "### BEGIN HIDDEN TESTS" in cell.source
            assert hidden == (not meta["grade_id"].startswith("answer_")), (path.name, meta["grade_id"])
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    with pytest.raises(ValueError, match="no chapter"):
        nbgrader_course.write_course(ROOT, tmp_path, ["99"])


# ---- the round trip through the real nbgrader ---------------------------------------------------------------

def _nbgrader(course, *args):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               TQDM_DISABLE="1")
    done = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), *args], cwd=course, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _submission(release, source, replace=None):
    """The released notebook with its solution cells filled in from the source (markers removed); ``replace``
    maps a solution cell's grade_id to other code."""
    nb = nbformat.from_dict(release)
    code = {c.metadata["nbgrader"]["grade_id"]: nbgrader_course.strip_markers(c.source)
            for c in source.cells if c.metadata.get("nbgrader", {}).get("solution")}
    code.update(replace or {})
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = code[grade_id]
    return nb


def test_nbgrader_round_trip_gives_full_none_and_all_but_one_exercise(tmp_path):
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    nbgrader_course.write_course(ROOT, course, [CHAPTER[:2]])
    _nbgrader(course, "generate_assignment", CHAPTER)
    name = f"{CHAPTER}.ipynb"
    source = nbformat.read(str(course / "source" / CHAPTER / name), as_version=4)
    release = nbformat.read(str(course / "release" / CHAPTER / name), as_version=4)
    released = "\n".join(c.source for c in release.cells)
    assert "HIDDEN TESTS" not in released and "teacher_" not in released and "BEGIN SOLUTION" not in released
    assert "super().apply(module, name, threshold=threshold)" not in released  # a solution line of the chapter

    wrong = inspect.getsource(test_checks_ch04._remove_weight_only).replace("def _remove_weight_only(", "def strip_pruning(")
    submissions = {"solutions": _submission(release, source), "untouched": release,
                   "one_wrong": _submission(release, source, {f"{WRONG_EXERCISE}_solution": wrong})}
    for student, nb in submissions.items():
        target = course / "submitted" / student / CHAPTER / name
        target.parent.mkdir(parents=True)
        nbformat.write(nb, str(target))
        _nbgrader(course, "db", "student", "add", student)
    _nbgrader(course, "autograde", CHAPTER)
    _nbgrader(course, "export")

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        points = {s: {g.name: g.score for g in gb.find_submission_notebook(CHAPTER, CHAPTER, s).grades}
                  for s in submissions}
        possible = {g.name: g.max_score for g in gb.find_submission_notebook(CHAPTER, CHAPTER, "solutions").grades}
    exercises = sorted(possible)
    assert exercises == ["check_compound_sparsity", "check_strip_pruning", "check_threshold_pruning"]
    assert points["solutions"] == possible                                    # (a) full points
    assert all(v == 0 for v in points["untouched"].values())                  # (b) no exercise points
    assert points["one_wrong"] == {**possible, WRONG_EXERCISE: 0}              # (c) exactly that exercise lost

    graded = nbformat.read(str(course / "autograded" / "solutions" / CHAPTER / name), as_version=4)
    shown = "\n".join(o.get("text", "") for c in graded.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert shown.count("teacher-only cases of") == len(exercises)  # the hidden tests were put back and ran

    with open(course / "grades.csv", newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    total = sum(possible.values())
    assert {s: float(r["score"]) for s, r in rows.items()} == {"solutions": total, "untouched": 0.0,
                                                               "one_wrong": total - possible[WRONG_EXERCISE]}
    assert all(float(r["max_score"]) == total for r in rows.values())
