"""Chapter 05, structured pruning: filter norms, narrowing a Linear's inputs, the MACs of any convolution."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._harness import _call, _callable, _expect, _number, _own_rng, _passed


def _convs(seed=0):
    torch.manual_seed(seed)
    convs = [nn.Conv2d(3, 5, (1, 3)), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(6, 8, 1, stride=2),
             nn.Conv2d(4, 6, (3, 2), stride=(2, 1), groups=2, padding=1)]
    with torch.no_grad():
        for c in convs:
            c.weight.sub_(0.5)  # plenty of negative weights
    return convs


@_own_rng
def check_filter_l1(filter_l1):
    """filter_l1(conv): L1 norm of each output filter, shape [C_out]."""
    _callable(filter_l1, "filter_l1")
    for conv in _convs():
        want = conv.weight.detach().abs().flatten(1).sum(1)
        got = _call("filter_l1", filter_l1, conv)
        _expect(isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, atol=1e-6),
                f"filter_l1 on {conv} should give {[round(v, 3) for v in want.tolist()]} (sum of |w| over each "
                "output filter)")
    _passed("filter_l1", 4)


@_own_rng
def check_keep_inputs(keep_inputs):
    """keep_inputs(fc, keep): a new Linear reading only the input features ``keep`` of fc."""
    _callable(keep_inputs, "keep_inputs")
    torch.manual_seed(0)
    cases = [(nn.Linear(7, 3), torch.tensor([0, 2, 5])), (nn.Linear(6, 4, bias=False), torch.tensor([5, 1])),
             (nn.Linear(5, 5), torch.tensor([4, 0, 3, 1]))]
    for fc, keep in cases:
        before = copy.deepcopy(fc.state_dict())
        new = _call("keep_inputs", keep_inputs, fc, keep)
        _expect(isinstance(new, nn.Linear) and new.in_features == len(keep) and new.out_features == fc.out_features,
                f"keep_inputs({fc}, {keep.tolist()}) must return a Linear({len(keep)}, {fc.out_features})")
        x = torch.randn(4, fc.in_features)
        zeroed = torch.zeros_like(x)
        zeroed[:, keep] = x[:, keep]
        _expect(torch.allclose(new(x[:, keep]), fc(zeroed), atol=1e-6),
                f"keep_inputs({fc}, {keep.tolist()}) does not compute what fc computes on those inputs "
                "(columns of the weight, in the order of keep, and the bias)")
        with torch.no_grad():
            for p in new.parameters():
                p.add_(1.0)
        _expect(all(torch.equal(v, fc.state_dict()[k]) for k, v in before.items()),
                "changing the new layer changed the old one: copy the weights (clone), do not share them")
    _passed("keep_inputs", len(cases))


@_own_rng
def check_conv_macs(conv_macs):
    """conv_macs(conv, out): MACs per sample from the layer and its output [1, C_out, H_out, W_out]."""
    from ..metrics import count_macs

    _callable(conv_macs, "conv_macs")
    for conv in _convs():
        x = torch.randn(1, conv.in_channels, 9, 7)
        with torch.no_grad():
            out = conv(x)
        want, got = count_macs(conv, x), _number(_call("conv_macs", conv_macs, conv, out))
        _expect(got == want, f"conv_macs on {conv} with a 9×7 input should be {want:,} (torchprofile), got {got!r}")
    _passed("conv_macs", 4)
