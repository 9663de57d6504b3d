"""Chapter 02 (pruning criteria): its exercise checks accept right answers and reject known-wrong ones, with a message."""

import numpy as np
import pytest
import torch
from check_cases import chapter_tests
from test_checks_ch01 import _mask_with_ties_over, fine_grained_mask
from torch import nn

from deeplsp_helpers import criteria
from deeplsp_helpers.checks import ch02_criteria


def one_layer(score):
    def fn(model, layer_name, batches):
        model.eval()
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


def obs_step(w, H_inv, q):
    increase = w[q].item() ** 2 / (2 * H_inv[q, q].item())
    return increase, w - w[q] / H_inv[q, q] * H_inv[:, q]


def obs_step_solved(w, H_inv, q):  # another correct answer: from H, in float32, as a list
    H = torch.linalg.inv(H_inv).float()
    keep = [i for i in range(len(w)) if i != q]
    new_w = w.float().clone()
    new_w[q] = 0.0
    if keep:  # the others minimise 1/2 d^T H d given d_q = -w_q: H_kk d_k = H_kq w_q
        new_w[keep] = w[keep].float() + torch.linalg.solve(H[keep][:, keep], H[keep, q] * w[q].float())
    d = new_w - w.float()
    return [float(0.5 * d @ H @ d), new_w]


def _global_threshold_masks(scores, sparsity):  # one global threshold that prunes every score tied with it
    flat = torch.cat([v.flatten() for v in scores.values()])
    k = round(sparsity * flat.numel())
    if k == 0:
        return {n: torch.ones_like(v) for n, v in scores.items()}
    t = flat.kthvalue(k).values
    return {n: (v > t).float() for n, v in scores.items()}


def _no_eval(model, layer_name, batches):  # the right formula, but dropout left on
    w = model.get_submodule(layer_name).weight
    total = torch.zeros_like(w)
    for X, y in batches:
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(X), y), [w])
        total += (w.detach() * g).abs()
    return total / len(batches)


def _taylor_variant(reduction="mean", accumulate=False, abs_of_mean=False):
    def fn(model, layer_name, batches):
        model.eval()
        w = model.get_submodule(layer_name).weight
        total, running, grads = torch.zeros_like(w), torch.zeros_like(w), []
        for X, y in batches:
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(X), y, reduction=reduction), [w])
            running = running + g
            grads.append(running if accumulate else g)
            total += (w.detach() * grads[-1]).abs()
        return (w.detach() * torch.stack(grads).mean(0)).abs() if abs_of_mean else total / len(batches)
    return fn


def _global_masks_truncated(scores, sparsity):  # int() where the statement says round
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = torch.ones(flat.numel())
    keep[flat.argsort(stable=True)[:int(sparsity * flat.numel())]] = 0
    out, i = {}, 0
    for k, s in scores.items():
        out[k] = keep[i:i + s.numel()].reshape(s.shape)
        i += s.numel()
    return out


def _per_layer_masks(scores, sparsity):
    return {k: fine_grained_mask(s, sparsity) for k, s in scores.items()}


RIGHT = {  # the notebook's answers
    "taylor_one_layer": one_layer(lambda w, g: (w * g).abs()),
    "obs_step": obs_step,
    "global_masks": global_masks,
}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "taylor_one_layer": [
        (_no_eval, "eval mode"),
        (_taylor_variant(reduction="sum"), "not the sum"),
        (_taylor_variant(accumulate=True), "accumulated"),
        (_taylor_variant(abs_of_mean=True), "mean g"),
        (lambda model, name, batches: one_layer(lambda w, g: (w * g).abs())(model, name, batches).sum(0), "shape"),
    ],
    "obs_step": [
        (lambda w, H_inv, q: (0.5 * torch.linalg.inv(H_inv)[q, q].item() * w[q].item() ** 2, obs_step(w, H_inv, q)[1]),
         "OBD's"),
        (lambda w, H_inv, q: (2 * obs_step(w, H_inv, q)[0], obs_step(w, H_inv, q)[1]), "factor 1/2"),
        (lambda w, H_inv, q: (obs_step(w, H_inv, q)[0], torch.where(torch.arange(len(w)) == q, 0.0, w)),
         "compensate"),
        (lambda w, H_inv, q: (obs_step(w, H_inv, q)[0], w + w[q] / H_inv[q, q] * H_inv[:, q]), "sign"),
        (lambda w, H_inv, q: obs_step(w, H_inv, q)[1], "pair"),
        (lambda w, H_inv, q: (0.5 * H_inv[q, q].item() * w[q].item() ** 2, obs_step(w, H_inv, q)[1]), "divide"),
    ],
    "global_masks": [
        (_global_threshold_masks, "tie"),
        (lambda scores, s: global_masks({k: v.abs() for k, v in scores.items()}, s), "not the smallest \\|score\\|"),
        (_global_masks_truncated, "int\\(\\) truncates"),
        (lambda scores, s: {k: m.bool() for k, m in global_masks(scores, s).items()}, "float masks"),
    ],
}

WRONG_ONLY = {  # wrong answers the check must reject, whatever its message
    "taylor_one_layer": [
        one_layer(lambda w, g: w * g),                                            # no absolute value
        lambda model, name, batches: one_layer(lambda w, g: (w * g).abs())(model, name, batches[:1]),  # 1 batch
    ],
    "global_masks": [_per_layer_masks,
                     lambda scores, s: {k: _mask_with_ties_over(v, s) for k, v in scores.items()}],
}
WRONG = {name: [answer for answer, _ in WRONG_TOLD.get(name, [])] + WRONG_ONLY.get(name, []) for name in RIGHT}

globals().update(chapter_tests(ch02_criteria, RIGHT, WRONG, WRONG_TOLD))  # test_… functions for pytest


def test_reference_answers_agree_with_the_package():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    assert torch.allclose(one_layer(lambda w, g: (w * g).abs())(model, "0", batches), criteria.taylor(model, batches)["0"])
    assert torch.allclose(one_layer(lambda w, g: g.abs())(model, "0", batches), criteria.gradient(model, batches)["0"])


def test_obs_step_accepts_any_correct_answer(capsys):
    from deeplsp_helpers import checks

    checks.check_obs_step(obs_step_solved)  # solved from H, float32, returned as a list
    checks.check_obs_step(lambda w, H_inv, q: (np.float64(obs_step(w, H_inv, q)[0]), obs_step(w, H_inv, q)[1].float()))
    assert capsys.readouterr().out.count("hidden cases passed") == 2
    with pytest.raises(checks.CheckFailed, match=r"Python float.*\.item\(\)"):  # the statement asks for a Python float
        checks.check_obs_step(lambda w, H_inv, q: (torch.tensor(obs_step(w, H_inv, q)[0]), obs_step(w, H_inv, q)[1]))
