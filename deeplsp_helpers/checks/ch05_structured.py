"""Chapter 05, structured pruning: coupled layers, narrowing a Linear's inputs, a speed-up measured."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ._harness import _Busy, _call, _callable, _expect, _own_rng, _passed


class _Residual(nn.Module):
    """stem -> (conv_a -> bn_a -> relu -> conv_b -> bn_b) + stem -> head: the stem's channels are coupled
    with conv_b's and bn_b's through the sum."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv_a, self.bn_a = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv_b, self.bn_b = nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        s = self.stem(x)
        return self.head(torch.relu(self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(s))))) + s))


class _Depthwise(nn.Module):
    """pointwise -> bn -> depthwise (groups = channels) -> bn -> pointwise."""

    def __init__(self):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(1, 6, 1), nn.BatchNorm2d(6)
        self.depthwise, self.bn2 = nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.BatchNorm2d(6)
        self.project = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.project(torch.relu(self.bn2(self.depthwise(torch.relu(self.bn1(self.expand(x)))))))


@_own_rng
def check_coupled_layers(coupled_layers):
    """coupled_layers(model, example_inputs, layer_name): the set of names of the modules whose parameters or
    buffers change when output channels of ``layer_name`` are removed (the layer itself included)."""
    _callable(coupled_layers, "coupled_layers")
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8)
    cases = [(_Residual(), "stem", {"stem", "conv_a", "conv_b", "bn_b", "head"}),
             (_Residual(), "conv_a", {"conv_a", "bn_a", "conv_b"}),
             (_Depthwise(), "expand", {"expand", "bn1", "depthwise", "bn2", "project"})]
    for model, layer, want in cases:
        got = _call("coupled_layers", coupled_layers, model, x, layer)
        _expect(isinstance(got, (set, frozenset)) and all(isinstance(n, str) for n in got),
                f"coupled_layers should return a set of module names (str), got {type(got).__name__}"
                + (" (wrap it: set(...))" if isinstance(got, (list, tuple)) else ""))
        hint = ""
        if got - want:
            hint = f"; {sorted(got - want)} are not modules of the model whose tensors change (leave out operations " \
                   "such as the sum, and modules that are not touched)"
        elif want - got:
            hint = f"; missing {sorted(want - got)}: follow every coupling (the BatchNorm after a conv, a sum that " \
                   "ties channels together, a depthwise conv that has one filter per channel, the layer reading them)"
        _expect(got == want, f"coupled_layers(model, x, {layer!r}) on a {type(model).__name__.strip('_').lower()} "
                             f"block should be {sorted(want)}, got {sorted(got)}{hint}")
    _passed("coupled_layers", len(cases))


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
        _expect((new.bias is None) == (fc.bias is None),
                f"keep_inputs({fc}, {keep.tolist()}): " + ("fc has a bias: the new layer needs it too (a copy of fc's "
                                                           "bias; removing inputs does not change it)"
                                                           if fc.bias is not None else
                                                           "fc has no bias (bias=False): the new layer must not add one "
                                                           "(nn.Linear(..., bias=fc.bias is not None))"))
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
def check_speedup_at(speedup_at):
    """speedup_at(dense, pruned, inputs): a ``latency.Speedup`` of pruned over dense, measured in one
    interleaved run with one thread."""
    from ..latency import Speedup

    _callable(speedup_at, "speedup_at")
    x = torch.zeros(2, 1, 4, 4)
    cases = [(0.004, 0.002, 2.0), (0.002, 0.002, 1.0), (0.002, 0.003, 2 / 3)]
    for slow, fast, want in cases:
        got = _call("speedup_at", speedup_at, _Busy(slow), _Busy(fast), x)
        _expect(isinstance(got, Speedup), f"speedup_at should return the latency.Speedup that "
                                          f"latency.compare_speedups gives (median and interval), got {type(got).__name__}")
        _expect(got.low <= got.median <= got.high,
                f"the interval [{got.low:.2f}, {got.high:.2f}] must hold the median {got.median:.2f}")
        inverted = abs(got.median - 1 / want) < 0.2 * (1 / want) and want != 1
        hint = ": that is the slow-down, dense over pruned the other way round" if inverted else ""
        _expect(abs(got.median - want) < 0.25 * want,
                f"a model taking {slow * 1e3:.0f} ms against one taking {fast * 1e3:.0f} ms: speed-up should be about "
                f"{want:.2f}x, got {got.median:.2f}x{hint}")
    _passed("speedup_at", len(cases))
