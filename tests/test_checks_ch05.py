"""Chapter 05 (structured pruning): its exercise checks accept right answers and reject known-wrong ones, with a message."""


from check_cases import chapter_tests
from torch import nn

from deeplsp_helpers.checks import ch05_structured


def keep_inputs(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=fc.bias is not None)
    new.weight.data = fc.weight.data[:, keep].clone()
    if fc.bias is not None:
        new.bias.data = fc.bias.data.clone()
    return new


def coupled_layers(model, example_inputs, layer_name):
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    group = graph.get_pruning_group(model.get_submodule(layer_name), tp.prune_conv_out_channels, idxs=[0])
    return {names[dep.target.module] for dep, _ in group if dep.target.module in names}


def speedup_at(dense, pruned, inputs):
    from deeplsp_helpers import latency

    return latency.compare_speedups({"d": dense, "p": pruned}, inputs, baseline="d", warmup=2, repeats=10)[1]["p"]


def _no_bias(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=False)
    new.weight.data = fc.weight.data[:, keep].clone()
    return new


def _bias_always(fc, keep):  # a bias even where fc has none (nn.Linear's default)
    new = nn.Linear(len(keep), fc.out_features)
    new.weight.data = fc.weight.data[:, keep].clone()
    if fc.bias is not None:
        new.bias.data = fc.bias.data.clone()
    return new


def _view_not_copy(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=fc.bias is not None)
    new.weight.data = fc.weight.data[:, keep].clone()
    if fc.bias is not None:
        new.bias.data = fc.bias.data  # shared with the old layer
    return new


RIGHT = {  # the notebook's answers
    "coupled_layers": coupled_layers,
    "keep_inputs": keep_inputs,
    "speedup_at": speedup_at,
}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "coupled_layers": [
        (lambda m, x, layer: {layer}, "missing"),
        (lambda m, x, layer: coupled_layers(m, x, layer) | {"_ElementWiseOp"}, "not modules"),
        (lambda m, x, layer: sorted(coupled_layers(m, x, layer)).__len__(), "set of module names"),
        (lambda m, x, layer: sorted(coupled_layers(m, x, layer)), "wrap it: set"),  # a list where a set is asked for
    ],
    "keep_inputs": [
        (_no_bias, "fc has a bias: the new layer needs it too"),
        (_bias_always, "fc has no bias"),
    ],
    "speedup_at": [
        (lambda d, p, x: speedup_at(p, d, x), "the other way round"),
        (lambda d, p, x: speedup_at(d, p, x).median, "latency.Speedup"),
        (lambda d, p, x: speedup_at(d, d, x), "should be about"),
    ],
}

WRONG_ONLY = {  # wrong answers the check must reject, whatever its message
    "keep_inputs": [_view_not_copy, lambda fc, keep: keep_inputs(fc, keep.sort().values)],
}
WRONG = {name: [answer for answer, _ in WRONG_TOLD.get(name, [])] + WRONG_ONLY.get(name, []) for name in RIGHT}

globals().update(chapter_tests(ch05_structured, RIGHT, WRONG, WRONG_TOLD))  # test_… functions for pytest
