"""Checking an answer read off the learner's own measurement (the experiment exercises)."""

from __future__ import annotations

import math

from .._validate import check_number
from ._harness import CheckFailed, _number


def _scalar(x):
    """A NumPy scalar or 0-d array as the Python number it holds (``np.bool_`` as ``bool``)."""
    return x.item() if type(x).__module__ == "numpy" and getattr(x, "size", 0) == 1 else x


def check_answer(question: str, answer, expected, *, within: float | None = None) -> None:
    """``answer`` must equal ``expected``, the value the learner's own measurement gives (computed in the notebook
    from that measurement, so a different run that measures differently still passes with its own answer).

    ``within``: for a number read off a printed measurement, the largest difference allowed (e.g. 0.006 for a
    speed-up printed with two decimals); without it a number must match to a relative 1e-6.

    ``expected`` may be a zero-argument callable, called only once an answer is given: the check cell can
    then name results that exist only after the learner's own measurement has run.
    """
    if not isinstance(question, str) or not question:
        raise TypeError("question must be a non-empty string saying what was asked")
    if answer is None or answer is Ellipsis:
        raise CheckFailed(f"{question}: not written yet (replace `...` with your answer, read off your own "
                          f"measurement above)")
    if callable(expected):
        try:
            expected = expected()
        except NotImplementedError:
            raise CheckFailed(f"{question}: the function your measurement uses is not written yet") from None
        except Exception as exc:  # e.g. a NameError: the measurement cell above has not run
            raise CheckFailed(f"{question}: your measurement above has not run ({type(exc).__name__}: {exc})") from None
    if within is not None:
        within = check_number(within, "within", 0, hint=" (the largest difference allowed)")
    got, want = _scalar(_number(answer)), _scalar(_number(expected))
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        ok = math.isclose(got, want, rel_tol=0 if within else 1e-6, abs_tol=within or 1e-9)
    else:
        ok = type(got) is type(want) and got == want
    if not ok:
        shown = f"{want:.4g} (answers within {within:g} pass)" if within and isinstance(want, float) else repr(want)
        raise CheckFailed(f"{question}: your own measurement above gives {shown}, you answered {got!r}")
    print(f"{question}: {got!r}, as your measurement says")
