"""Chapter 03 (pruning timing): its exercise checks accept right answers and reject known-wrong ones, with a message."""

import copy
import functools
from collections import OrderedDict

import numpy as np
import torch
from check_cases import chapter_tests
from torch import nn
from torch.nn.utils import prune

from deeplsp_helpers import pruners
from deeplsp_helpers.checks import ch03_timing


def iterative_steps(final, n):
    r = 1 - (1 - final) ** (1 / n)
    return [1 - (1 - r) ** k for k in range(1, n + 1)]


def keep_zero(layer_name, mask):
    def callback(model):
        with torch.no_grad():
            model.get_submodule(layer_name).weight.mul_(mask)
    return callback


def accuracy_at(model, sparsity, X, y):
    probe = copy.deepcopy(model).eval()
    pruners.FineGrainedPruner(probe, pruners.global_threshold_sparsities(probe, sparsity)).apply(probe)
    with torch.no_grad():
        return 100.0 * (probe(X).argmax(1) == y).float().mean().item()


def one_shot_limit(accuracies, dense, drop):
    over = [s for s in sorted(accuracies) if dense - accuracies[s] > drop]
    return over[0] if over else None


def _accuracy_torch_prune(model, sparsity, X, y):  # the same global magnitude cut through torch.nn.utils.prune
    probe = copy.deepcopy(model).eval()
    layers = [(m, "weight") for m in probe.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
    with torch.no_grad():
        return 100 * (probe(X).argmax(1) == y).float().mean()  # a float32 tensor


def _accuracy_in_place(model, sparsity, X, y):
    pruners.FineGrainedPruner(model, pruners.global_threshold_sparsities(model, sparsity)).apply(model)
    with torch.no_grad():
        return 100.0 * (model.eval()(X).argmax(1) == y).float().mean().item()


def _accuracy_train_mode(model, sparsity, X, y):
    probe = copy.deepcopy(model)
    pruners.FineGrainedPruner(probe, pruners.global_threshold_sparsities(probe, sparsity)).apply(probe)
    with torch.no_grad():
        return 100.0 * (probe(X).argmax(1) == y).float().mean().item()


def _limit_at_least(accuracies, dense, drop):
    over = [s for s in sorted(accuracies) if dense - accuracies[s] >= drop]
    return over[0] if over else None


def _limit_in_dict_order(accuracies, dense, drop):
    return next((s for s, a in accuracies.items() if dense - a > drop), None)


def _largest_safe(accuracies, dense, drop):
    return max((s for s, a in accuracies.items() if dense - a <= drop), default=None)


def _limit_abs(accuracies, dense, drop):
    return min((s for s, a in accuracies.items() if abs(dense - a) > drop), default=None)


def _keep_zero_data(name, mask):
    def callback(model):
        w = model.get_submodule(name).weight
        w.data = w.data * mask  # a new tensor, but inside the same Parameter: the optimizer still holds it
    return callback


def _keep_zero_index(name, mask):
    def callback(model):
        with torch.no_grad():
            model.get_submodule(name).weight[mask == 0] = 0
    return callback


def _keep_zero_new_parameter(name, mask):
    def callback(model):
        layer = model.get_submodule(name)
        layer.weight = nn.Parameter(layer.weight.detach() * mask)  # the optimizer keeps the old tensor
    return callback


def _keep_zero_once(name, mask):
    done = []

    def callback(model):
        if not done:
            with torch.no_grad():
                model.get_submodule(name).weight.mul_(mask)
            done.append(True)
    return callback


def _keep_zero_float_index(name, mask):
    def callback(model):
        with torch.no_grad():
            model.get_submodule(name).weight[1 - mask] = 0  # the float mask used as an index
    return callback


def _keep_zero_getattr(name, mask):
    def callback(model):
        with torch.no_grad():
            getattr(model, name).weight.mul_(mask)  # no dotted names
    return callback


@functools.lru_cache(maxsize=1)
def _plan_task():
    """A small trained network with layers of different sensitivity, and held-out points: uniform and global
    magnitude pruning to 75 % miss the 80 % floor (61 % and 78 %), a plan that spares the sensitive layers meets it."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 10, generator=gen) * 1.2
    y = torch.randint(0, 6, (1200,), generator=gen)
    X = centres[y] + torch.randn(1200, 10, generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(inp=nn.Linear(10, 16), act=nn.ReLU(), hidden=nn.Linear(16, 96), act2=nn.ReLU(),
                                      wide=nn.Linear(96, 96), act3=nn.ReLU(), out=nn.Linear(96, 6)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[:600]), y[:600]).backward()
        opt.step()
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return {"model": model.requires_grad_(False), "X": X[600:], "y": y[600:], "max_nonzero": int(0.25 * weights),
            "floor": 80.0}


def _plan(**sparsities):
    return (sparsities, _plan_task)


def _global_plan(target):
    return (lambda: pruners.global_threshold_sparsities(_plan_task()["model"], target)), _plan_task


RIGHT_ALSO = {  # the first answer is the notebook's; each one must pass
    "iterative_steps": [iterative_steps,
                        lambda final, n: [torch.tensor(s, dtype=torch.float32) for s in iterative_steps(final, n)]],
    "keep_zero": [keep_zero, _keep_zero_data, _keep_zero_index],
    "one_shot_limit": [(accuracy_at, one_shot_limit), (_accuracy_torch_prune, one_shot_limit)],
    "sparsity_plan": [_plan(inp=0.0, hidden=0.7, wide=0.8, out=0.5),
                      _plan(hidden=0.7, wide=0.8, out=0.3),                       # a layer left out stays dense
                      _plan(hidden=np.float32(0.7), wide=torch.tensor(0.8), out=np.float64(0.7)),  # other numbers
                      _plan(inp=0, hidden=0.7, wide=0.8, out=0.5)],               # an int 0 is a sparsity too
}
RIGHT = {name: answers[0] for name, answers in RIGHT_ALSO.items()}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "iterative_steps": [
        (lambda final, n: [final * k / n for k in range(1, n + 1)], "remaining weights"),
        (lambda final, n: [1 - (1 - final) ** (1 / n)] * n, "the rate r"),
        (lambda final, n: [0.0] + iterative_steps(final, n), "leave out the starting 0"),
        (lambda final, n: (s for s in iterative_steps(final, n)), "return a list"),
    ],
    "keep_zero": [
        (lambda name, mask: (lambda model: None), "are not zero"),
        (lambda name, mask: (lambda model: model.get_submodule(name).weight.data.mul_(1 - mask)), "the mask is 1 = keep"),
        (lambda name, mask: (lambda model: [p.data.mul_(0) for p in model.get_submodule(name).parameters()]),
         "changed out.bias"),
        (_keep_zero_new_parameter, "optimizer still updates the old one"),
        (_keep_zero_once, "after every step"),
        (_keep_zero_getattr, "AttributeError.*get_submodule"),
        (_keep_zero_float_index, "IndexError.*not an index"),
        (lambda name, mask: 0, "must return a callback"),
    ],
    "one_shot_limit": [
        ((_accuracy_in_place, one_shot_limit), "changed the model"),
        ((_accuracy_train_mode, one_shot_limit), "eval mode"),
        ((lambda *args: accuracy_at(*args) / 100, one_shot_limit), "percent"),
        ((lambda model, s, X, y: accuracy_at(model, 0.0, X, y), one_shot_limit), "dense model's accuracy"),
        ((accuracy_at, _limit_at_least), "exactly drop points is not more"),
        ((accuracy_at, _limit_in_dict_order), "not in order"),
        ((accuracy_at, _largest_safe), "largest sparsity that stays within"),
        ((accuracy_at, _limit_abs), "more accurate than dense"),
        ((accuracy_at, lambda acc, dense, drop: one_shot_limit(acc, dense, drop) or max(acc)), "return None"),
    ],
    "sparsity_plan": [
        (_plan(inp=0.75, hidden=0.75, wide=0.75, out=0.75), "below the floor"),   # uniform
        (_global_plan(0.75), "below the floor"),                                   # global magnitude
        (_plan(inp=0.9, hidden=0.7, wide=0.8, out=0.5), "inp already costs"),      # the sensitive layer pruned
        (_plan(hidden=0.5, wide=0.7), "prune more"),                               # too large
        (_plan(inp=0.0, hidden=0.7, wide=0.8, out=0.5, fc4=0.5), "not a prunable layer"),
        (({"hidden.weight": 0.7, "wide.weight": 0.8}, _plan_task), "name the layer"),
        (_plan(hidden=70, wide=80, out=50), "not a percentage"),
        (([0.0, 0.7, 0.8, 0.5], _plan_task), "should be a dict"),
        (_plan(hidden="0.7", wide=0.8), "should be a number"),
    ],
}

WRONG = {name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()}

# test_… functions for pytest
globals().update(chapter_tests(ch03_timing, RIGHT, WRONG, WRONG_TOLD, RIGHT_ALSO, designs={"sparsity_plan"}))
