"""Chapter 04, torch.nn.utils.prune: repeated pruning measured (and predicted from the measurement), a custom
pruning method, stripping the masks."""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import prune

from ._harness import (
    CheckFailed,
    _as_real,
    _call,
    _callable,
    _cause,
    _expect,
    _explain,
    _Gain,
    _mask_problem,
    _own_rng,
    _passed,
    _same_real,
    _show,
    _snapshot,
    _unchanged,
)


def _layer_with_zeros(layer, zeros, seed):
    """``layer`` with exactly ``round(zeros · numel)`` of its weights set to exactly 0 (no mask: a pruning that
    was made permanent), at random positions."""
    gen = torch.Generator().manual_seed(seed)
    w = layer.weight
    with torch.no_grad():
        w.view(-1)[torch.randperm(w.numel(), generator=gen)[:round(zeros * w.numel())]] = 0
    return layer


def _measure(layer, amounts):
    probe = copy.deepcopy(layer)
    for a in amounts:
        prune.l1_unstructured(probe, "weight", amount=a)
    return probe


def _formula(amounts):
    left = 1.0
    for a in amounts:
        left *= 1 - a
    return 1 - left


@_own_rng
def check_compound_sparsity(sparsity_after, compound_sparsity):
    """sparsity_after(layer, amounts): the fraction of zeros in the weight of a copy of ``layer`` after
    ``prune.l1_unstructured(copy, "weight", amount=a)`` for each amount in turn (layer unchanged);
    compound_sparsity(zeros, amounts): that fraction predicted, for a weight that starts with a fraction
    ``zeros`` of exact zeros; it must agree with your own sparsity_after."""
    _callable(sparsity_after, "sparsity_after")
    _callable(compound_sparsity, "compound_sparsity")
    torch.manual_seed(0)
    layers = {0.0: nn.Linear(50, 40), 0.25: _layer_with_zeros(nn.Linear(50, 40), 0.25, 1),
              0.6: _layer_with_zeros(nn.Linear(50, 40), 0.6, 2), 0.9: _layer_with_zeros(nn.Conv2d(8, 25, 3), 0.9, 3)}
    measured_cases = [(0.0, (0.2, 0.3, 0.4)), (0.0, (0.5, 0.5)), (0.0, ()), (0.25, (0.5,)), (0.25, (0.2, 0.3, 0.4)),
                      (0.6, (0.5,)), (0.6, (0.5, 0.4)), (0.6, (0.1,) * 6), (0.9, (0.2, 0.3)), (0.9, (0.5, 0.5, 0.5, 0.5))]
    answers, probes = [], []
    for zeros, amounts in measured_cases:
        layer = layers[zeros]
        before = _snapshot(layer)
        got = _call("sparsity_after", sparsity_after, layer, list(amounts))
        _expect(_unchanged(before, _snapshot(layer)) and not prune.is_pruned(layer),
                f"sparsity_after(layer, {list(amounts)}) changed the layer it was given: prune a copy "
                f"(copy.deepcopy(layer)) and leave the layer as it was")
        answers.append(got)
        probes.append(_measure(layer, amounts))
    truth = [float((probe.weight == 0).double().mean()) for probe in probes]
    variants = [([wrong(probe, amounts) for probe, (_, amounts) in zip(probes, measured_cases)], message)
                for wrong, message in (
        (lambda p, a: float((p.weight_mask == 0).double().mean()) if a else 0.0,
         "that counts the mask's zeros; count the zeros of the pruned weight itself (weights that were already 0 "
         "are zeros too)"),
        (lambda p, a: 100 * float((p.weight == 0).double().mean()), "give a fraction between 0 and 1, not a percentage"),
        (lambda p, a: ((p.weight == 0).sum() + (p.bias == 0).sum()).item() / (p.weight.numel() + p.bias.numel()),
         "count the weight's zeros only, not the bias"),
        (lambda p, a: float((p.weight == 0).sum()), "give the fraction of zeros, not their count"),
        (lambda p, a: _formula(a), "that is the formula; measure: prune a copy of the layer and count its zeros"))]
    why = _explain(answers, variants, "prune a copy of the layer with prune.l1_unstructured(copy, 'weight', "
                                      "amount=a) for each amount in turn, then return the fraction of zeros in "
                                      "copy.weight")
    own = {}
    for (zeros, amounts), probe, got, want in zip(measured_cases, probes, answers, truth):
        if not _same_real(got, want):
            raise CheckFailed(f"sparsity_after on a {type(layers[zeros]).__name__} whose weight has {zeros:.0%} exact "
                              f"zeros already, amounts {list(amounts)}: should be {want:.10g}, got {_show(got)}: {why}")
        own[zeros, amounts] = _as_real(got)[0], probe.weight.numel()
    for (zeros, amounts), (value, numel) in own.items():
        got = _call("compound_sparsity", compound_sparsity, zeros, list(amounts))
        slack = (len(amounts) + 0.5) / numel  # each call rounds its count of weights to a whole number
        if not _same_real(got, value, tol=slack):
            why = _cause(got, [
                (_formula(amounts), "the weights that are already zero have the smallest |w|: l1_unstructured "
                                    "prunes them first"),
                (zeros + (1 - zeros) * _formula(amounts), "the existing zeros are not spared: they have the smallest "
                                                          "|w|, so the first call prunes them first"),
                (min(1.0, sum(amounts)), "each amount is a fraction of what the earlier calls left, not of the whole"),
                (amounts[-1] if amounts else -1.0, "every call counts, not only the last one")],
                "run your sparsity_after on layers with some zeros already and read the rule off the numbers")
            raise CheckFailed(f"compound_sparsity({zeros}, {list(amounts)}) should agree with what your sparsity_after "
                              f"measures on such a layer, {value:.6g} (within {slack:.2g}: each call rounds to whole "
                              f"weights), got {_show(got)}: {why}")
    _passed("sparsity_after and compound_sparsity", 2 * len(measured_cases))


def _apply_threshold(method, module, name, threshold):
    _call("ThresholdPruning.apply", method.apply, module, name, threshold=threshold)
    _expect(prune.is_pruned(module) and hasattr(module, f"{name}_orig") and hasattr(module, f"{name}_mask"),
            f"ThresholdPruning.apply must prune the way every method does ({name}_orig, {name}_mask and the "
            f"forward pre-hook): return super().apply(module, name, threshold=threshold)")
    problem = _mask_problem(getattr(module, f"{name}_mask"), getattr(module, name).shape, f"{name}_mask")
    _expect(problem is None, f"compute_mask must return a mask of the tensor's shape: {problem}")


def _kept(t):
    return (t != 0).int().tolist()


@_own_rng
def check_threshold_pruning(method):
    """A BasePruningMethod subclass; ``method.apply(module, name, threshold=t)`` prunes |w| < t, keeps |w| >= t,
    on any tensor (weights, biases, convolutions), composing with earlier pruning of the same tensor."""
    if not (isinstance(method, type) and issubclass(method, prune.BasePruningMethod)):
        raise TypeError("pass your class itself, a subclass of torch.nn.utils.prune.BasePruningMethod")
    w = torch.tensor([[0.5, -0.5, 0.1, -0.1, 0.3], [-0.3, 0.05, -0.7, 0.7, -0.05]])
    layer = nn.Linear(5, 2)
    with torch.no_grad():
        layer.weight.copy_(w)
    _apply_threshold(method, layer, "weight", 0.3)
    want = w.abs() >= 0.3
    if not torch.equal(layer.weight != 0, want):
        why = "keep exactly the entries with |w| >= threshold"
        if torch.equal(layer.weight != 0, w >= 0.3):
            why = "compare |w|: a negative entry counts by its magnitude"
        elif torch.equal(layer.weight != 0, w.abs() > 0.3):
            why = "an entry exactly at the threshold stays (|w| >= t)"
        raise CheckFailed(f"threshold 0.3 on {[[round(v, 4) for v in row] for row in w.tolist()]} must keep "
                          f"{_kept(want)}, kept {_kept(layer.weight)}: {why}")
    _apply_threshold(method, layer, "weight", 0.6)
    _expect(torch.equal(layer.weight != 0, w.abs() >= 0.6), "applied a second time (threshold 0.6) the masks must "
            f"combine: only |w| >= 0.6 survives; kept {_kept(layer.weight)}")
    layer = nn.Linear(5, 2)
    with torch.no_grad():
        layer.weight.copy_(w)
    earlier = torch.tensor([[0.0, 1, 1, 1, 1], [1, 1, 1, 0, 1]])  # earlier pruning removed two large weights
    prune.custom_from_mask(layer, "weight", earlier)
    _apply_threshold(method, layer, "weight", 0.3)
    _expect(torch.equal(layer.weight != 0, (w.abs() >= 0.3) & (earlier == 1)), "on top of an earlier pruning the "
            f"masks must combine: entries already pruned stay pruned; kept {_kept(layer.weight)}")
    bias = nn.Linear(3, 6)
    with torch.no_grad():
        bias.bias.copy_(torch.tensor([0.2, -0.25, 0.01, -0.3, 0.0, 1.0]))
    _apply_threshold(method, bias, "bias", 0.25)  # a 1-D tensor
    _expect(torch.equal(bias.bias != 0, torch.tensor([False, True, False, True, False, True])),
            f"on a bias [0.2, -0.25, 0.01, -0.3, 0.0, 1.0] (threshold 0.25) kept {_kept(bias.bias)}")
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3)
    orig = conv.weight.detach().clone()
    threshold = orig.abs().median().item()
    _apply_threshold(method, conv, "weight", threshold)  # a 4-D tensor
    _expect(torch.equal(conv.weight != 0, orig.abs() >= threshold), "on a convolution weight [3, 2, 3, 3] the mask "
            "must keep exactly the entries with |w| >= threshold")
    _passed("ThresholdPruning", 5)


def _strip_model():
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3), bn=nn.BatchNorm2d(4), flat=nn.Flatten(),
        head=nn.Sequential(OrderedDict(fc=nn.Linear(64, 6), scale=_Gain(6, high=1.5), out=nn.Linear(6, 5)))))
    model.head.out.register_buffer("row_mask", torch.ones(5))  # a buffer named …_mask that pruning never made
    return model


@_own_rng
def check_strip_pruning(strip_pruning):
    """strip_pruning(model): make every pruning in ``model`` permanent, in place, whatever the module (nested
    too) and the parameter names, and return that same model."""
    _callable(strip_pruning, "strip_pruning")
    torch.manual_seed(0)
    model = _strip_model().eval()
    prune.l1_unstructured(model.conv, "weight", amount=0.5)
    prune.l1_unstructured(model.conv, "bias", amount=0.5)
    prune.l1_unstructured(model.bn, "weight", amount=0.5)          # a BatchNorm
    prune.l1_unstructured(model.head.fc, "bias", amount=0.4)       # a nested module
    prune.random_unstructured(model.head.fc, "bias", amount=0.5)   # twice: a PruningContainer
    prune.l1_unstructured(model.head.scale, "gain", amount=0.5)    # neither weight nor bias
    x = torch.randn(2, 1, 6, 6)
    want = model(x).detach()
    untouched = model.head.out.weight.detach().clone()             # head.out is not pruned at all
    try:
        result = _call("strip_pruning", strip_pruning, model)
    except CheckFailed as failed:
        hint = ""
        if "deepcopy" in str(failed):
            hint = ("; a pruned model cannot be deep-copied (its weight is computed from weight_orig and weight_mask), "
                    "and the task is to strip this model in place: call prune.remove on its own modules and return it")
        elif "has to be pruned before" in str(failed):
            hint = ("; head.out has a buffer called row_mask that no pruning made: a tensor is pruned when its module "
                    "carries a pruning hook (a prune.BasePruningMethod in _forward_pre_hooks), not when some buffer's "
                    "name ends in _mask")
        raise CheckFailed(f"{failed}{hint}") from None
    _expect(result is model, "strip_pruning must change the model in place and return it (the same object), got "
            + (f"another {type(result).__name__} (a copy?)" if isinstance(result, nn.Module) else _show(result)))
    left = [n for n, _ in model.named_buffers() if n.endswith("_mask") and n != "head.out.row_mask"] + \
           [n for n, _ in model.named_parameters() if n.endswith("_orig")]
    _expect(not left, f"after strip_pruning these remain: {left} (every pruned tensor, whatever its name, in every "
                      f"module, nested ones too)")
    _expect(not any(isinstance(h, prune.BasePruningMethod) for m in model.modules()
                    for h in m._forward_pre_hooks.values()), "pruning hooks are left on the model")
    fresh = _strip_model()
    try:
        fresh.load_state_dict(model.state_dict())
    except RuntimeError as exc:
        raise CheckFailed(f"the stripped state_dict does not load into a fresh model: {exc}") from None
    missing = sorted(set(dict(fresh.named_parameters())) - set(dict(model.named_parameters())))
    _expect(not missing, f"after stripping, {missing} must be parameters again (trainable), as prune.remove leaves them")
    _expect(torch.allclose(model(x), want, atol=1e-6), "the stripped model must compute what the pruned one did "
            "(make the masks permanent with prune.remove, do not just drop them)")
    _expect(torch.equal(model.head.out.weight, untouched) and torch.equal(model.head.out.row_mask, torch.ones(5)),
            "a module that was not pruned must be left as it was (head.out, with its own buffer row_mask)")
    _passed("strip_pruning", 5)
