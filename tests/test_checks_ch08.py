"""Chapter 08 (pruning transformers): its exercise checks accept right answers and reject known-wrong ones, with a message."""

import copy

import torch
from check_cases import chapter_tests
from torch import nn

from deeplsp_helpers import masks
from deeplsp_helpers.checks import ch08_transformers


def wanda_mask(weight, input_norms, sparsity):
    scores = weight.abs() * input_norms  # [out, in] * [in]: input j scales column j
    k = round(sparsity * weight.shape[1])
    mask = torch.ones_like(weight)
    mask.scatter_(1, scores.argsort(dim=1)[:, :k], 0.0)
    return mask


def _wanda_with_package(weight, input_norms, sparsity):
    from deeplsp_helpers import transformer_pruning

    return transformer_pruning.row_mask(transformer_pruning.wanda_scores(weight, input_norms), sparsity).bool()


def _wanda_keep_lowest(weight, input_norms, sparsity):
    return 1 - wanda_mask(weight, input_norms, 1 - sparsity)


def _wanda_row_norms(weight, input_norms, sparsity):  # input_norms[j] applied to row j
    scores = weight.abs() * input_norms[:, None]
    k = round(sparsity * weight.shape[1])
    return torch.ones_like(weight).scatter_(1, scores.argsort(dim=1)[:, :k], 0.0)


def _wanda_floor(weight, input_norms, sparsity):  # int() instead of round()
    scores = weight.abs() * input_norms
    return torch.ones_like(weight).scatter_(1, scores.argsort(dim=1)[:, :int(sparsity * weight.shape[1])], 0.0)


def _wanda_global(weight, input_norms, sparsity):  # one threshold over the whole layer
    flat = (weight.abs() * input_norms).flatten()
    mask = torch.ones_like(flat)
    mask[flat.argsort()[:round(sparsity * weight.shape[1]) * weight.shape[0]]] = 0
    return mask.view_as(weight)


def nm_mask_rows(scores, n, m):
    groups = scores.reshape(scores.shape[0], -1, m)  # [out, in/m, m]
    return torch.zeros_like(groups).scatter_(2, groups.topk(n, dim=2).indices, 1.0).reshape(scores.shape)


def _nm_with_package(scores, n, m):  # the package's N:M mask keeps the largest |w|: shift the scores to >= 0 first
    return masks.nm_mask(scores - scores.min(), n, m, dim=1)


def _keep_head_features(attn, keep):
    """Keep only the features ``keep`` of q/k/v (rows) and out_proj (columns), as new Linear layers."""
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, len(keep))
        new.weight.data, new.bias.data = old.weight.data[keep].clone(), old.bias.data[keep].clone()
        setattr(attn, name, new)
    old = attn.out_proj
    new = nn.Linear(len(keep), old.out_features)
    new.weight.data, new.bias.data = old.weight.data[:, keep].clone(), old.bias.data.clone()
    attn.out_proj = new
    return attn


def remove_head(attn, h):
    d = attn.head_dim
    return _keep_head_features(attn, torch.tensor([i for i in range(attn.num_heads * d) if i // d != h]))


def _remove_head_with_package(attn, h):
    from deeplsp_helpers import transformer_pruning

    return transformer_pruning.remove_heads(attn, [h])


def _remove_head_rows(attn, h):  # removes rows h .. h + d - 1 instead of the head's block h·d ..
    d = attn.head_dim
    return _keep_head_features(attn, torch.tensor([i for i in range(attn.num_heads * d) if not h <= i < h + d]))


def _remove_head_keep_out_proj(attn, h):
    out = attn.out_proj
    remove_head(attn, h)
    attn.out_proj = out
    return attn


def _remove_head_copy(attn, h):
    return remove_head(copy.deepcopy(attn), h)


def _remove_head_no_bias(attn, h):  # rebuilds the layers without their biases
    d = attn.head_dim
    keep = torch.tensor([i for i in range(attn.num_heads * d) if i // d != h])
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, len(keep), bias=False)
        new.weight.data = old.weight.data[keep].clone()
        setattr(attn, name, new)
    new = nn.Linear(len(keep), attn.out_proj.out_features, bias=False)
    new.weight.data = attn.out_proj.weight.data[:, keep].clone()
    attn.out_proj = new
    return attn


def _remove_head_keep_recomputed(attn, h):  # num_heads read again after q_proj has shrunk
    for name in ("q_proj", "k_proj", "v_proj"):
        d = attn.head_dim
        keep = torch.tensor([i for i in range(attn.num_heads * d) if i // d != h])
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, len(keep))
        new.weight.data, new.bias.data = old.weight.data[keep].clone(), old.bias.data[keep].clone()
        setattr(attn, name, new)
    return attn


def _remove_head_from_new_q(attn, h):  # k and v cut from the already smaller q_proj: an index out of range
    d = attn.head_dim
    keep = torch.tensor([i for i in range(attn.num_heads * d) if i // d != h])
    for name in ("q_proj", "k_proj", "v_proj"):
        old = attn.q_proj  # copy-pasted: always q_proj
        new = nn.Linear(old.in_features, len(keep))
        new.weight.data, new.bias.data = old.weight.data[keep].clone(), old.bias.data[keep].clone()
        setattr(attn, name, new)
    return attn


RIGHT_ALSO = {  # the first answer is the notebook's; each one must pass
    "wanda_mask": [wanda_mask, _wanda_with_package],
    "nm_mask_rows": [nm_mask_rows, _nm_with_package],
    "remove_head": [remove_head, _remove_head_with_package],
}
RIGHT = {name: answers[0] for name, answers in RIGHT_ALSO.items()}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "wanda_mask": [
        (lambda w, norms, s: wanda_mask(w, torch.ones_like(norms), s), "magnitude pruning"),
        (_wanda_keep_lowest, "keep the highest"),
        (_wanda_row_norms, "RuntimeError|column j"),
        (_wanda_global, "within each output row"),
        (lambda w, norms, s: w.abs() * norms, "only 0 and 1"),
        (_wanda_floor, "rounds .* down"),
    ],
    "nm_mask_rows": [
        (lambda scores, n, m: nm_mask_rows(-scores, n, m), "not the lowest"),
        (lambda scores, n, m: torch.zeros_like(scores).scatter_(1, scores.topk(n * scores.shape[1] // m, dim=1).indices,
                                                                1.0), "of the row"),
        (lambda scores, n, m: nm_mask_rows(scores.T.contiguous(), n, m).T, "RuntimeError|not down the columns"),
        (lambda scores, n, m: nm_mask_rows(scores, n, m).long(), "float 0/1 tensor or a bool"),
        (lambda scores, n, m: nm_mask_rows(scores.abs(), n, m), "not the largest \\|score\\|"),
    ],
    "remove_head": [
        (_remove_head_rows, "rows"), (_remove_head_keep_out_proj, "columns"), (_remove_head_copy, "in place"),
        (lambda attn, h: None, "in place and return"),
        (_remove_head_no_bias, "has no bias"),
        (_remove_head_keep_recomputed, "compute the rows to keep once"),
        (_remove_head_from_new_q, "IndexError.*index the original layers"),
    ],
}

WRONG = {name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()}

globals().update(chapter_tests(ch08_transformers, RIGHT, WRONG, WRONG_TOLD, RIGHT_ALSO))  # test_… functions for pytest
