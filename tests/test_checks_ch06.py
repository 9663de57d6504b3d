"""Chapter 06 (combined pruning (DeepLSP)): its exercise checks accept right answers and reject known-wrong ones,
with a message."""

import pytest
import torch
from check_cases import chapter_tests

from deeplsp_helpers import checks, metrics
from deeplsp_helpers.checks import ch06_deeplsp
from deeplsp_helpers.latency import compare_latency


def is_dead(conv, bn, c):
    if conv.weight[c].abs().max() > 0 or (conv.bias is not None and conv.bias[c] != 0):
        return False
    out = bn.bias[c] - bn.weight[c] * bn.running_mean[c] / torch.sqrt(bn.running_var[c] + bn.eps)
    return bool(out.abs() <= 1e-12)


def speedup(baseline, candidate, inputs):
    res = compare_latency({"base": baseline, "cand": candidate}, inputs, warmup=3, repeats=15, threads=1)
    return res["base"].median_ms / res["cand"].median_ms


def _bn_of_zero(bn, c):
    return bn.bias[c] - bn.weight[c] * bn.running_mean[c] / (bn.running_var[c] + bn.eps).sqrt()


def _is_dead_by_running(conv, bn, c):  # measured: feed random inputs through conv and BN
    x = torch.randn(4, conv.in_channels, 7, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bool((bn.eval()(conv(x))[:, c] == 0).all())


def _is_dead_after_relu(conv, bn, c):  # assumes a ReLU: a negative constant is dead
    if conv.weight[c].abs().max() > 0:
        return False
    b = conv.bias[c] if conv.bias is not None else 0.0
    out = bn.bias[c] + bn.weight[c] * (b - bn.running_mean[c]) / torch.sqrt(bn.running_var[c] + bn.eps)
    return bool(out <= 0)


def _is_dead_no_bias_check(conv, bn, c):
    if conv.weight[c].abs().max() > 0 or conv.bias[c] != 0:
        return False
    return bool(_bn_of_zero(bn, c).abs() <= 1e-12)


def _speedup_macs(baseline, candidate, inputs):
    return metrics.count_macs(baseline, inputs) / metrics.count_macs(candidate, inputs)


def _speedup_params(baseline, candidate, inputs):
    return metrics.count_parameters(baseline) / metrics.count_parameters(candidate)


RIGHT_ALSO = {  # the first answer is the notebook's; each one must pass
    "is_dead": [is_dead, _is_dead_by_running],
    "global_sparsity": [lambda ratios, sizes: sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes[k] for k in ratios),
                        lambda ratios, sizes: (torch.tensor([ratios[k] for k in ratios], dtype=torch.float32)
                                               @ torch.tensor([float(sizes[k]) for k in ratios]))
                        / sum(sizes[k] for k in ratios)],
    "speedup": [speedup],
}
RIGHT = {name: answers[0] for name, answers in RIGHT_ALSO.items()}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "is_dead": [
        (lambda conv, bn, c: bool((conv.weight[c] == 0).all()), "should be alive"),
        (lambda conv, bn, c: bool((conv.weight[c] == 0).all() and bn.weight[c] == 0 and bn.bias[c] == 0),
         "running mean 0 and beta 0"),
        (lambda conv, bn, c: bool((conv.weight[c] == 0).all() and _bn_of_zero(bn, c) == 0), "conv bias"),
        (lambda conv, bn, c: bool(conv.weight[c].sum() == 0 and conv.bias[c] == 0 and _bn_of_zero(bn, c) == 0),
         "sums to zero"),
        (lambda conv, bn, c: bool((conv.weight[c] == 0).all() and conv.bias[c] == 0 and bn.bias[c] == 0),
         "running mean 0.4"),
        (_is_dead_after_relu, "a constant channel is not dead"),
        (lambda conv, bn, c: torch.tensor(is_dead(conv, bn, c)), "Python bool"),
        (_is_dead_no_bias_check, "TypeError"),
    ],
    "global_sparsity": [
        (lambda ratios, sizes: sum(ratios.values()) / len(ratios), "weight each layer"),
        (lambda ratios, sizes: sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes.values()), "layers in ratios"),
        (lambda ratios, sizes: sum(r * s for r, s in zip(ratios.values(), sizes.values())) / sum(sizes[k] for k in ratios),
         "by layer name"),
    ],
    "speedup": [
        (lambda b, c, x: 1 / speedup(b, c, x), "upside down"), (lambda b, c, x: 1.0, "> 3x faster"),
        (_speedup_macs, "That is the MAC ratio"), (_speedup_params, "42 layers"),
        (lambda b, c, x: None, "positive number"),
    ],
}

WRONG = {name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()}

globals().update(chapter_tests(ch06_deeplsp, RIGHT, WRONG, WRONG_TOLD, RIGHT_ALSO))  # test_… functions for pytest


def test_check_rejects_a_value_instead_of_a_function():
    with pytest.raises(TypeError, match="your function"):
        checks.check_global_sparsity(0.5)
