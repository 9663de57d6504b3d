"""The exercise checks accept a right answer and reject known-wrong ones, with a message, not a crash."""

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from deeplsp_helpers import checks, criteria, masks, metrics
from deeplsp_helpers.latency import compare_latency

# ---- right answers ------------------------------------------------------------------------------------------


def density(model):
    total = sum(p.numel() for p in model.parameters())
    return sum(int(p.count_nonzero()) for p in model.parameters()) / total


def row_nm_ok(mask, n, m):
    rows, cols = mask.shape
    padded = nn.functional.pad(mask, (0, (-cols) % m))
    return bool((padded.reshape(rows, -1, m).sum(-1) <= n).all())


def fine_grained_mask(w, sparsity):
    k = round(sparsity * w.numel())
    mask = torch.ones(w.numel())
    mask[w.abs().flatten().argsort()[:k]] = 0
    return mask.reshape(w.shape)


def one_layer(score):
    def fn(model, layer_name, batches):
        w = model.get_submodule(layer_name).weight
        total = torch.zeros_like(w)
        for X, y in batches:
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(X), y), [w])
            total += score(w.detach(), g)
        return total / len(batches)
    return fn


def global_masks(scores, sparsity):
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = torch.ones(flat.numel())
    keep[flat.argsort()[:round(sparsity * flat.numel())]] = 0
    out, i = {}, 0
    for k, s in scores.items():
        out[k] = keep[i:i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


def iterative_steps(final, n):
    r = 1 - (1 - final) ** (1 / n)
    return [1 - (1 - r) ** k for k in range(1, n + 1)]


def keep_zero(layer_name, mask):
    def callback(model):
        with torch.no_grad():
            model.get_submodule(layer_name).weight.mul_(mask)
    return callback


def cubic_window(step, begin, end, final):
    t = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final * (1 - (1 - t) ** 3)


def compound_sparsity(amounts):
    left = 1.0
    for a in amounts:
        left *= 1 - a
    return 1 - left


class ThresholdPruning(prune.BasePruningMethod):
    PRUNING_TYPE = "unstructured"

    def __init__(self, threshold):
        self.threshold = threshold

    def compute_mask(self, t, default_mask):
        return default_mask * (t.abs() >= self.threshold).to(default_mask.dtype)

    @classmethod
    def apply(cls, module, name, threshold):
        return super().apply(module, name, threshold=threshold)


def strip_pruning(model):
    for mod in model.modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(mod, hook._tensor_name)
    return model


def keep_inputs(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=fc.bias is not None)
    new.weight.data = fc.weight.data[:, keep].clone()
    if fc.bias is not None:
        new.bias.data = fc.bias.data.clone()
    return new


def conv_macs(conv, out):
    return out[0].numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]


def is_dead(conv, bn, c):
    if conv.weight[c].abs().max() > 0 or (conv.bias is not None and conv.bias[c] != 0):
        return False
    out = bn.bias[c] - bn.weight[c] * bn.running_mean[c] / torch.sqrt(bn.running_var[c] + bn.eps)
    return bool(out.abs() <= 1e-12)


def speedup(baseline, candidate, inputs):
    res = compare_latency({"base": baseline, "cand": candidate}, inputs, warmup=3, repeats=15, threads=1)
    return res["base"].median_ms / res["cand"].median_ms


# ---- wrong answers --------------------------------------------------------------------------------------------


class SignedThreshold(ThresholdPruning):
    def compute_mask(self, t, default_mask):
        return default_mask * (t >= self.threshold).to(default_mask.dtype)


class StrictThreshold(ThresholdPruning):
    def compute_mask(self, t, default_mask):
        return default_mask * (t.abs() > self.threshold).to(default_mask.dtype)


def _mask_with_ties_over(w, sparsity):  # a threshold that prunes every tie: too many zeros
    k = round(sparsity * w.numel())
    if k == 0:
        return torch.ones_like(w)
    return (w.abs() > w.abs().flatten().kthvalue(k).values).float()


def _signed_mask(w, sparsity):
    mask = torch.ones(w.numel())
    mask[w.flatten().argsort()[:round(sparsity * w.numel())]] = 0
    return mask.reshape(w.shape)


def _bn_of_zero(bn, c):
    return bn.bias[c] - bn.weight[c] * bn.running_mean[c] / (bn.running_var[c] + bn.eps).sqrt()


def _per_layer_masks(scores, sparsity):
    return {k: fine_grained_mask(s, sparsity) for k, s in scores.items()}


def _remove_weight_only(model):
    for mod in model.modules():
        if prune.is_pruned(mod) and hasattr(mod, "weight_orig"):
            prune.remove(mod, "weight")
    return model


def _drop_hooks(model):
    for mod in model.modules():
        mod._forward_pre_hooks.clear()
    return model


def _no_bias(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=False)
    new.weight.data = fc.weight.data[:, keep].clone()
    return new


def _view_not_copy(fc, keep):
    new = nn.Linear(len(keep), fc.out_features, bias=fc.bias is not None)
    new.weight.data = fc.weight.data[:, keep].clone()
    if fc.bias is not None:
        new.bias.data = fc.bias.data  # shared with the old layer
    return new


WRONG = {
    "density": [
        lambda m: sum(int(p.count_nonzero()) for n, p in m.named_parameters() if "weight" in n)
        / sum(p.numel() for n, p in m.named_parameters() if "weight" in n),      # forgets biases
        lambda m: 1 - density(m),                                                 # sparsity, not density
    ],
    "conv_macs_formula": [
        lambda c_in, c_out, k, h, w: c_out * h * h * c_in * k * k,               # assumes a square output
        lambda c_in, c_out, k, h, w: c_out * h * w * k * k,                       # forgets input channels
    ],
    "size_ratio": [
        lambda m, w: w / 32,                                                      # upside down
        lambda m, w: metrics.model_size(m, 32) / metrics.model_size(m, w, nonzero_only=True),  # skips zeros
    ],
    "row_nm_ok": [
        lambda mask, n, m: row_nm_ok(mask[:, : mask.shape[1] // m * m], n, m),    # ignores the ragged tail
        lambda mask, n, m: row_nm_ok(mask.T.contiguous(), n, m),                 # groups along columns
        lambda mask, n, m: bool((nn.functional.pad(mask, (0, (-mask.shape[1]) % m))
                                 .reshape(mask.shape[0], -1, m).sum(-1) < n).all()),  # < instead of <=
    ],
    "csr_break_even": [
        lambda rows, cols: 0.5,                                                   # forgets the row pointers
        lambda rows, cols: 1 - (32 * rows * cols - 32 * rows) / (64 * rows * cols),  # rows, not rows + 1
    ],
    "fine_grained_mask": [
        _signed_mask,                                                             # ranks by signed value
        _mask_with_ties_over,                                                     # prunes all ties
        lambda w, s: fine_grained_mask(w, s)[0],                                  # wrong shape
    ],
    "taylor_one_layer": [
        one_layer(lambda w, g: w * g),                                            # no absolute value
        lambda model, name, batches: one_layer(lambda w, g: (w * g).abs())(model, name, batches[:1]),  # 1 batch
    ],
    "gradient_score": [
        lambda model, name, batches: one_layer(lambda w, g: g)(model, name, batches).abs(),  # |mean g|
        lambda model, name, batches: one_layer(lambda w, g: (w * g).abs())(model, name, batches),  # Taylor
    ],
    "global_masks": [_per_layer_masks,
                     lambda scores, s: {k: _mask_with_ties_over(v, s) for k, v in scores.items()}],
    "iterative_steps": [
        lambda final, n: [final * k / n for k in range(1, n + 1)],                # linear
        lambda final, n: [1 - (1 - final) ** (1 / n)] * n,                        # the rate, not the sparsity
    ],
    "keep_zero": [
        lambda name, mask: (lambda model: None),                                  # forgets the mask
        lambda name, mask: (lambda model: model.get_submodule(name).weight.data.mul_(1 - mask)),  # inverted
        lambda name, mask: (lambda model: [p.data.mul_(0) for p in model.get_submodule(name).parameters()]),
    ],
    "cubic_window": [
        lambda step, begin, end, final: final * (1 - (1 - (step - begin) / (end - begin)) ** 3),  # no clamps
        lambda step, begin, end, final: final * min(max((step - begin) / (end - begin), 0), 1),   # linear
    ],
    "compound_sparsity": [lambda amounts: min(sum(amounts), 1.0), lambda amounts: amounts[-1] if amounts else 0.0],
    "threshold_pruning": [SignedThreshold, StrictThreshold],
    "strip_pruning": [_remove_weight_only, _drop_hooks],
    "filter_l1": [
        lambda conv: conv.weight.detach().flatten(1).sum(1),                      # no absolute value
        lambda conv: conv.weight.detach().flatten(1).norm(dim=1),                 # L2
        lambda conv: conv.weight.detach().abs().transpose(0, 1).flatten(1).sum(1),  # per input channel
    ],
    "keep_inputs": [_no_bias, _view_not_copy,
                    lambda fc, keep: keep_inputs(fc, keep.sort().values)],        # reorders the inputs
    "conv_macs": [
        lambda conv, out: out[0].numel() * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1],  # groups
        lambda conv, out: out[0].numel() * conv.in_channels // conv.groups * conv.kernel_size[0] ** 2,    # square k
    ],
    "is_dead": [
        lambda conv, bn, c: bool((conv.weight[c] == 0).all()),                    # ignores BN and bias
        lambda conv, bn, c: bool((conv.weight[c] == 0).all() and bn.weight[c] == 0 and bn.bias[c] == 0),
        lambda conv, bn, c: bool((conv.weight[c] == 0).all() and _bn_of_zero(bn, c) == 0),  # ignores the conv bias
    ],
    "global_sparsity": [
        lambda ratios, sizes: sum(ratios.values()) / len(ratios),                 # unweighted
        lambda ratios, sizes: sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes.values()),  # all sizes
    ],
    "speedup": [lambda b, c, x: 1 / speedup(b, c, x), lambda b, c, x: 1.0],
}

RIGHT = {
    "density": density, "conv_macs_formula": lambda c_in, c_out, k, h, w: c_out * h * w * c_in * k * k,
    "size_ratio": lambda m, w: metrics.model_size(m, 32) / metrics.model_size(m, w),
    "row_nm_ok": row_nm_ok,
    "csr_break_even": lambda rows, cols: 1 - (32 * rows * cols - 32 * (rows + 1)) / (64 * rows * cols),
    "fine_grained_mask": fine_grained_mask, "taylor_one_layer": one_layer(lambda w, g: (w * g).abs()),
    "gradient_score": one_layer(lambda w, g: g.abs()), "global_masks": global_masks,
    "iterative_steps": iterative_steps, "keep_zero": keep_zero, "cubic_window": cubic_window,
    "compound_sparsity": compound_sparsity, "threshold_pruning": ThresholdPruning, "strip_pruning": strip_pruning,
    "filter_l1": lambda conv: conv.weight.detach().abs().flatten(1).sum(1), "keep_inputs": keep_inputs,
    "conv_macs": conv_macs, "is_dead": is_dead,
    "global_sparsity": lambda ratios, sizes: sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes[k] for k in ratios),
    "speedup": speedup,
}


def test_every_check_has_a_right_and_wrong_answers():
    names = sorted(n[len("check_"):] for n in checks.__all__ if n.startswith("check_"))
    assert names == sorted(RIGHT) == sorted(WRONG)
    assert all(len(v) >= 2 for v in WRONG.values())


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_right_answer_passes(name, capsys):
    getattr(checks, f"check_{name}")(RIGHT[name])
    assert "hidden cases passed" in capsys.readouterr().out


@pytest.mark.parametrize("name,index", [(n, i) for n in sorted(WRONG) for i in range(len(WRONG[n]))])
def test_wrong_answer_fails_with_a_message(name, index):
    with pytest.raises(checks.CheckFailed) as info:
        getattr(checks, f"check_{name}")(WRONG[name][index])
    assert len(str(info.value)) > 20
    assert info.value._render_traceback_() == [f"CheckFailed: {info.value}"]


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_unwritten_exercise_says_so(name):
    def unwritten(*args, **kwargs):
        raise NotImplementedError("Exercise: write it")

    stub = unwritten
    if name == "threshold_pruning":
        stub = type("Stub", (prune.BasePruningMethod,), {"PRUNING_TYPE": "unstructured", "compute_mask": unwritten,
                                                          "apply": classmethod(unwritten)})
    with pytest.raises(checks.CheckFailed, match="not written yet"):
        getattr(checks, f"check_{name}")(stub)


def test_checks_reject_a_value_instead_of_a_function():
    with pytest.raises(TypeError, match="your function"):
        checks.check_density(0.5)
    with pytest.raises(TypeError, match="BasePruningMethod"):
        checks.check_threshold_pruning(strip_pruning)


def test_reference_answers_agree_with_the_package():
    torch.manual_seed(0)
    w = torch.randn(6, 9)
    assert torch.equal(fine_grained_mask(w, 0.4), masks.fine_grained_mask(w, 0.4).float())
    model = nn.Sequential(nn.Linear(4, 3))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    assert torch.allclose(one_layer(lambda w, g: (w * g).abs())(model, "0", batches), criteria.taylor(model, batches)["0"])
    assert torch.allclose(one_layer(lambda w, g: g.abs())(model, "0", batches), criteria.gradient(model, batches)["0"])


def test_a_check_leaves_the_global_random_state_alone():
    import torch

    from deeplsp_helpers import checks

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_fine_grained_mask(fine_grained_mask)  # this check seeds the RNG for its hidden cases
    assert torch.equal(torch.rand(3), expected)
