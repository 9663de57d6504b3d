"""Chapter 02, pruning criteria: a Taylor score by hand, a rank correlation, global masks."""

from __future__ import annotations

import torch
from torch import nn

from ._harness import _batches, _call, _callable, _expect, _number, _own_rng, _passed, _tiny_mlp


def _taylor_variants(model, layer, batches):
    """The reference and the usual mistakes, so that a wrong answer can be told which one it made."""
    w = model.get_submodule(layer).weight
    grads = {"mean": [], "sum": []}
    for X, y in batches:
        for reduction in grads:
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(X), y, reduction=reduction), [w])
            grads[reduction].append(g)
    wd, n = w.detach(), len(batches)
    accumulated = torch.stack(grads["mean"]).cumsum(0)  # .grad never zeroed between batches
    return {
        None: sum((wd * g).abs() for g in grads["mean"]) / n,
        "the loss must be the batch mean (cross_entropy's default reduction), not the sum":
            sum((wd * g).abs() for g in grads["sum"]) / n,
        "the gradients were accumulated across batches: take one fresh gradient per batch (zero .grad, "
        "or use torch.autograd.grad)": sum((wd * g).abs() for g in accumulated) / n,
        "that is |w · mean g|: take |w·g| per batch, then the mean (gradients of different batches cancel)":
            (wd * torch.stack(grads["mean"]).mean(0)).abs(),
        "that is the sum over the batches: divide by the number of batches": sum((wd * g).abs() for g in grads["mean"]),
        "that is the signed w·g: take the absolute value per batch": sum(wd * g for g in grads["mean"]) / n,
    }


@_own_rng
def check_taylor_one_layer(taylor_one_layer):
    """taylor_one_layer(model, layer_name, batches): mean over batches of |w · dL/dw|, L the batch-mean
    cross-entropy, the model in eval mode."""
    _callable(taylor_one_layer, "taylor_one_layer")
    model, batches = _tiny_mlp(3), _batches()
    model.act = nn.Sequential(nn.ReLU(), nn.Dropout(0.5))  # in training mode every call would differ
    cases = 0
    for layer in ("hidden", "out"):
        for bs in (batches, batches[:1]):
            variants = _taylor_variants(model.eval(), layer, bs)
            model.train()  # the answer must put the model in eval mode itself
            want = variants[None]
            got = _call("taylor_one_layer", taylor_one_layer, model, layer, bs)
            _expect(isinstance(got, torch.Tensor) and got.shape == want.shape,
                    f"taylor_one_layer(model, {layer!r}, batches) should return a tensor of the weight's shape "
                    f"{tuple(want.shape)}, got {type(got).__name__}{tuple(got.shape) if isinstance(got, torch.Tensor) else ''}")
            if not torch.allclose(got.detach().float(), want, rtol=1e-4, atol=1e-7):
                why = next((k for k, v in variants.items() if k and v.shape == got.shape
                            and torch.allclose(got.detach().float(), v, rtol=1e-4, atol=1e-7)),
                           "one gradient per batch of the batch-mean cross-entropy, |w·g| per batch, then the mean "
                           "over the batches" + ("; and put the model in eval mode (model.eval()): it has dropout"
                                                 if model.training else ""))
                _expect(False, f"taylor_one_layer(model, {layer!r}, {len(bs)} batches) differs from the reference: {why}")
            cases += 1
    _passed("taylor_one_layer", cases)


def _reference_spearman(a, b):
    ranks = torch.stack([a.flatten().argsort().argsort(), b.flatten().argsort().argsort()]).double()
    return torch.corrcoef(ranks)[0, 1].item()


@_own_rng
def check_spearman(spearman):
    """spearman(a, b): Spearman rank correlation of two same-shape tensors (flattened), a Python float."""
    _callable(spearman, "spearman")
    torch.manual_seed(0)
    x, y = torch.randn(40), torch.randn(40)
    grid = torch.randn(5, 8)
    cases = [("a tensor and itself", x, x, 1.0), ("a tensor and its negative", x, -x, -1.0),
             ("x and exp(3x), which rank in the same order", x, torch.exp(3 * x), 1.0),
             ("two independent tensors", x, y, _reference_spearman(x, y)),
             ("two 5×8 tensors (flatten them)", grid, grid ** 3 + 0.1 * torch.randn(5, 8), None)]
    for label, a, b, want in cases:
        want = _reference_spearman(a, b) if want is None else want
        got = _number(_call("spearman", spearman, a.clone(), b.clone()))
        _expect(isinstance(got, (int, float)) and not isinstance(got, bool),
                f"spearman should return a number (a Python float), got {type(got).__name__}")
        hint = ""
        if abs(got - torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1].item()) < 1e-6:
            hint = ": that is Pearson's correlation of the values; correlate their ranks"
        elif abs(got - torch.corrcoef(torch.stack([a.flatten().argsort(), b.flatten().argsort()]).double())[0, 1].item()) < 1e-6:
            hint = ": argsort once gives the order, not the ranks; the rank of each entry is argsort().argsort()"
        _expect(abs(got - want) < 1e-5, f"spearman on {label} should be {want:+.6f}, got {got:+.6f}{hint}")
    _passed("spearman", len(cases))


@_own_rng
def check_global_masks(global_masks):
    """global_masks(scores, sparsity): {layer: float 0/1 mask}, one threshold over all layers, exactly
    round(sparsity · total) zeros, ties split."""
    _callable(global_masks, "global_masks")
    torch.manual_seed(0)
    scores = {"a": torch.rand(6, 5) * 10, "b": torch.rand(4, 3, 3), "c": torch.full((2, 7), 0.5)}  # c: all tied
    tied = {"a": torch.tensor([1.0, 2.0, 3.0, 3.0, 3.0, 3.0]), "b": torch.tensor([[3.0, 3.0], [5.0, 6.0]])}
    cases = [(scores, s) for s in (0.2, 0.5, 0.9, 0.0, 1.0)] + [(tied, 0.5), (tied, 0.25)]
    for sc, s in cases:
        total = sum(v.numel() for v in sc.values())
        masks = _call("global_masks", global_masks, {k: v.clone() for k, v in sc.items()}, s)
        _expect(isinstance(masks, dict) and set(masks) == set(sc)
                and all(isinstance(masks[k], torch.Tensor) and masks[k].shape == v.shape for k, v in sc.items()),
                "global_masks must return {layer: mask} with one mask of each score's shape")
        not_float = [masks[k].dtype for k in sc if not masks[k].is_floating_point()]
        _expect(not not_float, f"return float masks (0.0 / 1.0), not {not_float[0] if not_float else ''}: the chapter "
                               "multiplies and averages them")
        _expect(all(bool(((masks[k] == 0) | (masks[k] == 1)).all()) for k in sc), "masks must hold only 0.0 and 1.0")
        zeros, want = sum(int((masks[k] == 0).sum()) for k in sc), round(s * total)
        kth = torch.cat([v.flatten() for v in sc.values()]).sort().values[want - 1] if want else None
        ties = kth is not None and int((torch.cat([v.flatten() for v in sc.values()]) == kth).sum()) > 1
        hint = "; several scores tie at the threshold: prune exactly enough of them (a stable sort splits ties)" \
            if ties and zeros != want else "; one global threshold over all layers"
        _expect(zeros == want, f"at sparsity {s}: expected exactly {want} zeros over all {total} scores, got {zeros}{hint}")
        kept = torch.cat([sc[k][masks[k] != 0] for k in sc])
        pruned = torch.cat([sc[k][masks[k] == 0] for k in sc])
        if kept.numel() and pruned.numel():
            _expect(kept.min() >= pruned.max(), f"at sparsity {s}: a kept score is smaller than a pruned one in "
                                                "another layer (the threshold must be global, not per layer)")
    _passed("global_masks", len(cases))
