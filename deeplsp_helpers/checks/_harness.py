"""What every chapter's checks share: the failure type, calling the learner's function, comparing answers,
reporting a pass, the small models and batches of the hidden cases, and a private random state."""

from __future__ import annotations

import functools
import math
import numbers
import time
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


def _number(x):
    return x.item() if isinstance(x, torch.Tensor) and x.numel() == 1 else x


class _Busy(nn.Module):
    """A stand-in model whose forward pass takes ``fixed`` seconds plus ``per_image`` seconds per image. It
    busy-waits (``time.sleep`` overshoots by tens of microseconds, by milliseconds on some systems) and has a
    parameter (answers may ask a model for its device)."""

    def __init__(self, fixed, per_image=0.0):
        super().__init__()
        self.fixed, self.per_image = fixed, per_image
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        end = time.perf_counter() + self.fixed + self.per_image * x.shape[0]
        while time.perf_counter() < end:
            pass
        return x


class _Gain(nn.Module):
    """A module whose parameter is called neither weight nor bias: ``gain``, ``n`` values from ``low`` to ``high``."""

    def __init__(self, n, low=-1.0, high=1.0):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(low, high, n))

    def forward(self, x):
        return x * self.gain


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


# ---- added for issue #18: numbers compared at the precision the answer was computed in, masks checked for ----
# ---- their type and values, and messages that say why an answer is wrong when the check can tell          ----

_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _as_real(x):
    """``(value, tolerance)`` of a numeric answer, or ``(None, None)`` when it is not a real number.

    A Python ``int``/``float``, a NumPy scalar or a one-element tensor is a number; a ``bool`` is not (a
    yes/no answer is not a count). The tolerance fits the precision the answer was computed in: 1e-5 for
    float32 (a float32 tensor is a fine answer), coarser for 16-bit floats, and 1e-6 for Python floats and float64,
    which often hold a value computed in float32 (``float((w == 0).float().mean())``).
    """
    if isinstance(x, torch.Tensor):
        if x.numel() != 1 or x.dtype == torch.bool or x.is_complex():
            return None, None
        return float(x.item()), _TOLERANCE.get(x.dtype, 1e-6)
    if isinstance(x, bool) or type(x).__name__ == "bool_" or not isinstance(x, numbers.Real):
        return None, None
    size = getattr(getattr(x, "dtype", None), "itemsize", 8)  # NumPy scalars carry their precision
    return float(x), {2: 2e-3, 4: 1e-5}.get(size, 1e-6)


def _same_real(got, want, tol=None):
    """Is the answer ``got`` the number ``want``, within the precision ``got`` was computed in (or ``tol``)?"""
    value, own = _as_real(got)
    tol = own if tol is None else max(tol, own or 0.0)
    return value is not None and math.isfinite(value) and math.isclose(value, want, rel_tol=tol, abs_tol=tol)


def _show(x):
    """An answer as a message shows it: numbers with enough digits to see a difference, the type otherwise."""
    value, _ = _as_real(x)
    if value is not None:
        kind = f" ({type(x).__name__} {x.dtype})" if isinstance(x, torch.Tensor) else ""
        return f"{value:.10g}{kind}"
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return repr(x) if isinstance(x, (bool, type(None), str)) else f"{x!r} ({type(x).__name__})"


def _cause(got, alternatives, default=""):
    """The first message of ``alternatives`` (``[(value, message), …]``) whose known-wrong value the answer
    ``got`` equals: what the answer actually did wrong, when the check can tell; ``default`` otherwise."""
    for value, message in alternatives:
        if (isinstance(value, bool) and got is value) or (not isinstance(value, bool) and _same_real(got, value)):
            return message
    return default


def _compare_reals(name, fn, cases, want, causes=None, hint=""):
    """``fn(*args)`` must be the real number ``want(*args)`` for every argument tuple in ``cases``, compared at the
    answer's precision; ``causes(*args)`` lists ``(known-wrong value, what it means)`` for the message."""
    for args in cases:
        expected, got = want(*args), _call(name, fn, *args)
        if not _same_real(got, expected):
            shown = ", ".join(repr(a) for a in args)
            why = _cause(got, causes(*args) if causes else [], hint)
            if _as_real(got)[0] is None:
                why = f"return a number, got {_show(got)}"
            raise CheckFailed(f"{name}({shown}) should be {expected:.10g}, got {_show(got)}" + (f": {why}" if why else ""))
    _passed(name, len(cases))


def _mask_problem(mask, shape, what="the mask"):
    """Why ``mask`` is not a 0/1 mask of ``shape`` (a float tensor of 0s and 1s, or a bool tensor), or None."""
    if not isinstance(mask, torch.Tensor):
        return f"{what} must be a tensor, got {type(mask).__name__}"
    if tuple(mask.shape) != tuple(shape):
        return f"{what} must have the weight's shape {tuple(shape)}, got {tuple(mask.shape)}"
    if not (mask.dtype == torch.bool or mask.is_floating_point()):
        return f"{what} must be a float 0/1 tensor or a bool tensor, got {mask.dtype}"
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        odd = mask[(mask != 0) & (mask != 1)].flatten()[:3].tolist()
        return f"{what} must hold only 0 and 1, got values like {odd} (the pruned weights, not the mask?)"
    return None


def _unchanged(before, after):
    """Are two state_dicts (or tensors) equal: same keys, same values?"""
    if isinstance(before, torch.Tensor):
        return isinstance(after, torch.Tensor) and before.shape == after.shape and torch.equal(before, after)
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _snapshot(module):
    """A detached copy of ``module``'s state_dict, to tell later whether it was changed."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _agrees(answers, values):
    """Do the answers equal the known values case by case (bools and None by identity, numbers at the answers'
    precision)?"""
    return len(answers) == len(values) and all(
        (a is v) if isinstance(v, bool) or v is None else _same_real(a, v) for a, v in zip(answers, values))


def _explain(answers, variants, default=""):
    """What a function did wrong, when the check can tell: the message of the only known-wrong variant
    (``(its values on every case, message)``) that agrees with all of the function's ``answers``; ``default``
    when none or several do (a single case often cannot tell two mistakes apart, all the cases together can)."""
    fits = [message for values, message in variants if _agrees(answers, values)]
    return fits[0] if len(fits) == 1 else default
