"""Chapter 06, DeepLSP: dead channels, global sparsity from per-layer ratios, a measured speed-up."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._harness import _as_real, _call, _callable, _compare_reals, _expect, _own_rng, _passed, _show


def _bn_of_zero(bn, c):
    return (bn.bias[c] - bn.weight[c] * bn.running_mean[c] / (bn.running_var[c] + bn.eps).sqrt()).item()


@_own_rng
def check_is_dead(is_dead):
    """is_dead(conv, bn, c): does output channel c of conv followed by bn (in eval mode) output exactly zero for
    every input? A Python bool; no ReLU is assumed after the BN."""
    _callable(is_dead, "is_dead")
    conv, bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, 0.4, 0.3, 0.0, 0.0, 0.7, 0.4, 0.0]))
        bn.running_var.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0, 3.0, 1.0, 1.0]))
        bn.weight.copy_(torch.tensor([1.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.2, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]))
        conv.bias.zero_()
        for c in (0, 1, 3, 4, 5, 6, 7):
            conv.weight[c] = 0
        conv.bias[3] = 0.25
        conv.weight[7, 0, 0, 0], conv.weight[7, 1, 1, 1] = 0.5, -0.5  # sums to zero, but is not zero
    bn.eval()
    want = {0: (False, "a zero filter, but BN turns 0 into a constant (-0.3): a constant channel is not dead"),
            1: (True, "zero filter, gamma = beta = 0"),
            2: (False, "a real filter"),
            3: (False, "zero filter and BN maps 0 to 0, but the conv bias (0.25) makes the channel a constant"),
            4: (True, "zero filter, running mean 0 and beta 0: BN maps 0 to 0 although gamma != 0"),
            5: (True, "zero filter, gamma = 0 and beta = 0: BN maps 0 to 0 whatever the running mean"),
            6: (False, "zero filter and beta = 0, but BN subtracts the running mean 0.4 first: a constant -0.4"),
            7: (False, "its filter sums to zero but is not zero: it responds to its input")}
    for c, (dead, reason) in want.items():
        got = _call("is_dead", is_dead, conv, bn, c)
        _expect(isinstance(got, bool), f"is_dead(conv, bn, {c}) must return a Python bool (True/False), got "
                                       f"{_show(got)}" + (" (wrap it: bool(...))" if isinstance(got, torch.Tensor) else ""))
        _expect(got == dead, f"channel {c} should be {'dead' if dead else 'alive'} ({reason}; BN output for a zero "
                             f"input {_bn_of_zero(bn, c):.6g}), got {got}")
    bare, bn2 = nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3).eval()  # a convolution without a bias
    with torch.no_grad():
        bare.weight[1] = 0
        bn2.running_mean.fill_(0.0)
    for c, dead in ((0, False), (1, True)):
        got = _call("is_dead", is_dead, bare, bn2, c)
        _expect(got is dead, f"on a convolution without a bias (conv.bias is None), channel {c} should be "
                             f"{'dead' if dead else 'alive'}, got {_show(got)}")
    _passed("is_dead", len(want) + 2)


def _global(ratios, sizes):
    return sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes[k] for k in ratios)


@_own_rng
def check_global_sparsity(global_sparsity):
    """global_sparsity(ratios, sizes): parameter-weighted sparsity of per-layer ratios (a number; a float32 tensor
    is fine), counting only the layers in ratios."""
    _callable(global_sparsity, "global_sparsity")
    cases = [({"a": 0.9, "b": 0.1}, {"a": 1000, "b": 10}), ({"a": 0.5}, {"a": 7}),
             ({"x": 0.0, "y": 0.99, "z": 0.5}, {"x": 50, "y": 5, "z": 500, "unused": 10_000}),
             ({"p": 0.2, "q": 0.8}, {"q": 30, "p": 970}),          # sizes listed in another order
             ({"c1": 0.7, "c2": 0.3, "fc": 0.95}, {"c1": 150, "c2": 2400, "fc": 30_720})]

    def causes(ratios, sizes):
        return [(sum(ratios.values()) / len(ratios), "weight each layer's ratio by its size (parameter count)"),
                (sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes.values()),
                 "divide by the sizes of the layers in ratios only"),
                (sum(r * s for r, s in zip(ratios.values(), sizes.values())) / sum(sizes[k] for k in ratios),
                 "match ratios and sizes by layer name, not by position")]

    _compare_reals("global_sparsity", global_sparsity, cases, _global, causes,
                   "the sum of ratio × size over the layers in ratios, divided by the sum of their sizes")


def _macs_disagree():
    """Two models whose MAC ratio and latency ratio disagree: ``deep`` does 3.6x fewer MACs than ``wide``, but
    makes 42 calls where ``wide`` makes one, so at batch size 1 it is many times slower."""
    wide = nn.Sequential(nn.Linear(256, 256))
    deep = nn.Sequential(nn.Linear(256, 16), *[nn.Linear(16, 16) for _ in range(40)], nn.Linear(16, 256))
    return wide, deep


@_own_rng
def check_speedup(speedup):
    """speedup(baseline, candidate, inputs): how many times faster candidate runs, measured (a number)."""
    _callable(speedup, "speedup")
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512))
    small = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 512))  # 32x fewer MACs, and faster
    x = torch.randn(64, 512)
    wide, deep = _macs_disagree()
    x1 = torch.randn(1, 256)

    def measure(a, b, inputs):
        got = _call("speedup", speedup, a, b, inputs)
        _expect(_as_real(got)[0] is not None and _as_real(got)[0] > 0,
                f"speedup must return a positive number (baseline time / candidate time), got {_show(got)}")
        return _as_real(got)[0]

    faster, slower, same = measure(big, small, x), measure(small, big, x), measure(big, copy.deepcopy(big), x)
    _expect(faster > 3, f"a model with 32x fewer MACs that runs much faster should measure > 3x faster than the "
                        f"baseline, got {faster:.4g}" + (" (upside down? baseline time / candidate time)"
                                                         if faster < 1 else ""))
    _expect(slower < 1 / 3, f"the other way round it should be < 0.33x, got {slower:.4g}")
    _expect(0.6 < same < 1.6, f"a model against its copy should be close to 1x, got {same:.4g}")
    fewer_macs_slower, more_macs_faster = measure(wide, deep, x1), measure(deep, wide, x1)
    _expect(fewer_macs_slower < 0.5 and more_macs_faster > 2,
            f"a 42-layer model with 3.6x fewer MACs than a 1-layer one runs several times slower at batch size 1: "
            f"speedup(one layer, 42 layers) should be < 0.5, got {fewer_macs_slower:.4g}, and the other way > 2, got "
            f"{more_macs_faster:.4g}. " + ("That is the MAC ratio: time the models (one interleaved "
                                           "latency.compare_latency run, medians) instead of counting"
                                           if abs(fewer_macs_slower - 65536 / 18432) < 0.05 else
                                           "Time both models in one interleaved run and divide the medians"))
    _passed("speedup", 5)
