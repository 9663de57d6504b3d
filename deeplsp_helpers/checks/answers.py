"""Checking an answer read off the learner's own measurement (the experiment exercises)."""

from __future__ import annotations

import math

from ._harness import CheckFailed, _number


def check_answer(question: str, answer, expected) -> None:
    """``answer`` must equal ``expected``, the value the learner's own measurement gives (computed in the notebook
    from that measurement, so a different run that measures differently still passes with its own answer).

    ``expected`` may be a zero-argument callable, called only once an answer is given: the check cell can
    then name results that exist only after the learner's own measurement has run.
    """
    if not isinstance(question, str) or not question:
        raise TypeError("question must be a non-empty string saying what was asked")
    if answer is None or answer is Ellipsis:
        raise CheckFailed(f"{question}: not written yet (replace `...` with your answer, read off your own "
                          f"measurement above)")
    got, want = _number(answer), _number(expected() if callable(expected) else expected)
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        ok = math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    else:
        ok = type(got) is type(want) and got == want
    if not ok:
        raise CheckFailed(f"{question}: your own measurement above gives {want!r}, you answered {got!r}")
    print(f"{question}: {got!r}, as your measurement says")
