"""Chapter 03, when to prune: iterative steps, keeping pruned weights at zero through real optimizer steps,
and an experiment: how far one cut without fine-tuning can go."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ._harness import (
    CheckFailed,
    _as_real,
    _batches,
    _call,
    _callable,
    _cause,
    _expect,
    _explain,
    _own_rng,
    _passed,
    _same_real,
    _show,
    _snapshot,
    _tiny_mlp,
    _unchanged,
)


@_own_rng
def check_iterative_steps(iterative_steps):
    """iterative_steps(final, n): a list of the n sparsities after each step, the same fraction of the
    remaining weights pruned at every step, the last one exactly final."""
    _callable(iterative_steps, "iterative_steps")
    cases = [(0.95, 4), (0.5, 1), (0.9, 3), (0.0, 2), (0.99, 5), (0.8, 2)]
    for final, n in cases:
        r = 1 - (1 - final) ** (1 / n)
        want = [1 - (1 - r) ** k for k in range(1, n + 1)]
        got = _call("iterative_steps", iterative_steps, final, n)
        where = f"iterative_steps({final}, {n})"
        _expect(isinstance(got, list), f"{where}: return a list of {n} numbers, got {_show(got)}")
        shown = "[" + ", ".join(_show(g) for g in got) + "]"
        _expect(len(got) == n, f"{where} should hold {n} sparsities (after step 1, …, after step {n}), got {len(got)}: "
                               f"{shown}" + (" (leave out the starting 0)" if len(got) == n + 1 else ""))
        if not all(_same_real(g, w) for g, w in zip(got, want)):
            values = [_as_real(g)[0] for g in got]
            why = "prune the same fraction r of the weights still left at every step, ending at final"
            if all(_same_real(g, final * k / n) for k, g in enumerate(got, 1)):
                why = "equal steps of final/n prune a growing fraction of what is left: prune the same fraction r " \
                      "of the remaining weights, 1 - (1 - r)^k after step k"
            elif all(_same_real(g, r) for g in got):
                why = "that is the rate r of every step; return the sparsity reached after each step"
            elif values[-1] is None or not _same_real(got[-1], final):
                why = "the last step must end exactly at final"
            raise CheckFailed(f"{where} should be [{', '.join(f'{w:.10g}' for w in want)}], got {shown}: {why}")
    _passed("iterative_steps", len(cases))


def _optimizer_holds(opt, tensor):
    return any(p is tensor for group in opt.param_groups for p in group["params"])


def _run_keep_zero(keep_zero, model, layer_name, mask, batches, opt):
    layer = model.get_submodule(layer_name)
    param, start = layer.weight, _snapshot(model)
    with torch.no_grad():
        layer.weight.mul_(mask)
    callback = _call("keep_zero", keep_zero, layer_name, mask.clone())
    _expect(callable(callback), f"keep_zero must return a callback, a function of the model; got {_show(callback)}")
    after_callback = None
    for step, (X, y) in enumerate(batches, 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        if after_callback is not None:
            moved = (layer.weight.detach() - after_callback).abs()[mask == 1]
            _expect(bool((moved > 0).any()), f"step {step}: after the callback, an optimizer step no longer moves "
                    f"the kept weights of {layer_name}: the layer has stopped training")
        state = _snapshot(model)
        try:
            _call("the callback", callback, model)
        except CheckFailed as failed:
            hint = ""
            if "IndexError" in str(failed) and "indices" in str(failed):
                hint = ("; the mask is a float 0/1 tensor (1 = keep), not an index: multiply by it in place "
                        "(weight.mul_(mask)) or index with a bool tensor (weight[mask == 0] = 0)")
            elif "AttributeError" in str(failed) and "." in layer_name:
                hint = (f"; the layer's name {layer_name!r} is dotted (a layer inside a block): "
                        f"model.get_submodule(layer_name) finds it, getattr(model, layer_name) does not")
            raise CheckFailed(f"{failed}{hint}") from None
        _expect(layer.weight is param and _optimizer_holds(opt, layer.weight),
                f"the callback replaced {layer_name}.weight with a new tensor: the optimizer still updates the old "
                f"one, so the layer silently stops training. Re-apply the mask in place, e.g. "
                f"`with torch.no_grad(): weight.mul_(mask)`")
        now = _snapshot(model)
        for key in state:
            if key != f"{layer_name}.weight":
                _expect(torch.equal(now[key], state[key]), f"the callback changed {key}: it must only zero the "
                        f"masked weights of {layer_name}")
        w = now[f"{layer_name}.weight"]
        _expect(torch.equal(w[mask == 1], state[f"{layer_name}.weight"][mask == 1]),
                f"the callback changed kept weights of {layer_name}: only the masked ones may be zeroed"
                + (" (it zeroed the kept ones: the mask is 1 = keep)" if bool((w[mask == 1] == 0).any()) else ""))
        _expect(bool((w[mask == 0] == 0).all()), f"step {step}: after the optimizer step and the callback, pruned "
                f"weights of {layer_name} are not zero (the mask must be re-applied after every step; momentum "
                f"keeps moving them)")
        after_callback = w
    others = [k for k in start if not k.startswith(f"{layer_name}.")]
    _expect(any(not torch.equal(start[k], _snapshot(model)[k]) for k in others), "the other layers must still train")
    return len(batches)


@_own_rng
def check_keep_zero(keep_zero):
    """keep_zero(layer_name, mask) -> callback(model) that re-applies the float 0/1 mask to the weight of
    ``model.get_submodule(layer_name)`` in place, after every optimizer step; the layer must keep training."""
    _callable(keep_zero, "keep_zero")
    gen = torch.Generator().manual_seed(5)
    model, batches = _tiny_mlp(4), _batches(n=6)
    mask = (torch.rand(model.out.weight.shape, generator=gen) > 0.5).float()
    # the gradient, carried on by momentum, moves every weight at every step: pruned ones come back unless re-zeroed
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    steps = _run_keep_zero(keep_zero, model, "out", mask, batches, opt)
    torch.manual_seed(6)
    nested = nn.Sequential(OrderedDict(block=nn.Sequential(nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 7)),
                                       act=nn.ReLU(), head=nn.Linear(7, 3)))
    mask = (torch.rand(nested.block[2].weight.shape, generator=gen) > 0.3).float()
    opt = torch.optim.Adam(nested.parameters(), lr=1e-2)
    steps += _run_keep_zero(keep_zero, nested, "block.2", mask, _batches(seed=2, n=4), opt)
    _passed("keep_zero", steps)


def _reference_accuracy(model, sparsity, X, y):
    from ..pruners import global_threshold_sparsities

    return _accuracy(_pruned_copy(model, global_threshold_sparsities(model, sparsity)), X, y)


def _one_shot_limit(accuracies, dense, drop):
    over = [s for s, a in accuracies.items() if dense - a > drop]
    return min(over) if over else None


@_own_rng
def check_one_shot_limit(accuracy_at, one_shot_limit):
    """accuracy_at(model, sparsity, X, y): accuracy (%) on (X, y), in eval mode, of a copy of model pruned once,
    globally by magnitude, to sparsity (model unchanged); one_shot_limit(accuracies, dense, drop): the smallest
    sparsity of {sparsity: accuracy} that loses more than drop points from dense, or None."""
    _callable(accuracy_at, "accuracy_at")
    _callable(one_shot_limit, "one_shot_limit")
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Dropout(0.5), nn.Linear(24, 24), nn.ReLU(),
                          nn.Linear(24, 4))
    X = torch.randn(80, 12)
    with torch.no_grad():
        for layer in (model[0], model[3], model[5]):
            layer.bias.zero_()         # no bias to fall back on: accuracy falls with sparsity (100 % to 11 %)
        y = model.eval()(X).argmax(1)  # the dense model is right on every sample (all four classes occur)
    model.train()                      # as a model in training is: dropout active until eval()
    before = _snapshot(model)
    measured = {}
    for s in (0.0, 0.5, 0.3, 0.7, 0.9, 0.6, 0.95):
        want = _reference_accuracy(model, s, X, y)
        got = _call("accuracy_at", accuracy_at, model, s, X, y)
        _expect(_unchanged(before, _snapshot(model)), f"accuracy_at(model, {s}, X, y) changed the model it was given: "
                "prune a copy (copy.deepcopy) and leave the model as it was")
        where = f"accuracy_at(model, {s}, X, y) on a hidden model and 80 samples"
        if not _same_real(got, want, tol=1e-4):
            why = _cause(got, [(want / 100, "give the accuracy in percent (0 to 100)"),
                               (_reference_accuracy(model, 0.0, X, y), "that is the dense model's accuracy: prune the "
                                "copy to the sparsity before evaluating")],
                         "prune a copy with prune_global (one global magnitude threshold over all Conv2d/Linear "
                         "weights) and evaluate it in eval mode (model.eval(): no dropout)")
            raise CheckFailed(f"{where} should be {want:.6g} %, got {_show(got)}: {why}")
        measured[s] = _as_real(got)[0]
    dense = measured.pop(0.0)
    cases = [({0.2: 79.0, 0.4: 78.0, 0.6: 77.5, 0.8: 40.0}, 80.0, 2.0),          # 0.4 loses exactly 2: not more
             ({0.9: 20.0, 0.3: 79.5, 0.7: 79.0, 0.5: 70.0}, 80.0, 2.0),          # unordered, and not monotone
             ({0.1: 83.0, 0.2: 79.0}, 80.0, 2.0),                                # gaining is not losing
             ({0.1: 80.0, 0.5: 79.0, 0.9: 78.5}, 80.0, 2.0),                     # nothing loses more than 2
             (measured, dense, 20.0), (measured, dense, 35.0), (measured, dense, 50.0), (measured, dense, 100.0)]
    answers = [_call("one_shot_limit", one_shot_limit, dict(accuracies), base, drop) for accuracies, base, drop in cases]
    variants = [([wrong(*case) for case in cases], message) for wrong, message in (
        (lambda acc, base, drop: min((s for s, a in acc.items() if base - a >= drop), default=None),
         "a loss of exactly drop points is not more than drop"),
        (lambda acc, base, drop: next((s for s, a in acc.items() if base - a > drop), None),
         "the sparsities are not in order: take the smallest one that loses too much"),
        (lambda acc, base, drop: max((s for s, a in acc.items() if base - a <= drop), default=None),
         "that is the largest sparsity that stays within the drop; the question is the smallest that loses more"),
        (lambda acc, base, drop: min((s for s, a in acc.items() if abs(base - a) > drop), default=None),
         "a model more accurate than dense has lost nothing"),
        (lambda acc, base, drop: _one_shot_limit(acc, base, drop) or max(acc),
         "return None when no sparsity loses more than drop"))]
    why = _explain(answers, variants, "the smallest sparsity whose accuracy is more than drop points below dense, "
                                      "or None")
    for (accuracies, base, drop), got in zip(cases, answers):
        want = _one_shot_limit(accuracies, base, drop)
        if not (got is None if want is None else _same_real(got, want)):
            shown = "{" + ", ".join(f"{s}: {a:.6g}" for s, a in accuracies.items()) + "}"
            source = " (your own accuracy_at measurements on the hidden model)" if accuracies is measured else ""
            raise CheckFailed(f"one_shot_limit({shown}, dense={base:.6g}, drop={drop:g}){source} should be {want}, "
                              f"got {_show(got)}: {why}")
    _passed("accuracy_at and one_shot_limit", 7 + len(cases))


# ---- added for issue #25: the design exercise of MIT's pruning lab: per-layer sparsities chosen from a sensitivity ----
# ---- scan, measured against a size target and an accuracy floor (any plan that meets both passes)                ----

_PLAN_TASK_KEYS = ("model", "X", "y", "max_nonzero", "floor")


def _plan_task(task):
    """The exercise's setting, ``task()``: ``{"model", "X", "y", "max_nonzero", "floor"}``."""
    if not callable(task):
        raise TypeError("pass the exercise's setting as a function of no arguments (lambda: PLAN_TASK), got "
                        f"{type(task).__name__}")
    try:
        setting = task()
    except NotImplementedError:
        raise CheckFailed("the setting of this exercise is not written yet") from None
    except Exception as exc:  # e.g. a NameError: the cell that defines the setting has not run
        raise CheckFailed(f"the exercise's setting above has not run ({type(exc).__name__}: {exc})") from None
    if not isinstance(setting, dict) or sorted(setting) != sorted(_PLAN_TASK_KEYS):
        raise TypeError(f"the setting must be a dict with the keys {list(_PLAN_TASK_KEYS)}, got {_show(setting)}")
    return setting


def _accuracy(model, X, y, batch=1000):
    with torch.no_grad():
        correct = sum(int((model(X[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return 100.0 * correct / len(y)


def _pruned_copy(model, plan):
    import copy

    from ..pruners import FineGrainedPruner

    probe = copy.deepcopy(model).eval()
    if any(s > 0 for s in plan.values()):
        FineGrainedPruner(probe, plan).apply(probe)
    return probe


@_own_rng
def check_sparsity_plan(sparsities, task):
    """sparsities: ``{layer name: sparsity}`` chosen by the learner (a layer left out stays dense); task: a function
    of no arguments returning the setting ``{"model", "X", "y", "max_nonzero", "floor"}`` (called only once an answer
    is given, so the check cell can name what the chapter computed).

    Any plan passes that (1) names prunable layers of the model (Conv2d/Linear) with sparsities between 0 and 1,
    (2) pruned once by magnitude within each layer (``pruners.FineGrainedPruner``) leaves at most ``max_nonzero``
    non-zero Conv2d/Linear weights (biases are not counted), and (3) reaches at least ``floor`` % accuracy on the
    held-out images ``(X, y)``, without fine-tuning. The plan is measured, not compared with one answer.
    """
    from ..criteria import prunable_layers

    name = "the sparsity plan"
    if sparsities is None or sparsities is Ellipsis:
        raise CheckFailed(f"{name} is not written yet: set answer_sparsities to a dict {{layer name: sparsity}}, read "
                          f"off the sensitivity scan above")
    if callable(sparsities):
        sparsities = _call(name, sparsities)
    setting = _plan_task(task)
    model, X, y = setting["model"], setting["X"], setting["y"]
    max_nonzero, floor = setting["max_nonzero"], setting["floor"]
    layers = prunable_layers(model)
    _expect(isinstance(sparsities, dict), f"{name} should be a dict {{layer name: sparsity}}, got {_show(sparsities)}")
    _expect(sparsities, f"{name} is empty: give a sparsity to the layers you prune (a layer left out stays dense)")
    plan = {}
    for layer, s in sparsities.items():
        if layer not in layers:
            hint = ""
            if isinstance(layer, str) and layer.rsplit(".", 1)[0] in layers:
                hint = f": name the layer ({layer.rsplit('.', 1)[0]!r}), not its tensor"
            raise CheckFailed(f"{name}: {layer!r} is not a prunable layer of the model; its Conv2d/Linear layers are "
                              f"{list(layers)}{hint}")
        value, _ = _as_real(s)
        _expect(value is not None, f"{name}: the sparsity of {layer!r} should be a number, got {_show(s)}")
        _expect(0.0 <= value <= 1.0, f"{name}: the sparsity of {layer!r} is {value:g}; a sparsity is the fraction of "
                                     "the layer's weights set to zero, between 0 and 1"
                                     + (" (not a percentage)" if 1 < value <= 100 else ""))
        plan[layer] = value
    probe = _pruned_copy(model, plan)
    total = sum(m.weight.numel() for m in layers.values())
    nonzero = sum(int(m.weight.count_nonzero()) for m in prunable_layers(probe).values())
    if nonzero > max_nonzero:
        largest = sorted(layers, key=lambda n: -layers[n].weight.numel())[:2]
        raise CheckFailed(f"{name} leaves {nonzero:,} of the {total:,} weights non-zero ({1 - nonzero / total:.1%} "
                          f"sparse); the target is at most {max_nonzero:,} ({1 - max_nonzero / total:.1%} sparse): "
                          f"prune more, where the scan says it costs least ({' and '.join(largest)} hold the most "
                          f"weights)")
    accuracy = _accuracy(probe, X, y)
    if accuracy < floor:
        alone = {n: _accuracy(_pruned_copy(model, {n: s}), X, y) for n, s in plan.items() if s > 0}
        dense = _accuracy(_pruned_copy(model, {}), X, y)
        worst = max(alone, key=lambda n: dense - alone[n]) if alone else None
        why = (f"; pruned alone to {plan[worst]:g}, {worst} already costs {dense - alone[worst]:.1f} points: spare the "
               "layers the scan shows to be sensitive and take the zeros from the ones it shows to be robust"
               if worst else "")
        raise CheckFailed(f"{name} meets the size target ({nonzero:,} non-zero weights, at most {max_nonzero:,}), "
                          f"but reaches {accuracy:.2f} % on the held-out images, below the floor of {floor:g} %{why}")
    print(f"sparsity plan: all 3 hidden cases passed (valid layers and sparsities; {nonzero:,} non-zero weights, at "
          f"most {max_nonzero:,}; {accuracy:.2f} % on the {len(y):,} held-out images, floor {floor:g} %)")
