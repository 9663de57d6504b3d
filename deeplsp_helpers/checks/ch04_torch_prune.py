"""Chapter 04, torch.nn.utils.prune: compounding amounts, a custom pruning method, stripping the masks."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import prune

from ._harness import CheckFailed, _call, _callable, _expect, _number, _own_rng, _passed


@_own_rng
def check_compound_sparsity(compound_sparsity):
    """compound_sparsity(amounts): zeros after l1_unstructured with each amount in turn on one tensor."""
    _callable(compound_sparsity, "compound_sparsity")
    cases = [(0.2, 0.3, 0.4), (0.5, 0.5), (0.9,), (0.1,) * 6, ()]
    for amounts in cases:
        layer = nn.Linear(100, 100)
        for a in amounts:
            prune.l1_unstructured(layer, "weight", amount=a)
        real = float((layer.weight == 0).float().mean())
        got = _number(_call("compound_sparsity", compound_sparsity, amounts))
        _expect(isinstance(got, (int, float)) and abs(got - real) < 1e-3,
                f"compound_sparsity({amounts}) should be {real:.4f} (each amount is a fraction of what is "
                f"left), got {got!r}")
    _passed("compound_sparsity", len(cases))


@_own_rng
def check_threshold_pruning(method):
    """A BasePruningMethod subclass; ``method.apply(module, name, threshold=t)`` prunes |w| < t."""
    if not (isinstance(method, type) and issubclass(method, prune.BasePruningMethod)):
        raise TypeError("pass your class itself, a subclass of torch.nn.utils.prune.BasePruningMethod")
    w = torch.tensor([[0.5, -0.5, 0.1, -0.1, 0.3], [-0.3, 0.05, -0.7, 0.7, -0.05]])
    layer = nn.Linear(5, 2)
    with torch.no_grad():
        layer.weight.copy_(w)
    _call("ThresholdPruning.apply", method.apply, layer, "weight", threshold=0.3)
    _expect(torch.equal(layer.weight != 0, w.abs() >= 0.3), "threshold 0.3 must keep exactly the entries with "
            f"|w| >= 0.3 (negative ones too, and 0.3 itself): kept {(layer.weight != 0).int().tolist()}")
    _call("ThresholdPruning.apply", method.apply, layer, "weight", threshold=0.6)
    _expect(torch.equal(layer.weight != 0, w.abs() >= 0.6), "applied a second time (threshold 0.6) the masks "
            "must combine: only |w| >= 0.6 survives")
    layer = nn.Linear(5, 2)
    with torch.no_grad():
        layer.weight.copy_(w)
    earlier = torch.tensor([[0.0, 1, 1, 1, 1], [1, 1, 1, 0, 1]])  # earlier pruning removed two large weights
    prune.custom_from_mask(layer, "weight", earlier)
    _call("ThresholdPruning.apply", method.apply, layer, "weight", threshold=0.3)
    _expect(torch.equal(layer.weight != 0, (w.abs() >= 0.3) & (earlier == 1)), "on top of an earlier pruning "
            "the masks must combine: entries already pruned stay pruned")
    _passed("ThresholdPruning", 3)


@_own_rng
def check_strip_pruning(strip_pruning):
    """strip_pruning(model): make every pruning permanent, whatever the parameter names."""
    _callable(strip_pruning, "strip_pruning")
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), flat=nn.Flatten(), fc=nn.Linear(4 * 4 * 4, 5)))
    prune.l1_unstructured(model.conv, "weight", amount=0.5)
    prune.l1_unstructured(model.conv, "bias", amount=0.5)
    prune.l1_unstructured(model.fc, "bias", amount=0.4)
    prune.random_unstructured(model.fc, "bias", amount=0.5)  # a PruningContainer
    x = torch.randn(2, 1, 6, 6)
    want = model(x).detach()
    result = _call("strip_pruning", strip_pruning, model)
    result = model if result is None else result
    left = [n for n, _ in result.named_buffers() if n.endswith("_mask")] + \
           [n for n, _ in result.named_parameters() if n.endswith("_orig")]
    _expect(not left, f"after strip_pruning these remain: {left} (every pruned tensor, not only 'weight')")
    _expect(not any(isinstance(h, prune.BasePruningMethod) for m in result.modules()
                    for h in m._forward_pre_hooks.values()), "pruning hooks are left on the model")
    fresh = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), flat=nn.Flatten(), fc=nn.Linear(64, 5)))
    try:
        fresh.load_state_dict(result.state_dict())
    except RuntimeError as exc:
        raise CheckFailed(f"the stripped state_dict does not load into a fresh model: {exc}") from None
    _expect(torch.allclose(fresh(x), want, atol=1e-6), "the stripped model must compute what the pruned one did "
            "(make the masks permanent with prune.remove, do not just drop them)")
    _passed("strip_pruning", 3)
