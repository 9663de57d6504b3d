"""Chapter 03, when to prune: iterative steps, keeping pruned weights at zero, the cubic schedule."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._harness import _batches, _call, _callable, _close, _expect, _number, _own_rng, _passed, _tiny_mlp


@_own_rng
def check_iterative_steps(iterative_steps):
    """iterative_steps(final, n): n sparsities, the same fraction of the remaining weights pruned each step."""
    _callable(iterative_steps, "iterative_steps")
    cases = [(0.95, 4), (0.5, 1), (0.9, 3), (0.0, 2), (0.99, 5)]
    for final, n in cases:
        r = 1 - (1 - final) ** (1 / n)
        want = [1 - (1 - r) ** k for k in range(1, n + 1)]
        got = _call("iterative_steps", iterative_steps, final, n)
        _expect(len(got) == n and all(_close(float(g), w, 1e-9) for g, w in zip(got, want)),
                f"iterative_steps({final}, {n}) should be {[round(w, 4) for w in want]}, got {got!r}")
    _passed("iterative_steps", len(cases))


@_own_rng
def check_keep_zero(keep_zero):
    """keep_zero(layer_name, mask) -> callback(model) that re-applies the mask after every optimizer step."""
    _callable(keep_zero, "keep_zero")
    model, batches = _tiny_mlp(4), _batches(n=6)
    mask = (torch.rand(model.out.weight.shape, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    with torch.no_grad():
        model.out.weight.mul_(mask)
    start = copy.deepcopy(model.state_dict())
    callback = _call("keep_zero", keep_zero, "out", mask)
    _expect(callable(callback), "keep_zero must return a callback: a function of the model")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for X, y in batches:  # momentum would move pruned weights after the gradient is gone
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        _call("the callback", callback, model)
        _expect(torch.equal(model.out.weight == 0, mask == 0), "after an optimizer step and the callback the "
                "pruned weights must be exactly zero and only those (the mask must be re-applied every step)")
    moved = (model.out.weight - start["out.weight"]).abs()[mask == 1].min()
    _expect(moved > 0, "kept weights must still train: the callback must only zero the masked ones")
    _expect(torch.equal(model.hidden.weight == 0, start["hidden.weight"] == 0) and
            not torch.equal(model.hidden.weight, start["hidden.weight"]), "other layers must be left alone")
    _passed("keep_zero", len(batches))


@_own_rng
def check_cubic_window(cubic_window):
    """cubic_window(step, begin, end, final): 0 before begin, final after end, cubic in between."""
    _callable(cubic_window, "cubic_window")
    begin, end, final = 10, 110, 0.9
    cases = [0, 10, 35, 60, 85, 110, 500]
    for step in cases:
        t = min(max((step - begin) / (end - begin), 0.0), 1.0)
        want = final * (1 - (1 - t) ** 3)
        got = _number(_call("cubic_window", cubic_window, step, begin, end, final))
        _expect(_close(float(got), want, 1e-9), f"cubic_window({step}, begin={begin}, end={end}, final={final}) "
                f"should be {want:.6f} (hold 0 before begin and final after end), got {got!r}")
    _passed("cubic_window", len(cases))
