"""Chapter 08, pruning transformers: a Wanda mask, an N:M mask within rows, removing one attention head."""

from __future__ import annotations

import copy

import torch

from ._harness import CheckFailed, _call, _callable, _expect, _mask_problem, _own_rng, _passed


def _per_row_lowest(scores, k):
    """0/1 mask removing the ``k`` lowest scores of every row (scores distinct in the cases)."""
    mask = torch.ones_like(scores)
    if k:
        mask.scatter_(1, scores.argsort(dim=1)[:, :k], 0.0)
    return mask


@_own_rng
def check_wanda_mask(wanda_mask):
    """wanda_mask(weight, input_norms, sparsity): a 0/1 mask of ``weight [out, in]`` removing, in every output row,
    the ``round(sparsity · in)`` weights with the lowest ``|W_ij| · input_norms[j]``."""
    _callable(wanda_mask, "wanda_mask")
    gen = torch.Generator().manual_seed(0)
    cases = []
    for (rows, cols), sparsity in (((4, 8), 0.5), ((6, 6), 0.5), ((3, 10), 0.3), ((3, 6), 0.25), ((2, 5), 0.0)):
        w = torch.randn(rows, cols, generator=gen)
        norms = torch.rand(cols, generator=gen) * 0.5 + 0.1
        norms[1] = 20.0                               # one input feature with a large norm ...
        w[:, 1] *= 0.05                               # ... and small weights: Wanda keeps them, magnitude does not
        cases.append((w, norms, sparsity))
    for w, norms, sparsity in cases:
        before = w.clone(), norms.clone()
        got = _call("wanda_mask", wanda_mask, w, norms, sparsity)
        _expect(torch.equal(w, before[0]) and torch.equal(norms, before[1]), "wanda_mask must not change its inputs")
        problem = _mask_problem(got, w.shape)
        _expect(problem is None, f"wanda_mask: {problem}")
        got = got.float()
        k = round(sparsity * w.shape[1])
        want = _per_row_lowest(w.abs() * norms, k)
        if torch.equal(got, want):
            continue
        variants = [
            (_per_row_lowest(w.abs(), k), "that is magnitude pruning: multiply |W_ij| by the norm of input j"),
            (_per_row_lowest(w * norms, k), "score the magnitude |W_ij|, not the signed weight"),
            (_per_row_lowest(-(w.abs() * norms), k), "remove the lowest scores, keep the highest"),
        ]
        if w.shape[0] == w.shape[1]:
            variants.append((_per_row_lowest(w.abs() * norms[:, None], k),
                             "input_norms[j] belongs to input feature j, column j of the weight, not row j"))
        flat = (w.abs() * norms).flatten()
        glob = torch.ones_like(flat)
        glob[flat.argsort()[:k * w.shape[0]]] = 0
        variants.append((glob.view_as(w), "compare within each output row: remove the same number from every row"))
        variants.append((_per_row_lowest(w.abs() * norms, int(sparsity * w.shape[1])),
                         f"remove round(sparsity · in) = {k} per row (int() rounds {sparsity * w.shape[1]:g} down)"))
        why = next((message for mask, message in variants if torch.equal(got, mask)),
                   f"remove the {k} lowest |W_ij| · input_norms[j] of every row")
        raise CheckFailed(f"wanda_mask on a {tuple(w.shape)} weight at sparsity {sparsity}: wrong mask: {why}")
    _passed("wanda_mask", len(cases))


def _nm_ref(scores, n, m):
    """Keep the ``n`` highest of every ``m`` consecutive scores of each row."""
    groups = scores.reshape(scores.shape[0], -1, m)
    return torch.zeros_like(groups).scatter_(2, groups.topk(n, dim=2).indices, 1.0).reshape(scores.shape)


@_own_rng
def check_nm_mask_rows(nm_mask_rows):
    """nm_mask_rows(scores, n, m): a 0/1 mask of ``scores [out, in]`` keeping the ``n`` highest scores of every group
    of ``m`` consecutive entries of each row (``in`` a multiple of ``m``)."""
    _callable(nm_mask_rows, "nm_mask_rows")
    gen = torch.Generator().manual_seed(1)
    cases = [(torch.rand(3, 8, generator=gen), 2, 4), (torch.rand(2, 16, generator=gen), 4, 8),
             (torch.rand(4, 6, generator=gen), 1, 3), (torch.rand(8, 8, generator=gen), 2, 4),
             (torch.randn(3, 8, generator=gen), 2, 4)]  # signed scores: a negative score is low, whatever its size
    for scores, n, m in cases:
        before = scores.clone()
        got = _call("nm_mask_rows", nm_mask_rows, scores, n, m)
        _expect(torch.equal(scores, before), "nm_mask_rows must not change the scores")
        problem = _mask_problem(got, scores.shape)
        _expect(problem is None, f"nm_mask_rows: {problem}")
        got = got.float()
        groups = scores.reshape(scores.shape[0], -1, m)
        want = _nm_ref(scores, n, m)
        if torch.equal(got, want):
            continue
        lowest = torch.zeros_like(groups).scatter_(2, (-groups).topk(n, dim=2).indices, 1.0).reshape(scores.shape)
        row_top = torch.zeros_like(scores).scatter_(1, scores.topk(n * scores.shape[1] // m, dim=1).indices, 1.0)
        by_size = torch.zeros_like(groups).scatter_(2, groups.abs().topk(n, dim=2).indices, 1.0).reshape(scores.shape)
        if torch.equal(got, lowest):
            why = "keep the highest scores of each group, not the lowest"
        elif torch.equal(got, by_size):
            why = "keep the highest scores themselves, not the largest |score|: a score is already an importance, " \
                  "and a negative one ranks below every positive one"
        elif torch.equal(got, row_top):
            why = f"that keeps the highest {n * scores.shape[1] // m} of the row; keep {n} in *every* group of {m}"
        elif scores.shape[0] % m == 0 and torch.equal(got, _nm_ref(scores.T.contiguous(), n, m).T):
            why = "the groups run along each row (consecutive input features), not down the columns"
        else:
            why = f"keep the {n} highest of every {m} consecutive entries of each row"
        raise CheckFailed(f"nm_mask_rows on scores {tuple(scores.shape)}, {n}:{m}: wrong mask: {why}")
    _passed("nm_mask_rows", len(cases))


@_own_rng
def check_remove_head(remove_head):
    """remove_head(attn, h): remove head ``h`` of a ``models.SelfAttention`` physically, in place (its rows of q/k/v,
    its columns of out_proj), and return ``attn``; the output keeps its shape ``[N, T, dim]``."""
    from ..models import SelfAttention

    _callable(remove_head, "remove_head")
    torch.manual_seed(0)
    cases = [(SelfAttention(12, 3), 1), (SelfAttention(8, 4, head_dim=3), 3), (SelfAttention(10, 2), 0)]
    for attn, h in cases:
        attn.eval()
        d, heads = attn.head_dim, attn.num_heads
        x = torch.randn(2, 5, attn.out_proj.out_features)
        zeroed = copy.deepcopy(attn)  # the same model with head h silenced: what removal must compute
        with torch.no_grad():
            zeroed.out_proj.weight[:, h * d:(h + 1) * d] = 0
        want = zeroed(x)
        where = f"remove_head on {heads} heads of {d} (dim {x.shape[-1]}), head {h}"
        try:
            got = _call("remove_head", remove_head, attn, h)
        except CheckFailed as failed:
            hint = ""
            if "IndexError" in str(failed) or "out of bounds" in str(failed):
                hint = (f"; the rows to keep index the original layers ({heads * d} rows each): build each new layer "
                        f"from its own old one, and read attn.num_heads (it follows q_proj's weight) before "
                        f"replacing q_proj")
            raise CheckFailed(f"{where}: {failed}{hint}") from None
        _expect(got is attn, f"{where}: change attn in place and return it (the same object)")
        sizes = {name: getattr(attn, name).weight.shape for name in ("q_proj", "k_proj", "v_proj", "out_proj")}
        for name in ("q_proj", "k_proj", "v_proj"):
            _expect(sizes[name] == ((heads - 1) * d, x.shape[-1]), f"{where}: {name}.weight should be "
                    f"{[(heads - 1) * d, x.shape[-1]]} (its {d} rows of head {h} gone), got {list(sizes[name])}"
                    + (": attn.num_heads follows q_proj's weight, so it changed when q_proj was replaced; compute the "
                       "rows to keep once, before replacing any layer" if sizes[name][0] == (heads - 2) * d else ""))
        _expect(sizes["out_proj"] == (x.shape[-1], (heads - 1) * d), f"{where}: out_proj.weight should be "
                f"{[x.shape[-1], (heads - 1) * d]} (its {d} *columns* of head {h} gone; the output width stays), "
                f"got {list(sizes['out_proj'])}")
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            layer = getattr(attn, name)
            _expect(layer.bias is not None, f"{where}: the new {name} has no bias, but the old one had one: build it "
                    f"with a bias and copy the kept entries" + (" (all of them: out_proj's bias is per output, and "
                                                                "the output width stays)" if name == "out_proj" else ""))
            if name != "out_proj":
                _expect(layer.bias.shape == ((heads - 1) * d,), f"{where}: {name}.bias must lose the head's entries "
                        f"too: shape {[(heads - 1) * d]}, got {list(layer.bias.shape)}")
        _expect(attn.num_heads == heads - 1, f"{where}: num_heads should be {heads - 1}, got {attn.num_heads}")
        out = _call("the attention after remove_head", attn, x)
        _expect(out.shape == want.shape, f"{where}: the output must keep its shape {tuple(want.shape)}, got "
                                         f"{tuple(out.shape)}")
        _expect(torch.allclose(out, want, atol=1e-6), f"{where}: the output should equal the original's with head {h} "
                f"silenced; head {h} is rows {h * d}..{(h + 1) * d - 1} of q/k/v and those columns of out_proj "
                f"(head j spans j·head_dim … (j+1)·head_dim − 1)")
    _passed("remove_head", len(cases))
