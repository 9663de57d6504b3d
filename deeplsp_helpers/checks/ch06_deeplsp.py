"""Chapter 06, DeepLSP: dead channels, global sparsity from per-layer ratios, a measured speed-up."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._harness import _call, _callable, _compare_numbers, _expect, _number, _own_rng, _passed


@_own_rng
def check_is_dead(is_dead):
    """is_dead(conv, bn, c): does output channel c of conv followed by bn contribute exactly nothing?"""
    _callable(is_dead, "is_dead")
    conv, bn = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, 0.4, 0.3, 0.0, 0.0, 0.7]))
        bn.running_var.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0, 3.0]))
        bn.weight.copy_(torch.tensor([1.0, 0.0, 1.0, 2.0, 3.0, 0.0]))
        bn.bias.copy_(torch.tensor([0.2, 0.0, 0.1, 0.0, 0.0, 0.0]))
        conv.bias.zero_()
        for c in (0, 1, 3, 4, 5):
            conv.weight[c] = 0
        conv.bias[3] = 0.25
    want = {0: False,  # zero filter, but BN shifts it: a constant channel
            1: True,   # zero filter, gamma = beta = 0
            2: False,  # a real filter
            3: False,  # zero filter and BN maps 0 to 0, but the conv bias is not 0
            4: True,   # zero filter, mean 0 and beta 0: BN maps 0 to 0 although gamma != 0
            5: True}   # zero filter, gamma = 0 and beta = 0 with a non-zero running mean
    for c, dead in want.items():
        got = _call("is_dead", is_dead, conv, bn, c)
        _expect(bool(got) == dead and isinstance(_number(got), bool),
                f"channel {c} should be {'dead' if dead else 'alive'} (filter zero: {bool((conv.weight[c] == 0).all())},"
                f" conv bias {conv.bias[c].item()}, BN output for a zero input "
                f"{(bn.bias[c] - bn.weight[c] * bn.running_mean[c] / (bn.running_var[c] + bn.eps).sqrt()).item():.3f}),"
                f" got {got!r} (a bool is expected)")
    _passed("is_dead", len(want))


@_own_rng
def check_global_sparsity(global_sparsity):
    """global_sparsity(ratios, sizes): parameter-weighted sparsity of per-layer ratios."""
    _callable(global_sparsity, "global_sparsity")
    cases = [({"a": 0.9, "b": 0.1}, {"a": 1000, "b": 10}), ({"a": 0.5}, {"a": 7}),
             ({"x": 0.0, "y": 0.99, "z": 0.5}, {"x": 50, "y": 5, "z": 500, "unused": 10_000})]
    _compare_numbers("global_sparsity", global_sparsity, cases,
                     lambda ratios, sizes: sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes[k] for k in ratios),
                     "weighted by the sizes of the layers in ratios")


@_own_rng
def check_speedup(speedup):
    """speedup(baseline, candidate, inputs): how many times faster candidate runs, measured."""
    _callable(speedup, "speedup")
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512))
    small = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 512))  # 32x fewer MACs
    x = torch.randn(64, 512)
    faster = _number(_call("speedup", speedup, big, small, x))
    slower = _number(_call("speedup", speedup, small, big, x))
    same = _number(_call("speedup", speedup, big, copy.deepcopy(big), x))
    _expect(isinstance(faster, float) and faster > 3, f"a model with 32x fewer MACs should measure > 3x faster "
                                                      f"than the baseline, got {faster!r}")
    _expect(isinstance(slower, float) and slower < 1 / 3, f"the other way round it should be < 0.33x, got {slower!r}")
    _expect(0.6 < same < 1.6, f"a model against its copy should be close to 1x, got {same!r}")
    _passed("speedup", 3)
