"""What every chapter's checks share: the failure type, calling the learner's function, comparing answers,
reporting a pass, the small models and batches of the hidden cases, and a private random state."""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import torch
from torch import nn


class CheckFailed(AssertionError):
    """An exercise's answer is wrong (or not written yet). Shown as one line in Jupyter."""

    def _render_traceback_(self):  # IPython uses this instead of the traceback
        return [f"CheckFailed: {self}"]


def _call(name, fn, *args, **kwargs):
    """Call the learner's ``fn``; turn 'not written yet' and crashes into a CheckFailed that says so."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"{name} is not written yet: replace `raise NotImplementedError` with your code") from None
    except CheckFailed:
        raise
    except Exception as exc:  # a crash on a hidden case is a wrong answer, reported as such
        raise CheckFailed(f"{name} raised {type(exc).__name__} on a hidden case: {exc}") from None


def _expect(ok, message):
    if not ok:
        raise CheckFailed(message)


def _callable(fn, name):
    if not callable(fn):
        raise TypeError(f"pass your function {name} itself (not its result), got {type(fn).__name__}")


def _passed(name, cases):
    print(f"{name}: all {cases} hidden cases passed")


def _close(a, b, tol=1e-9):
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _number(x):
    return x.item() if isinstance(x, torch.Tensor) and x.numel() == 1 else x


def _compare_numbers(name, fn, cases, want, hint):
    """``fn(*args)`` must be the number ``want(*args)`` for every argument tuple in ``cases``."""
    for args in cases:
        expected, got = want(*args), _number(_call(name, fn, *args))
        _expect(_close(got, expected), f"{name}{args} should be {expected:.6f} ({hint}), got {got!r}")
    _passed(name, len(cases))


def _tiny_mlp(seed=0, sizes=(12, 7, 3)):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(hidden=nn.Linear(sizes[0], sizes[1]), act=nn.ReLU(),
                                     out=nn.Linear(sizes[1], sizes[2])))


def _batches(seed=1, n=3, features=12, classes=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(5 + i, features, generator=gen), torch.randint(0, classes, (5 + i,), generator=gen))
            for i in range(n)]


def _own_rng(check):
    """Run ``check`` with its own copy of the global torch RNG: its seeding never changes the notebook's
    later random draws."""
    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)
    return wrapped
