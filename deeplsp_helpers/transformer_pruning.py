"""Pruning transformers (chapter 08): Wanda, SparseGPT, and attention heads / MLP neurons removed physically.

One-shot, without fine-tuning, on the linear layers of the attention and MLP sublayers:

- :func:`wanda_scores` ``|W_ij| * ||X_j||``, with the input-feature norms from :func:`activation_norms`;
- :func:`mask_from_scores`: the ``s`` lowest scores of every output row (Wanda's comparison group), or N:M
  along the input dimension (through :func:`deeplsp_helpers.masks.nm_mask`);
- :func:`sparsegpt_prune`: the SparseGPT layer solver on the Hessian ``X X^T`` from :func:`input_hessian`;
  :func:`reconstruction_error` measures what a pruned layer loses on the calibration inputs.

Structured: :func:`head_importance` / :func:`neuron_importance` apply a chapter-02 criterion per head / per
hidden neuron, and :func:`remove_heads` / :func:`remove_mlp_neurons` slice the weights. A head lives in rows of
q/k/v and columns of the output projection, a hidden neuron in a row of ``fc1`` and a column of ``fc2``: both are
*inside* their sublayer, whose input and output keep the residual stream's width. So, unlike a removed
convolution channel (chapter 05), nothing outside the sublayer changes: no LayerNorm, no other block, no
position embedding needs a fix-up.

Every layer is an ``nn.Linear`` with weight ``[out_features, in_features]``: an output row ``i`` is one output
feature, an input column ``j`` one input feature.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from . import masks
from ._validate import check_finite, check_fraction, check_module

__all__ = ["attention_modules", "mlp_modules", "block_linears", "activation_norms", "input_hessian", "wanda_scores",
           "row_mask", "mask_from_scores", "sparsegpt_prune", "reconstruction_error", "head_importance",
           "neuron_importance", "remove_heads", "remove_mlp_neurons"]

_QKV = ("q_proj", "k_proj", "v_proj")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name  # the model itself is named ""


# --- finding the sublayers ---------------------------------------------------------------------------------------

def _is_attention(m: nn.Module) -> bool:
    return (all(isinstance(getattr(m, a, None), nn.Linear) for a in (*_QKV, "out_proj"))
            and isinstance(getattr(m, "head_dim", None), int))


def _is_mlp(m: nn.Module) -> bool:
    return all(isinstance(getattr(m, a, None), nn.Linear) for a in ("fc1", "fc2"))


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's attention sublayers by name: modules with ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``
    (``nn.Linear``) and an int ``head_dim``, e.g. :class:`deeplsp_helpers.models.SelfAttention`."""
    check_module(model)
    return {n: m for n, m in model.named_modules() if _is_attention(m)}


def mlp_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The model's MLP sublayers by name: modules with ``fc1`` and ``fc2`` (``nn.Linear``)."""
    check_module(model)
    return {n: m for n, m in model.named_modules() if _is_mlp(m)}


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers that chapter 08 prunes: q/k/v/out of every attention sublayer and fc1/fc2 of every MLP
    (not the patch embedding, not the classification head), by their names in ``model``."""
    out = {}
    for prefix, m in attention_modules(model).items():
        out.update({_join(prefix, a): getattr(m, a) for a in (*_QKV, "out_proj")})
    for prefix, m in mlp_modules(model).items():
        out.update({_join(prefix, a): getattr(m, a) for a in ("fc1", "fc2")})
    if not out:
        raise ValueError("model has no attention (q/k/v/out_proj) or MLP (fc1/fc2) sublayers")
    return out


# --- calibration statistics --------------------------------------------------------------------------------------

def _check_layers(model: nn.Module, layers) -> dict[str, nn.Linear]:
    if layers is None:
        return block_linears(model)
    if not isinstance(layers, Mapping) or not layers:
        raise TypeError("layers must be a non-empty dict {name: nn.Linear}, e.g. block_linears(model), or None")
    owned = {id(m) for m in model.modules()}
    for name, m in layers.items():
        if not isinstance(m, nn.Linear):
            raise TypeError(f"layers[{name!r}] must be an nn.Linear, got {type(m).__name__}")
        if id(m) not in owned:
            raise ValueError(f"layers[{name!r}] is not a module of this model")
    return dict(layers)


def _collect(model: nn.Module, layers, batches: Iterable, stat) -> dict[str, torch.Tensor]:
    """Run the calibration batches through ``model`` (eval mode, no gradients) and sum, for every layer,
    ``stat(x)`` over its inputs ``x`` flattened to ``[tokens, in_features]`` (float64)."""
    check_module(model)
    layers = _check_layers(model, layers)
    if batches is None or isinstance(batches, torch.Tensor) or not hasattr(batches, "__iter__"):
        raise TypeError("batches must be an iterable of calibration batches: X tensors or (X, y) pairs")
    state = dict.fromkeys(layers)
    seen = dict.fromkeys(layers, 0)

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0].detach().reshape(-1, module.in_features).double()  # all tokens: [N, T, in] -> [N*T, in]
            state[name] = stat(x) if state[name] is None else state[name] + stat(x)
            seen[name] += len(x)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was = model.training
    model.eval()
    n_batches = 0
    try:
        with torch.no_grad():
            for batch in batches:
                X = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(X, torch.Tensor):
                    raise TypeError(f"a calibration batch must be a tensor or an (X, y) pair, got {type(batch).__name__}")
                model(X)
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if n_batches == 0:
        raise ValueError("batches is empty: give at least one calibration batch")
    unused = [n for n, c in seen.items() if c == 0]
    if unused:
        raise ValueError(f"layer(s) {', '.join(unused)} saw no input: they are not used by the model's forward")
    return state


def activation_norms(model: nn.Module, layers: Mapping[str, nn.Linear] | None,
                     batches: Iterable) -> dict[str, torch.Tensor]:
    """``{name: ||X_j||_2}`` for every input feature ``j`` of every layer: the L2 norm over all calibration tokens
    (every token of every image of every batch) of the layer's input, collected with forward hooks.

    Args:
        layers: ``{name: nn.Linear}`` of ``model``; ``None`` for :func:`block_linears`.
        batches: calibration batches, ``X`` tensors or ``(X, y)`` pairs (e.g. ``data.calibration_batches``
            from the training split). Labels are not used.
    Returns:
        A float32 tensor ``[in_features]`` per layer; equal to ``sqrt(diag(input_hessian(...)))``.
    """
    sq = _collect(model, layers, batches, lambda x: x.pow(2).sum(0))
    return {n: s.sqrt().float() for n, s in sq.items()}


def input_hessian(model: nn.Module, layers: Mapping[str, nn.Linear] | None,
                  batches: Iterable) -> dict[str, torch.Tensor]:
    """``{name: H = X X^T}`` for every layer, ``X = [in_features, tokens]`` its calibration inputs: the Hessian of
    the layer's reconstruction error ``||W X - W' X||^2`` with respect to a row of ``W'`` (up to a factor 2).

    Accumulated in float64 over all tokens of all batches, returned as float32 ``[in_features, in_features]``. The
    SparseGPT paper scales it by ``2 / n_samples``; the solution does not depend on the scale (the dampening is
    relative to the mean diagonal). Computed here for all layers in one pass through the dense model; the paper
    prunes block by block and takes each block's inputs from the already pruned blocks before it.
    """
    hs = _collect(model, layers, batches, lambda x: x.T @ x)  # [in, tokens] @ [tokens, in]
    return {n: h.float() for n, h in hs.items()}


# --- scores and masks --------------------------------------------------------------------------------------------

def _check_matrix(w, what: str = "weight") -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {w.dtype}")
    if w.ndim != 2 or w.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 2-D [out_features, in_features] matrix, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{what} has NaN or infinite entries")
    return w.detach()


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's importance ``|W_ij| * ||X_j||``: a weight matters as much as its size times the size of the input
    it multiplies. ``input_norms[j]`` scales column ``j`` (input feature ``j``) of ``weight [out, in]``.

    Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language Models",
    arXiv:2306.11695. Compare scores within each output row: :func:`row_mask`.
    """
    w = _check_matrix(weight)
    if not isinstance(input_norms, torch.Tensor) or not input_norms.is_floating_point():
        raise TypeError("input_norms must be a floating-point tensor [in_features], e.g. from activation_norms")
    if input_norms.shape != (w.shape[1],):
        raise ValueError(f"input_norms must have shape ({w.shape[1]},) (one norm per input column of a weight "
                         f"{tuple(w.shape)}), got {tuple(input_norms.shape)}")
    if not torch.isfinite(input_norms).all() or (input_norms < 0).any():
        raise ValueError("input_norms must be finite and non-negative (they are L2 norms)")
    return w.abs() * input_norms.detach().to(w).unsqueeze(0)  # [out, in] * [1, in]


def _check_scores(scores) -> torch.Tensor:
    s = _check_matrix(scores, "scores")
    if (s < 0).any():
        raise ValueError("scores must be non-negative (a magnitude, Wanda or SparseGPT score), got a negative entry")
    return s


def _check_pattern(pattern) -> float | tuple[int, int]:
    """``pattern`` as a sparsity in [0, 1] or an ``(n, m)`` pair with ``1 <= n <= m``."""
    if isinstance(pattern, (tuple, list)):
        if len(pattern) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pattern):
            raise ValueError(f"an N:M pattern must be a pair of positive ints (n, m), e.g. (2, 4), got {pattern!r}")
        n, m = pattern
        if n > m:
            raise ValueError(f"N:M needs n <= m, got n={n}, m={m}")
        return (n, m)
    return check_fraction(pattern, "sparsity", high_open=False)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the ``round(sparsity * in_features)`` lowest scores of every output row: the same number in each row
    (Wanda's comparison group). Ties are broken by position (the first column goes first), as in
    :mod:`deeplsp_helpers.masks`. Returns a float mask of ``scores``' shape, 1 = keep."""
    s = _check_scores(scores)
    sparsity = check_fraction(sparsity, "sparsity", high_open=False)
    k = round(sparsity * s.shape[1])
    mask = torch.ones_like(s)
    if k:
        order = torch.argsort(s, dim=1, stable=True)  # ascending within each row; ties keep column order
        mask.scatter_(1, order[:, :k], 0.0)
    return mask


def mask_from_scores(scores: torch.Tensor, pattern: float | tuple[int, int]) -> torch.Tensor:
    """A mask from any non-negative score ``[out, in]``: ``pattern`` a sparsity -> :func:`row_mask`; an ``(n, m)``
    pair -> keep the ``n`` highest of every ``m`` consecutive inputs of each row (``masks.nm_mask`` along the
    input dimension, the layout NVIDIA's 2:4 sparse tensor cores need)."""
    s = _check_scores(scores)
    pattern = _check_pattern(pattern)
    if isinstance(pattern, tuple):
        return masks.nm_mask(s, *pattern, dim=1)
    return row_mask(s, pattern)


# --- SparseGPT ---------------------------------------------------------------------------------------------------

def _check_hessian(hessian, n: int) -> torch.Tensor:
    h = _check_matrix(hessian, "hessian")
    if h.shape != (n, n):
        raise ValueError(f"hessian must be [in_features, in_features] = ({n}, {n}) for this weight, got {tuple(h.shape)}")
    if not torch.allclose(h, h.T, rtol=1e-4, atol=1e-6 * float(h.abs().max().clamp_min(1e-30))):
        raise ValueError("hessian must be symmetric (H = X X^T, e.g. from input_hessian)")
    if (torch.diagonal(h) < 0).any():
        raise ValueError("hessian has a negative diagonal entry, which X X^T cannot have (e.g. from input_hessian)")
    return h


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, pattern: float | tuple[int, int] | None = None,
                    *, mask: torch.Tensor | None = None, blocksize: int = 128,
                    percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: prune a linear layer and update its remaining weights so that ``W X`` changes as little as
    possible on the calibration inputs ``X`` (``hessian = X X^T``).

    Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
    arXiv:2301.00774 (Algorithm 1), which builds on Optimal Brain Surgeon (Hassibi & Stork, NeurIPS 1992).

    Columns (input features) are processed left to right. Removing weight ``w_ij`` of row ``i`` costs
    ``w_ij^2 / [H^-1]_jj`` of reconstruction error if the later weights of the row are then corrected by the
    OBS update ``delta = -(w_ij / [H^-1]_jj) * H^-1[j, j:]``; the rows share ``H``, so all rows are done at
    once. The inverse Hessian of the columns still to be processed is read off one Cholesky factor of ``H^-1``.

    Args:
        weight: ``[out_features, in_features]``; not changed.
        hessian: ``[in_features, in_features]``, ``X X^T`` of the layer's calibration inputs (:func:`input_hessian`).
        pattern: a sparsity in [0, 1]: in each block of ``blocksize`` columns the entries with the smallest
            ``w^2 / [H^-1]_jj`` are removed, across all rows of the block (the paper's adaptive mask selection;
            rows may end up with different counts); the whole layer gets exactly ``round(sparsity * numel)``
            zeros. Or an ``(n, m)`` pair: ``n`` of every ``m`` consecutive inputs of a row kept, chosen by the
            same criterion when the group is reached.
        mask: instead of ``pattern``, a fixed 0/1 mask ``[out, in]`` (1 = keep), e.g. a magnitude or Wanda mask:
            then only the weight update is SparseGPT's.
        blocksize: columns whose mask is chosen together (and whose updates are applied together); a multiple
            of ``m`` for N:M.
        percdamp: ``percdamp * mean(diag(H))`` is added to the diagonal, so ``H`` can be inverted even when the
            calibration inputs do not span every direction.
    Returns:
        ``(new_weight, mask)``: the pruned and updated weight (zero where the mask is 0), in ``weight``'s dtype,
        and the float mask, 1 = keep.
    """
    W0 = _check_matrix(weight)
    rows, cols = W0.shape
    H = _check_hessian(hessian, cols).to(W0.device, torch.float64, copy=True)
    if (pattern is None) == (mask is None):
        raise ValueError("give exactly one of pattern (a sparsity or an (n, m) pair) and mask")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != W0.shape:
            raise ValueError(f"mask must be a tensor of the weight's shape {tuple(W0.shape)}")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold only 0 (prune) and 1 (keep)")
        prune_all = mask.detach().to(W0.device) == 0  # [rows, cols], True = prune
    else:
        pattern = _check_pattern(pattern)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive int, got {blocksize!r}")
    if isinstance(pattern, tuple) and blocksize % pattern[1]:
        raise ValueError(f"blocksize {blocksize} must be a multiple of m={pattern[1]}, so that no N:M group "
                         "straddles two blocks")
    percdamp = check_fraction(percdamp, "percdamp", low_open=False, high_open=False)

    W = W0.double().clone()  # float64: the sequence of updates is numerically gentle this way
    # 1. An input that is zero in every calibration token (H_jj = 0) leaves the error unchanged whatever its
    #    weights are: give it H_jj = 1 so H can be inverted, and make its weights the first to go.
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    # 2. Dampening: H + lambda I with lambda a fraction of the mean diagonal.
    H += percdamp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype, device=H.device)
    # 3. H^-1, then its upper Cholesky factor U (H^-1 = U^T U). Row j of U, from the diagonal on, is
    #    [H_F^-1]_{j, j:} / sqrt([H_F^-1]_jj) for the inverse Hessian H_F^-1 of the columns j.. still to be
    #    processed, so every OBS update below is one row of U: no matrix is inverted inside the loop.
    L, info = torch.linalg.cholesky_ex(H)
    if info != 0:
        raise ValueError("the dampened Hessian is not positive definite: increase percdamp, or calibrate on more "
                         "tokens (and check that hessian is X X^T)")
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)  # [cols, cols], upper triangular

    removed_so_far = 0
    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()            # the block's weights, updated as we go: [rows, count]
        Q1 = torch.zeros_like(W1)           # the block's final (pruned) weights
        Err1 = torch.zeros_like(W1)         # the scaled errors, to update the columns after the block
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)               # [count]

        # 4. Choose the mask of this block (unstructured): the smallest w^2 / [H^-1]_jj^2 over the whole block.
        #    (d_j = U_jj = sqrt([H_F^-1]_jj), so d_j^2 is the OBS denominator.) Cumulative rounding makes the
        #    layer's total exactly round(sparsity * numel).
        if mask is not None:
            prune1 = prune_all[:, i1:i2].clone()
        elif isinstance(pattern, float):
            crit = W1.pow(2) / d.pow(2).unsqueeze(0)
            crit[:, dead[i1:i2]] = 0.0
            k = min(round(pattern * rows * i2) - removed_so_far, crit.numel())
            order = torch.argsort(crit.flatten(), stable=True)
            prune1 = torch.zeros(crit.numel(), dtype=torch.bool, device=W.device)
            prune1[order[:k]] = True
            prune1 = prune1.view_as(crit)
            removed_so_far += k
        else:
            prune1 = torch.zeros_like(W1, dtype=torch.bool)  # filled group by group below

        for i in range(i2 - i1):
            if isinstance(pattern, tuple) and i % pattern[1] == 0:
                # N:M: choose the group's mask now, with the weights as updated so far
                n, m = pattern
                crit = W1[:, i:i + m].pow(2) / d[i:i + m].pow(2).unsqueeze(0)
                crit[:, dead[i1 + i:i1 + i + m]] = 0.0
                prune1[:, i:i + m] = masks.nm_mask(crit, n, m, dim=1) == 0
            # 5. Prune column i, and spread its error over the block's later columns (the OBS update).
            w = W1[:, i]
            q = torch.where(prune1[:, i], torch.zeros_like(w), w)
            Q1[:, i] = q
            err = (w - q) / d[i]                                        # [rows]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)   # [rows, 1] * [1, count - i]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = ~prune1
        # 6. The columns after the block receive the block's accumulated update in one matrix product.
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    return W.to(W0.dtype), keep.to(W0.dtype)


def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||W X - W' X||_F^2 = trace((W - W') H (W - W')^T)`` with ``H = X X^T``: what a pruned layer loses on its
    calibration inputs, without keeping the inputs."""
    w, w2 = _check_matrix(weight), _check_matrix(new_weight, "new_weight")
    if w.shape != w2.shape:
        raise ValueError(f"weight and new_weight must have the same shape, got {tuple(w.shape)} and {tuple(w2.shape)}")
    h = _check_hessian(hessian, w.shape[1]).to(w.device, torch.float64)
    delta = (w - w2.to(w.device)).double()
    return float(((delta @ h) * delta).sum())


# --- structured: heads and MLP neurons ---------------------------------------------------------------------------

def _scores_for(model: nn.Module, scores, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The per-weight scores of the named layers: ``scores[name]`` if given, else |w| (L1 magnitude)."""
    modules = dict(model.named_modules())
    if scores is None:
        return {n: modules[n].weight.detach().abs() for n in names}
    if not isinstance(scores, Mapping):
        raise TypeError("scores must be a dict {layer name: per-weight score}, e.g. criteria.taylor(model, batches)")
    out = {}
    for n in names:
        if n not in scores:
            raise ValueError(f"scores has no entry for {n!r}; pass a criterion computed on this model "
                             "(e.g. criteria.magnitude(model))")
        if not isinstance(scores[n], torch.Tensor) or scores[n].shape != modules[n].weight.shape:
            raise ValueError(f"scores[{n!r}] must be a tensor of the weight's shape {tuple(modules[n].weight.shape)}")
        out[n] = scores[n].detach()
    return out


def head_importance(model: nn.Module, scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{attention name: tensor [num_heads]}``: a per-weight criterion summed over the weights a head owns (its
    rows of q/k/v and its columns of ``out_proj``), i.e. over everything :func:`remove_heads` deletes.

    Args:
        scores: ``{layer name: per-weight score}`` from :mod:`deeplsp_helpers.criteria` (e.g. ``taylor``,
            ``magnitude``); default the L1 magnitude ``|w|``. Summing a criterion over a group is the group
            importance of DepGraph (Fang et al., arXiv:2301.12900); per head as in Michel, Levy & Neubig, "Are
            Sixteen Heads Really Better than One?", arXiv:1905.10650 (which uses a gradient-based score).
    """
    attns = attention_modules(model)
    if not attns:
        raise ValueError("model has no attention sublayers (q_proj, k_proj, v_proj, out_proj and head_dim)")
    out = {}
    for name, attn in attns.items():
        h, d = attn.num_heads, attn.head_dim
        s = _scores_for(model, scores, [_join(name, a) for a in (*_QKV, "out_proj")])
        for layer, t in s.items():  # a NaN score would rank heads arbitrarily (NaN compares false with everything)
            check_finite(t, f"the scores of {layer!r}")
        total = sum(s[_join(name, a)].reshape(h, d, -1).sum(dim=(1, 2)) for a in _QKV)  # rows: [h*d, D] -> [h]
        out[name] = total + s[_join(name, "out_proj")].reshape(-1, h, d).sum(dim=(0, 2))   # columns: [D, h*d] -> [h]
    return out


def neuron_importance(model: nn.Module, scores: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{mlp name: tensor [hidden]}``: a per-weight criterion summed over hidden neuron ``j``'s row of ``fc1`` and
    column of ``fc2`` (what :func:`remove_mlp_neurons` deletes). ``scores`` as in :func:`head_importance`."""
    mlps = mlp_modules(model)
    if not mlps:
        raise ValueError("model has no MLP sublayers (fc1 and fc2)")
    out = {}
    for name in mlps:
        s = _scores_for(model, scores, [_join(name, "fc1"), _join(name, "fc2")])
        for layer, t in s.items():
            check_finite(t, f"the scores of {layer!r}")
        out[name] = s[_join(name, "fc1")].sum(1) + s[_join(name, "fc2")].sum(0)  # [hidden, D] rows + [D, hidden] columns
    return out


def _indices(idx, size: int, what: str, unit: str) -> list[int]:
    if isinstance(idx, torch.Tensor):
        if idx.ndim != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"{what} must be a sequence of int indices or a 1-D integer tensor")
        idx = idx.tolist()
    if isinstance(idx, (str, bytes)) or not hasattr(idx, "__iter__"):
        raise TypeError(f"{what} must be a sequence of int indices, got {type(idx).__name__}")
    idx = list(idx)
    for i in idx:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"{what} must hold ints, got {i!r}")
        if not 0 <= i < size:
            raise ValueError(f"{unit} index {i} is out of range: there are {size} {unit}s (0..{size - 1})")
    if len(set(idx)) != len(idx):
        raise ValueError(f"{what} lists an index twice: {sorted(idx)}")
    if len(idx) == size:
        raise ValueError(f"cannot remove all {size} {unit}s; keep at least one")
    return idx


def _shrink(layer: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep only the rows (``dim=0``, with the bias) or columns (``dim=1``) ``keep`` of ``layer``, in place."""
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight.index_select(dim, keep).clone(), layer.weight.requires_grad)
        if dim == 0 and layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[keep].clone(), layer.bias.requires_grad)
    layer.out_features, layer.in_features = layer.weight.shape


def remove_heads(attention: nn.Module, heads: Sequence[int]) -> nn.Module:
    """Physically remove attention heads: their rows of ``q_proj``/``k_proj``/``v_proj`` (weights and biases) and
    their columns of ``out_proj``, in place; ``num_heads`` follows. ``attention`` may also be a block with an
    ``attn`` attribute.

    The output projection's bias and width stay: the sublayer still maps the residual stream's width to itself, so
    nothing outside it changes. A head whose output is already zero (its ``out_proj`` columns, or its ``v_proj``
    rows and bias, zeroed) is removed without changing the model's outputs.
    Returns the attention module.
    """
    check_module(attention, "attention")
    if not _is_attention(attention) and _is_attention(getattr(attention, "attn", None)):
        attention = attention.attn
    if not _is_attention(attention):
        raise TypeError("attention must have nn.Linear q_proj, k_proj, v_proj, out_proj and an int head_dim "
                        "(models.SelfAttention), or be a block with such an .attn")
    h, d = attention.num_heads, attention.head_dim
    if any(getattr(attention, a).out_features != h * d for a in _QKV) or attention.out_proj.in_features != h * d:
        raise ValueError(f"q/k/v/out projections do not all have num_heads x head_dim = {h} x {d} features")
    gone = set(_indices(heads, h, "heads", "head"))
    kept = [j for j in range(h) if j not in gone]
    if not gone:
        return attention
    keep = torch.tensor([j * d + c for j in kept for c in range(d)], device=attention.q_proj.weight.device)
    for a in _QKV:
        _shrink(getattr(attention, a), keep, 0)
    _shrink(attention.out_proj, keep, 1)
    return attention


def remove_mlp_neurons(block: nn.Module, neurons: Sequence[int]) -> nn.Module:
    """Physically remove hidden neurons of an MLP: their rows of ``fc1`` (and bias entries) and their columns of
    ``fc2``, in place. ``block`` is the MLP (``fc1``, ``fc2``) or a block with an ``mlp`` attribute.

    ``fc2``'s bias and output width stay (the residual stream's width), so nothing outside the MLP changes. A
    neuron whose contribution is already zero (its ``fc2`` column zeroed, or its ``fc1`` row and bias zeroed:
    GELU(0) = 0) is removed without changing the outputs. Returns the MLP module.
    """
    check_module(block, "block")
    mlp = block if _is_mlp(block) else getattr(block, "mlp", None)
    if mlp is None or not _is_mlp(mlp):
        raise TypeError("block must have nn.Linear fc1 and fc2 (models.MLP), or be a block with such an .mlp")
    hidden = mlp.fc1.out_features
    if mlp.fc2.in_features != hidden:
        raise ValueError(f"fc1 has {hidden} outputs but fc2 takes {mlp.fc2.in_features} inputs")
    gone = set(_indices(neurons, hidden, "neurons", "neuron"))
    if not gone:
        return mlp
    keep = torch.tensor([j for j in range(hidden) if j not in gone], device=mlp.fc1.weight.device)
    _shrink(mlp.fc1, keep, 0)
    _shrink(mlp.fc2, keep, 1)
    return mlp
