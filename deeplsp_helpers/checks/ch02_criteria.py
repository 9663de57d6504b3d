"""Chapter 02, pruning criteria: a Taylor score by hand, one Optimal Brain Surgeon step, global masks."""

from __future__ import annotations

import torch
from torch import nn

from ._harness import CheckFailed, _batches, _call, _callable, _expect, _own_rng, _passed, _tiny_mlp


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


def _spd(n, seed):
    """A symmetric positive definite Hessian with strongly coupled weights (so that compensating matters)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(n, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)


@_own_rng
def check_obs_step(obs_step):
    """obs_step(w, H_inv, q) -> (increase, new_w): the least loss increase 1/2 d^T H d over changes d with
    d_q = -w_q (a Python float), and new_w = w + d for that d. Solved here from H itself (the KKT system), so
    any correct way of computing it passes."""
    _callable(obs_step, "obs_step")
    cases = [(6, 0, 2), (6, 0, 0), (9, 1, 8), (4, 2, 1), (1, 3, 0)]
    for n, seed, q in cases:
        h, w = _spd(n, seed)
        h_inv = torch.linalg.inv(h)
        kkt = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        kkt[:n, :n], kkt[n, q], kkt[q, n] = h, 1.0, 1.0
        d = torch.linalg.solve(kkt, torch.cat([torch.zeros(n, dtype=torch.float64), -w[q:q + 1]]))[:n]
        want_inc, want_w = (0.5 * d @ h @ d).item(), w + d
        where = f"on a {n}-weight quadratic, q = {q}"
        got = _call("obs_step", obs_step, w.clone(), h_inv.clone(), q)
        _expect(isinstance(got, (tuple, list)) and len(got) == 2,
                f"obs_step should return a pair (increase, new_w), got {type(got).__name__}")
        inc, new_w = got[0], got[1]
        if isinstance(inc, torch.Tensor):
            raise CheckFailed(f"the increase should be a Python float, got a {inc.dtype} tensor of shape "
                              f"{tuple(inc.shape)}: take its value with .item() (or float(...))")
        _expect(isinstance(inc, (int, float)) and not isinstance(inc, bool),
                f"the increase should be a number (a Python float), got {type(inc).__name__}")
        _expect(isinstance(new_w, torch.Tensor) and new_w.shape == w.shape,
                f"new_w should be a tensor of w's shape {tuple(w.shape)}, got {type(new_w).__name__}"
                f"{tuple(new_w.shape) if isinstance(new_w, torch.Tensor) else ''}")
        new_w = new_w.detach().double()
        tol = 1e-3 * abs(want_inc) + 1e-9  # float32 arithmetic is fine
        if abs(inc - want_inc) > tol:
            wq, hqq, iqq = w[q].item(), h[q, q].item(), h_inv[q, q].item()
            why = next((m for v, m in (
                (0.5 * hqq * wq ** 2, "that is OBD's 1/2 h_qq w_q^2, the increase when the other weights stay put; "
                                      "letting them move costs less: divide by [H^-1]_qq instead"),
                (wq ** 2 / iqq, "that is twice the increase: 1/2 d^T H d has a factor 1/2"),
                (0.5 * iqq * wq ** 2, "divide by [H^-1]_qq, do not multiply by it")) if
                        abs(inc - v) <= 1e-3 * abs(v) + 1e-9), "the least increase is w_q^2 / (2 [H^-1]_qq)")
            _expect(False, f"{where}: the increase should be {want_inc:.6f}, got {inc:.6f}: {why}")
        _expect(abs(new_w[q].item()) < 1e-4 * (1 + w.abs().max().item()),
                f"{where}: new_w[q] should be 0 (the weight is removed), got {new_w[q].item():+.6f}"
                + ("; check the sign of the update" if abs(new_w[q].item() - 2 * w[q].item()) < 1e-6 else ""))
        if not torch.allclose(new_w, want_w, rtol=1e-3, atol=1e-4):
            others = torch.arange(n) != q
            only_q = torch.allclose(new_w[others], w[others], atol=1e-9)
            _expect(False, f"{where}: new_w is not the w + d that reaches the least increase"
                    + (": only weight q changed; OBS moves the others to compensate, d = -(w_q / [H^-1]_qq) H^-1 e_q"
                       if only_q else " (d = -(w_q / [H^-1]_qq) times column q of H^-1)"))
    _passed("obs_step", len(cases))


@_own_rng
def check_global_masks(global_masks):
    """global_masks(scores, sparsity): {layer: float 0/1 mask}, one threshold over all layers, exactly
    round(sparsity · total) zeros, ties split."""
    _callable(global_masks, "global_masks")
    torch.manual_seed(0)
    scores = {"a": torch.rand(6, 5) * 10, "b": torch.rand(4, 3, 3), "c": torch.full((2, 7), 0.5)}  # c: all tied
    tied = {"a": torch.tensor([1.0, 2.0, 3.0, 3.0, 3.0, 3.0]), "b": torch.tensor([[3.0, 3.0], [5.0, 6.0]])}
    signed = {"a": torch.tensor([[-4.0, 0.5, 2.0], [-0.1, 3.0, -2.5]]), "b": torch.tensor([1.0, -3.0, 0.2, 4.0])}
    cases = [(scores, s) for s in (0.2, 0.5, 0.9, 0.0, 1.0)] + [(tied, 0.5), (tied, 0.25),
                                                                  (scores, 0.37),   # 29.6 zeros: round to 30
                                                                  (signed, 0.4)]    # a negative score is low
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
        _expect(zeros == want or zeros != int(s * total),
                f"at sparsity {s}: expected exactly round({s} · {total}) = {want} zeros, got {zeros}: "
                f"{s} · {total} = {s * total:.4g}; round it, int() truncates")
        kth = torch.cat([v.flatten() for v in sc.values()]).sort().values[want - 1] if want else None
        ties = kth is not None and int((torch.cat([v.flatten() for v in sc.values()]) == kth).sum()) > 1
        hint = "; several scores tie at the threshold: prune exactly enough of them (a stable sort splits ties)" \
            if ties and zeros != want else "; one global threshold over all layers"
        _expect(zeros == want, f"at sparsity {s}: expected exactly {want} zeros over all {total} scores, got {zeros}{hint}")
        kept = torch.cat([sc[k][masks[k] != 0] for k in sc])
        pruned = torch.cat([sc[k][masks[k] == 0] for k in sc])
        if kept.numel() and pruned.numel() and kept.min() < pruned.max():
            magnitude = bool(kept.abs().min() >= pruned.abs().max())
            _expect(False, f"at sparsity {s}: a kept score is smaller than a pruned one" + (
                ": prune the lowest scores themselves, not the smallest |score| (a score is already an importance; "
                "a negative one ranks below every positive one)" if magnitude else
                " in another layer (the threshold must be global, not per layer)"))
    _passed("global_masks", len(cases))
