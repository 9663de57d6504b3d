"""Chapter 02, pruning criteria: Taylor and gradient scores of one layer, global masks."""

from __future__ import annotations

import torch

from ._harness import _batches, _call, _callable, _expect, _own_rng, _passed, _tiny_mlp


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


@_own_rng
def check_taylor_one_layer(taylor_one_layer):
    """taylor_one_layer(model, layer_name, batches): mean over batches of |w · dL/dw|."""
    from ..criteria import taylor

    _check_layer_score("taylor_one_layer", taylor_one_layer, taylor, "one gradient per batch, |w·g| per batch, "
                       "then the mean over the batches")


@_own_rng
def check_gradient_score(gradient_score):
    """gradient_score(model, layer_name, batches): mean over batches of |dL/dw|."""
    from ..criteria import gradient

    _check_layer_score("gradient_score", gradient_score, gradient, "|g| per batch, then the mean: not |mean g|, "
                       "where gradients of different batches cancel")


@_own_rng
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
