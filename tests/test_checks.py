"""Every exercise check is tested by its chapter's file (tests/test_checks_chNN.py, with the tests of
tests/check_cases.py); here: that none is left out, and the experiments' check_answer."""

from pathlib import Path

import check_cases
import pytest
import torch

from deeplsp_helpers import checks


def test_every_check_is_tested_by_its_chapter_file():
    files = sorted(Path(__file__).parent.glob("test_checks_ch*.py"))
    assert [f.stem for f in files] == check_cases.CHAPTER_FILES
    right, _, wrong = check_cases.all_answers()
    names = sorted(n[len("check_"):] for n in checks.__all__ if n.startswith("check_") and n != "check_answer")
    assert sorted(right) == sorted(wrong) == names


def test_an_answer_read_off_a_measurement_is_checked_against_that_measurement(capsys):
    measured = {"lenet": 6.0, "vgg": 1.8}
    checks.check_answer("the model batching helps most", "lenet", lambda: max(measured, key=measured.get))
    assert "as your measurement says" in capsys.readouterr().out
    checks.check_answer("a ratio", torch.tensor(0.5, dtype=torch.float32), 0.5)  # a float32 tensor is fine
    with pytest.raises(checks.CheckFailed, match="your own measurement above gives 'lenet'"):
        checks.check_answer("the model batching helps most", "vgg", lambda: max(measured, key=measured.get))
    with pytest.raises(checks.CheckFailed, match="not written yet"):
        checks.check_answer("q", ..., lambda: 1 / 0)  # the expected value is not computed before an answer exists
    with pytest.raises(checks.CheckFailed, match="has not run"):
        checks.check_answer("q", "lenet", lambda: undefined_measurement)  # noqa: F821 - the measurement never ran
    import numpy as np
    checks.check_answer("a numpy flag", True, lambda: np.bool_(True))
    with pytest.raises(checks.CheckFailed):
        checks.check_answer("a flag", 1, True)  # 1 is not True: a yes/no question takes a bool
    with pytest.raises(TypeError):
        checks.check_answer("", 1, 1)


def test_a_number_read_off_a_printed_measurement_passes_within_its_tolerance(capsys):
    measured = 2.4138  # printed as 2.41x
    checks.check_answer("the speed-up", 2.41, lambda: measured, within=0.006)
    assert "as your measurement says" in capsys.readouterr().out
    with pytest.raises(checks.CheckFailed, match=r"gives 2\.414 \(answers within 0\.006 pass\)"):
        checks.check_answer("the speed-up", 2.40, lambda: measured, within=0.006)
    with pytest.raises(checks.CheckFailed):
        checks.check_answer("the speed-up", 2.41, lambda: measured)  # without a tolerance: the exact value
    with pytest.raises(checks.CheckFailed):
        checks.check_answer("the speed-up", "2.41", lambda: measured, within=0.006)  # a number, not its text
    for bad in (0, -0.1, True, "0.01"):
        with pytest.raises(ValueError, match="within"):
            checks.check_answer("the speed-up", 2.41, lambda: measured, within=bad)
