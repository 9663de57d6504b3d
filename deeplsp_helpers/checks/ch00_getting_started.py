"""Chapter 00, getting started: density, the MACs of a convolution, the size of a model."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._harness import _call, _callable, _close, _expect, _number, _own_rng, _passed, _tiny_mlp


@_own_rng
def check_density(density):
    """density(model): fraction of non-zero entries over all parameters (weights and biases)."""
    _callable(density, "density")
    model = _tiny_mlp()
    cases = [(copy.deepcopy(model), 1.0)]
    with torch.no_grad():
        model.hidden.weight[:, :6] = 0
        model.out.bias[0] = 0
    total = sum(p.numel() for p in model.parameters())
    cases.append((model, (total - 7 * 6 - 1) / total))
    for m, want in cases:
        got = _number(_call("density", density, m))
        _expect(_close(got, want), f"density of a model with {total - round(want * total)} zeros in {total} "
                                   f"parameters (biases count too) should be {want:.6f}, got {got!r}")
    _passed("density", len(cases))


@_own_rng
def check_conv_macs_formula(conv_macs):
    """conv_macs(c_in, c_out, k, h_out, w_out): MACs per sample of a k×k convolution."""
    from ..metrics import count_macs

    _callable(conv_macs, "conv_macs")
    cases = [(6, 16, 5, 8, 8), (3, 7, 3, 10, 4), (1, 2, 1, 1, 1), (4, 4, 2, 3, 9)]
    for c_in, c_out, k, h, w in cases:
        want = count_macs(nn.Conv2d(c_in, c_out, k), (c_in, h + k - 1, w + k - 1))
        got = _number(_call("conv_macs", conv_macs, c_in, c_out, k, h, w))
        _expect(got == want, f"conv_macs{(c_in, c_out, k, h, w)} (output {h}×{w}, not square) should be "
                             f"{want:,} (torchprofile agrees), got {got!r}")
    _passed("conv_macs", len(cases))


@_own_rng
def check_size_ratio(size_ratio):
    """size_ratio(model, data_width): how many times smaller the model is at data_width bits than at 32."""
    _callable(size_ratio, "size_ratio")
    model = _tiny_mlp()
    with torch.no_grad():
        model.hidden.weight[:3] = 0  # zeros are stored like any other number in a dense tensor
    for width in (8, 16, 4, 32):
        got = _number(_call("size_ratio", size_ratio, model, width))
        _expect(_close(got, 32 / width), f"size_ratio(model, {width}) should be {32 / width:g} (dense storage: "
                                         f"zeros take their bits too), got {got!r}")
    _passed("size_ratio", 4)
