"""The tests every chapter's exercise checks get; each tests/test_checks_chNN.py gives its chapter's answers."""

import importlib
import time

import pytest
import torch
from torch.nn.utils import prune

from deeplsp_helpers import checks

CHAPTER_FILES = [f"test_checks_ch{c:02d}" for c in range(10)]


def args_of(answer):
    """A check's arguments: one function, or a tuple of them (an experiment: the measurement, then the answer)."""
    return answer if isinstance(answer, tuple) else (answer,)


def all_answers() -> tuple[dict, dict, dict]:
    """``(RIGHT, RIGHT_ALSO, WRONG)`` of every chapter's test file together, by check name."""
    files = [importlib.import_module(name) for name in CHAPTER_FILES]
    return tuple({k: v for f in files for k, v in getattr(f, table, {}).items()}
                 for table in ("RIGHT", "RIGHT_ALSO", "WRONG"))


def chapter_tests(module, right: dict, wrong: dict, wrong_told: dict, right_also: dict | None = None,
                  designs: frozenset | set = frozenset()) -> dict:
    """``{test name: test function}`` for the checks of one chapter's module (``deeplsp_helpers.checks.chNN_…``).

    ``right``: the notebook's answer to each check; ``wrong``: answers each check must reject with a message;
    ``wrong_told``: ``(wrong answer, what the message must say)``; ``right_also`` (chapters whose checks list right
    alternatives and wrong answers with their causes): every right answer the task allows, the notebook's first;
    ``designs``: checks whose first argument is a value the learner writes (``answer_… = …``, which the student
    edition leaves as ``...``), followed by the exercise's setting, rather than functions.
    """
    names = sorted(n[len("check_"):] for n in vars(module) if n.startswith("check_"))

    def test_every_check_has_a_right_and_wrong_answers():
        assert names == sorted(right) == sorted(wrong)
        assert all(len(v) >= 2 for v in wrong.values())
        assert all(f"check_{n}" in checks.__all__ for n in names)
        if right_also is not None:  # right alternatives, and wrong answers with their causes, for every check
            assert names == sorted(right_also) == sorted(wrong_told)
            assert all(len(v) >= 2 for v in wrong_told.values())

    @pytest.mark.parametrize("name", sorted(right))
    def test_right_answer_passes(name, capsys):
        getattr(checks, f"check_{name}")(*args_of(right[name]))
        assert "hidden cases passed" in capsys.readouterr().out

    @pytest.mark.parametrize("name,index", [(n, i) for n in sorted(wrong) for i in range(len(wrong[n]))])
    def test_wrong_answer_fails_with_a_message(name, index):
        with pytest.raises(checks.CheckFailed) as info:
            getattr(checks, f"check_{name}")(*args_of(wrong[name][index]))
        assert len(str(info.value)) > 20
        assert info.value._render_traceback_() == [f"CheckFailed: {info.value}"]

    @pytest.mark.parametrize("name,index", [(n, i) for n in sorted(wrong_told) for i in range(len(wrong_told[n]))])
    def test_wrong_answer_is_told_what_is_wrong(name, index):
        answer, says = wrong_told[name][index]
        with pytest.raises(checks.CheckFailed, match=says):
            getattr(checks, f"check_{name}")(*args_of(answer))

    @pytest.mark.parametrize("name", sorted(right))
    def test_unwritten_exercise_says_so(name):
        def unwritten(*args, **kwargs):
            raise NotImplementedError("Exercise: write it")

        stub = unwritten
        if name == "threshold_pruning":
            stub = type("Stub", (prune.BasePruningMethod,), {"PRUNING_TYPE": "unstructured", "compute_mask": unwritten,
                                                              "apply": classmethod(unwritten)})
        args = [stub] * len(args_of(right[name]))
        if name in designs:  # the answer not given yet (`...`), the setting as in the right answer
            args = [..., *args_of(right[name])[1:]]
        with pytest.raises(checks.CheckFailed, match="not written yet"):
            getattr(checks, f"check_{name}")(*args)

    tests = [test_every_check_has_a_right_and_wrong_answers, test_right_answer_passes,
             test_wrong_answer_fails_with_a_message, test_wrong_answer_is_told_what_is_wrong,
             test_unwritten_exercise_says_so]
    if right_also is None:
        return {t.__name__: t for t in tests}

    @pytest.mark.parametrize("name,index", [(n, i) for n in sorted(right_also) for i in range(len(right_also[n]))])
    def test_every_right_alternative_passes(name, index, capsys):
        getattr(checks, f"check_{name}")(*args_of(right_also[name][index]))
        assert "hidden cases passed" in capsys.readouterr().out

    @pytest.mark.parametrize("name", sorted(right_also))
    def test_checks_leave_the_random_state_alone_and_are_fast(name, capsys):
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        start = time.perf_counter()
        getattr(checks, f"check_{name}")(*args_of(right[name]))
        seconds = time.perf_counter() - start
        assert torch.equal(torch.rand(3), expected)
        assert seconds < 10, f"check_{name} took {seconds:.1f} s (meant to take under 1.5 s; generous on a busy machine)"
        capsys.readouterr()

    tests += [test_every_right_alternative_passes, test_checks_leave_the_random_state_alone_and_are_fast]
    experiments = sorted(n for n in right_also if isinstance(right[n], tuple) and n not in designs)
    if experiments:
        @pytest.mark.parametrize("name", experiments)
        def test_an_experiment_check_says_which_function_is_not_written(name):
            def unwritten(*args, **kwargs):
                raise NotImplementedError("Exercise: write it")

            measure, answer = right[name]
            with pytest.raises(checks.CheckFailed, match="not written yet"):
                getattr(checks, f"check_{name}")(measure, unwritten)
            with pytest.raises(TypeError, match="your function"):
                getattr(checks, f"check_{name}")(measure, 0.5)  # a value, not the function

        tests.append(test_an_experiment_check_says_which_function_is_not_written)
    return {t.__name__: t for t in tests}
