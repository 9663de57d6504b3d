"""Automatic checks for the chapters' exercises.

Each ``check_…`` runs a learner's function on cases the notebook does not show (non-square tensors,
negative weights, ties at the threshold, grouped convolutions, masks that must survive optimizer steps …)
and compares it with what it must compute. A wrong answer raises :class:`CheckFailed` saying which case
failed and what was expected; an exercise not written yet (``raise NotImplementedError``) says so. In
Jupyter a failed check shows that one message, not a traceback. A passed check prints how many cases it ran.
"""

from __future__ import annotations

import copy
import functools
import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = ["CheckFailed"] + [f"check_{n}" for n in (
    "density", "conv_macs_formula", "size_ratio",                  # 00
    "row_nm_ok", "csr_break_even", "fine_grained_mask",            # 01
    "taylor_one_layer", "gradient_score", "global_masks",          # 02
    "iterative_steps", "keep_zero", "cubic_window",                # 03
    "compound_sparsity", "threshold_pruning", "strip_pruning",     # 04
    "filter_l1", "keep_inputs", "conv_macs",                       # 05
    "is_dead", "global_sparsity", "speedup",                       # 06
)]


class CheckFailed(AssertionError):
    """An exercise's answer is wrong (or not written yet). Shown as one line in Jupyter."""

    def _render_traceback_(self):  # IPython uses this instead of the traceback
        return [f"CheckFailed: {self}"]


def _call(name, fn, *args, **kwargs):
    """Call the learner's ``fn``; turn 'not written yet' and crashes into a CheckFailed that says so."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"{name} is not written yet: replace `raise NotImplementedError` with your code") from None
    except CheckFailed:
        raise
    except Exception as exc:  # a crash on a hidden case is a wrong answer, reported as such
        raise CheckFailed(f"{name} raised {type(exc).__name__} on a hidden case: {exc}") from None


def _expect(ok, message):
    if not ok:
        raise CheckFailed(message)


def _callable(fn, name):
    if not callable(fn):
        raise TypeError(f"pass your function {name} itself (not its result), got {type(fn).__name__}")


def _passed(name, cases):
    print(f"{name}: all {cases} hidden cases passed")


def _close(a, b, tol=1e-9):
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _number(x):
    return x.item() if isinstance(x, torch.Tensor) and x.numel() == 1 else x


def _compare_numbers(name, fn, cases, want, hint):
    """``fn(*args)`` must be the number ``want(*args)`` for every argument tuple in ``cases``."""
    for args in cases:
        expected, got = want(*args), _number(_call(name, fn, *args))
        _expect(_close(got, expected), f"{name}{args} should be {expected:.6f} ({hint}), got {got!r}")
    _passed(name, len(cases))


def _tiny_mlp(seed=0, sizes=(12, 7, 3)):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(hidden=nn.Linear(sizes[0], sizes[1]), act=nn.ReLU(),
                                     out=nn.Linear(sizes[1], sizes[2])))


def _batches(seed=1, n=3, features=12, classes=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(5 + i, features, generator=gen), torch.randint(0, classes, (5 + i,), generator=gen))
            for i in range(n)]


# ---- 00 getting started ----------------------------------------------------------------------------------

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


def check_conv_macs_formula(conv_macs):
    """conv_macs(c_in, c_out, k, h_out, w_out): MACs per sample of a k×k convolution."""
    from .metrics import count_macs

    _callable(conv_macs, "conv_macs")
    cases = [(6, 16, 5, 8, 8), (3, 7, 3, 10, 4), (1, 2, 1, 1, 1), (4, 4, 2, 3, 9)]
    for c_in, c_out, k, h, w in cases:
        want = count_macs(nn.Conv2d(c_in, c_out, k), (c_in, h + k - 1, w + k - 1))
        got = _number(_call("conv_macs", conv_macs, c_in, c_out, k, h, w))
        _expect(got == want, f"conv_macs{(c_in, c_out, k, h, w)} (output {h}×{w}, not square) should be "
                             f"{want:,} (torchprofile agrees), got {got!r}")
    _passed("conv_macs", len(cases))


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


# ---- 01 granularity --------------------------------------------------------------------------------------

def _row_nm_ok(mask, n, m):
    rows, cols = mask.shape
    padded = nn.functional.pad(mask.float(), (0, (-cols) % m))
    return bool((padded.reshape(rows, -1, m).sum(-1) <= n).all())


def check_row_nm_ok(row_nm_ok):
    """row_nm_ok(mask, n, m): does every group of m consecutive entries of every row hold at most n ones?"""
    from .masks import nm_mask

    _callable(row_nm_ok, "row_nm_ok")
    torch.manual_seed(0)
    tail = torch.tensor([[1, 0, 0, 0, 1, 0, 0, 0, 1, 1.0]])      # only the ragged tail breaks 1:4
    columns = torch.tensor([[1, 1, 0, 0.0]] * 4)                   # rows fine, columns not
    exact = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0.0]])             # exactly n ones per group is allowed
    extra = nm_mask(torch.randn(5, 11), 3, 8).clone()
    extra[2, :4] = 1
    cases = [(tail, 1, 4), (columns, 2, 4), (exact, 2, 4), (nm_mask(torch.randn(6, 10), 2, 4), 2, 4),
             (nm_mask(torch.randn(3, 7), 1, 2), 1, 2), (extra, 3, 8), (torch.zeros(2, 5), 2, 4)]
    for mask, n, m in cases:
        want, got = _row_nm_ok(mask, n, m), _call("row_nm_ok", row_nm_ok, mask, n, m)
        _expect(isinstance(_number(got), bool) and got == want,
                f"row_nm_ok({n}:{m}) on a {tuple(mask.shape)} mask {mask.int().tolist() if mask.numel() <= 16 else ''}"
                f" should be {want}, got {got!r} (rows may end in a partial group; a bool is expected)")
    _passed("row_nm_ok", len(cases))


def check_csr_break_even(csr_break_even):
    """csr_break_even(rows, cols): the sparsity above which CSR (32-bit values, indices) beats dense."""
    _callable(csr_break_even, "csr_break_even")
    _compare_numbers("csr_break_even", csr_break_even, [(128, 1152), (7, 3), (1000, 10), (1, 1), (3, 500)],
                     lambda rows, cols: 1 - (32 * rows * cols - 32 * (rows + 1)) / (64 * rows * cols),
                     "the row-pointer array has rows + 1 entries")


def check_fine_grained_mask(fine_grained_mask):
    """fine_grained_mask(w, sparsity): 0/1 mask of w's shape pruning the smallest |w|, exactly round(s·numel)."""
    _callable(fine_grained_mask, "fine_grained_mask")
    torch.manual_seed(0)
    ties = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0], [-1.0, 1.0, 3.0, -1.0, 1.0]])
    cases = [(torch.randn(7, 13) - 0.5, 0.6), (torch.randn(4, 3, 5), 0.25), (ties, 0.5), (ties, 0.3),
             (torch.randn(3, 4), 0.0), (torch.randn(3, 4), 1.0)]
    for w, s in cases:
        mask = _call("fine_grained_mask", fine_grained_mask, w.clone(), s)
        where = f"on a {tuple(w.shape)} tensor at sparsity {s}"
        _expect(isinstance(mask, torch.Tensor) and mask.shape == w.shape,
                f"{where}: the mask must be a tensor of the weight's shape {tuple(w.shape)}")
        keep = mask != 0
        zeros = int((~keep).sum())
        _expect(zeros == round(s * w.numel()), f"{where}: expected exactly {round(s * w.numel())} zeros, got {zeros}"
                                               " (ties at the threshold must be split to hit the sparsity)")
        if 0 < zeros < w.numel():
            _expect(w.abs()[keep].min() >= w.abs()[~keep].max(),
                    f"{where}: a kept weight has a smaller |w| than a pruned one (rank by magnitude, not sign)")
    _passed("fine_grained_mask", len(cases))


# ---- 02 criteria -----------------------------------------------------------------------------------------

def _check_layer_score(name, fn, reference, hint):
    _callable(fn, name)
    model, batches = _tiny_mlp(3), _batches()
    for layer in ("hidden", "out"):
        for bs in (batches, batches[:1]):
            want = reference(model, bs)[layer]
            got = _call(name, fn, model, layer, bs)
            _expect(isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, atol=1e-7),
                    f"{name}(model, {layer!r}, {len(bs)} batches) differs from the reference ({hint})")
    _passed(name, 4)


def check_taylor_one_layer(taylor_one_layer):
    """taylor_one_layer(model, layer_name, batches): mean over batches of |w · dL/dw|."""
    from .criteria import taylor

    _check_layer_score("taylor_one_layer", taylor_one_layer, taylor, "one gradient per batch, |w·g| per batch, "
                       "then the mean over the batches")


def check_gradient_score(gradient_score):
    """gradient_score(model, layer_name, batches): mean over batches of |dL/dw|."""
    from .criteria import gradient

    _check_layer_score("gradient_score", gradient_score, gradient, "|g| per batch, then the mean: not |mean g|, "
                       "where gradients of different batches cancel")


def check_global_masks(global_masks):
    """global_masks(scores, sparsity): {layer: 0/1 mask}, one threshold over all layers, exact global count."""
    _callable(global_masks, "global_masks")
    torch.manual_seed(0)
    scores = {"a": torch.rand(6, 5) * 10, "b": torch.rand(4, 3, 3), "c": torch.full((2, 7), 0.5)}  # c: all tied
    total = sum(s.numel() for s in scores.values())
    for s in (0.2, 0.5, 0.9, 0.0, 1.0):
        masks = _call("global_masks", global_masks, {k: v.clone() for k, v in scores.items()}, s)
        _expect(isinstance(masks, dict) and set(masks) == set(scores)
                and all(isinstance(masks[k], torch.Tensor) and masks[k].shape == v.shape for k, v in scores.items()),
                "global_masks must return {layer: mask} with one mask of each score's shape")
        zeros = sum(int((masks[k] == 0).sum()) for k in scores)
        _expect(zeros == round(s * total), f"at sparsity {s}: expected exactly {round(s * total)} zeros over all "
                                           f"layers, got {zeros} (one global threshold; split ties)")
        kept = torch.cat([scores[k][masks[k] != 0] for k in scores])
        pruned = torch.cat([scores[k][masks[k] == 0] for k in scores])
        if kept.numel() and pruned.numel():
            _expect(kept.min() >= pruned.max(), f"at sparsity {s}: a kept score is smaller than a pruned one in "
                                                "another layer (the threshold must be global, not per layer)")
    _passed("global_masks", 5)


# ---- 03 timing -------------------------------------------------------------------------------------------

def check_iterative_steps(iterative_steps):
    """iterative_steps(final, n): n sparsities, the same fraction of the remaining weights pruned each step."""
    _callable(iterative_steps, "iterative_steps")
    cases = [(0.95, 4), (0.5, 1), (0.9, 3), (0.0, 2), (0.99, 5)]
    for final, n in cases:
        r = 1 - (1 - final) ** (1 / n)
        want = [1 - (1 - r) ** k for k in range(1, n + 1)]
        got = _call("iterative_steps", iterative_steps, final, n)
        _expect(len(got) == n and all(_close(float(g), w, 1e-9) for g, w in zip(got, want)),
                f"iterative_steps({final}, {n}) should be {[round(w, 4) for w in want]}, got {got!r}")
    _passed("iterative_steps", len(cases))


def check_keep_zero(keep_zero):
    """keep_zero(layer_name, mask) -> callback(model) that re-applies the mask after every optimizer step."""
    _callable(keep_zero, "keep_zero")
    model, batches = _tiny_mlp(4), _batches(n=6)
    mask = (torch.rand(model.out.weight.shape, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    with torch.no_grad():
        model.out.weight.mul_(mask)
    start = copy.deepcopy(model.state_dict())
    callback = _call("keep_zero", keep_zero, "out", mask)
    _expect(callable(callback), "keep_zero must return a callback: a function of the model")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for X, y in batches:  # momentum would move pruned weights after the gradient is gone
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
        _call("the callback", callback, model)
        _expect(torch.equal(model.out.weight == 0, mask == 0), "after an optimizer step and the callback the "
                "pruned weights must be exactly zero and only those (the mask must be re-applied every step)")
    moved = (model.out.weight - start["out.weight"]).abs()[mask == 1].min()
    _expect(moved > 0, "kept weights must still train: the callback must only zero the masked ones")
    _expect(torch.equal(model.hidden.weight == 0, start["hidden.weight"] == 0) and
            not torch.equal(model.hidden.weight, start["hidden.weight"]), "other layers must be left alone")
    _passed("keep_zero", len(batches))


def check_cubic_window(cubic_window):
    """cubic_window(step, begin, end, final): 0 before begin, final after end, cubic in between."""
    _callable(cubic_window, "cubic_window")
    begin, end, final = 10, 110, 0.9
    cases = [0, 10, 35, 60, 85, 110, 500]
    for step in cases:
        t = min(max((step - begin) / (end - begin), 0.0), 1.0)
        want = final * (1 - (1 - t) ** 3)
        got = _number(_call("cubic_window", cubic_window, step, begin, end, final))
        _expect(_close(float(got), want, 1e-9), f"cubic_window({step}, begin={begin}, end={end}, final={final}) "
                f"should be {want:.6f} (hold 0 before begin and final after end), got {got!r}")
    _passed("cubic_window", len(cases))


# ---- 04 torch.nn.utils.prune ------------------------------------------------------------------------------

def check_compound_sparsity(compound_sparsity):
    """compound_sparsity(amounts): zeros after l1_unstructured with each amount in turn on one tensor."""
    _callable(compound_sparsity, "compound_sparsity")
    cases = [(0.2, 0.3, 0.4), (0.5, 0.5), (0.9,), (0.1,) * 6, ()]
    for amounts in cases:
        layer = nn.Linear(100, 100)
        for a in amounts:
            prune.l1_unstructured(layer, "weight", amount=a)
        real = float((layer.weight == 0).float().mean())
        got = _number(_call("compound_sparsity", compound_sparsity, amounts))
        _expect(isinstance(got, (int, float)) and abs(got - real) < 1e-3,
                f"compound_sparsity({amounts}) should be {real:.4f} (each amount is a fraction of what is "
                f"left), got {got!r}")
    _passed("compound_sparsity", len(cases))


def check_threshold_pruning(method):
    """A BasePruningMethod subclass; ``method.apply(module, name, threshold=t)`` prunes |w| < t."""
    if not (isinstance(method, type) and issubclass(method, prune.BasePruningMethod)):
        raise TypeError("pass your class itself, a subclass of torch.nn.utils.prune.BasePruningMethod")
    w = torch.tensor([[0.5, -0.5, 0.1, -0.1, 0.3], [-0.3, 0.05, -0.7, 0.7, -0.05]])
    layer = nn.Linear(5, 2)
    with torch.no_grad():
        layer.weight.copy_(w)
    _call("ThresholdPruning.apply", method.apply, layer, "weight", threshold=0.3)
    _expect(torch.equal(layer.weight != 0, w.abs() >= 0.3), "threshold 0.3 must keep exactly the entries with "
            f"|w| >= 0.3 (negative ones too, and 0.3 itself): kept {(layer.weight != 0).int().tolist()}")
    _call("ThresholdPruning.apply", method.apply, layer, "weight", threshold=0.6)
    _expect(torch.equal(layer.weight != 0, w.abs() >= 0.6), "applied a second time (threshold 0.6) the masks "
            "must combine: only |w| >= 0.6 survives")
    layer = nn.Linear(5, 2)
    with torch.no_grad():
        layer.weight.copy_(w)
    earlier = torch.tensor([[0.0, 1, 1, 1, 1], [1, 1, 1, 0, 1]])  # earlier pruning removed two large weights
    prune.custom_from_mask(layer, "weight", earlier)
    _call("ThresholdPruning.apply", method.apply, layer, "weight", threshold=0.3)
    _expect(torch.equal(layer.weight != 0, (w.abs() >= 0.3) & (earlier == 1)), "on top of an earlier pruning "
            "the masks must combine: entries already pruned stay pruned")
    _passed("ThresholdPruning", 3)


def check_strip_pruning(strip_pruning):
    """strip_pruning(model): make every pruning permanent, whatever the parameter names."""
    _callable(strip_pruning, "strip_pruning")
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), flat=nn.Flatten(), fc=nn.Linear(4 * 4 * 4, 5)))
    prune.l1_unstructured(model.conv, "weight", amount=0.5)
    prune.l1_unstructured(model.conv, "bias", amount=0.5)
    prune.l1_unstructured(model.fc, "bias", amount=0.4)
    prune.random_unstructured(model.fc, "bias", amount=0.5)  # a PruningContainer
    x = torch.randn(2, 1, 6, 6)
    want = model(x).detach()
    result = _call("strip_pruning", strip_pruning, model)
    result = model if result is None else result
    left = [n for n, _ in result.named_buffers() if n.endswith("_mask")] + \
           [n for n, _ in result.named_parameters() if n.endswith("_orig")]
    _expect(not left, f"after strip_pruning these remain: {left} (every pruned tensor, not only 'weight')")
    _expect(not any(isinstance(h, prune.BasePruningMethod) for m in result.modules()
                    for h in m._forward_pre_hooks.values()), "pruning hooks are left on the model")
    fresh = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), flat=nn.Flatten(), fc=nn.Linear(64, 5)))
    try:
        fresh.load_state_dict(result.state_dict())
    except RuntimeError as exc:
        raise CheckFailed(f"the stripped state_dict does not load into a fresh model: {exc}") from None
    _expect(torch.allclose(fresh(x), want, atol=1e-6), "the stripped model must compute what the pruned one did "
            "(make the masks permanent with prune.remove, do not just drop them)")
    _passed("strip_pruning", 3)


# ---- 05 structured pruning --------------------------------------------------------------------------------

def _convs(seed=0):
    torch.manual_seed(seed)
    convs = [nn.Conv2d(3, 5, (1, 3)), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(6, 8, 1, stride=2),
             nn.Conv2d(4, 6, (3, 2), stride=(2, 1), groups=2, padding=1)]
    with torch.no_grad():
        for c in convs:
            c.weight.sub_(0.5)  # plenty of negative weights
    return convs


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


def check_conv_macs(conv_macs):
    """conv_macs(conv, out): MACs per sample from the layer and its output [1, C_out, H_out, W_out]."""
    from .metrics import count_macs

    _callable(conv_macs, "conv_macs")
    for conv in _convs():
        x = torch.randn(1, conv.in_channels, 9, 7)
        with torch.no_grad():
            out = conv(x)
        want, got = count_macs(conv, x), _number(_call("conv_macs", conv_macs, conv, out))
        _expect(got == want, f"conv_macs on {conv} with a 9×7 input should be {want:,} (torchprofile), got {got!r}")
    _passed("conv_macs", 4)


# ---- 06 DeepLSP --------------------------------------------------------------------------------------------

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


def check_global_sparsity(global_sparsity):
    """global_sparsity(ratios, sizes): parameter-weighted sparsity of per-layer ratios."""
    _callable(global_sparsity, "global_sparsity")
    cases = [({"a": 0.9, "b": 0.1}, {"a": 1000, "b": 10}), ({"a": 0.5}, {"a": 7}),
             ({"x": 0.0, "y": 0.99, "z": 0.5}, {"x": 50, "y": 5, "z": 500, "unused": 10_000})]
    _compare_numbers("global_sparsity", global_sparsity, cases,
                     lambda ratios, sizes: sum(r * sizes[k] for k, r in ratios.items()) / sum(sizes[k] for k in ratios),
                     "weighted by the sizes of the layers in ratios")


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


def _own_rng(check):
    """Run ``check`` with its own copy of the global torch RNG: its seeding never changes the notebook's
    later random draws."""
    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return check(*args, **kwargs)
    return wrapped


for _name in __all__[1:]:
    globals()[_name] = _own_rng(globals()[_name])
