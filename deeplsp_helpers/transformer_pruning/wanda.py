"""Wanda's scores and the masks chapter 08 draws from any per-weight score: per output row, or N:M along the
input dimension."""

from __future__ import annotations

import torch

from .. import masks
from .._validate import check_fraction, check_ints, check_tensor


def _check_matrix(w, what: str = "weight") -> torch.Tensor:
    """``w.detach()``: a finite, floating-point, non-empty ``[out_features, in_features]`` matrix."""
    return check_tensor(w, what, floating=True, ndim=2, dims=" [out_features, in_features]", finite=True)


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's importance ``|W_ij| * ||X_j||``: a weight matters as much as its size times the size of the input
    it multiplies. ``input_norms[j]`` scales column ``j`` (input feature ``j``) of ``weight [out, in]``.

    Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language Models",
    arXiv:2306.11695. Compare scores within each output row: :func:`row_mask`.
    """
    w = _check_matrix(weight)
    norms = check_tensor(input_norms, "input_norms [in_features] (e.g. from activation_norms)", floating=True,
                         finite=True)
    if norms.shape != (w.shape[1],):
        raise ValueError(f"input_norms must have shape ({w.shape[1]},) (one norm per input column of a weight "
                         f"{tuple(w.shape)}), got {tuple(norms.shape)}")
    if (norms < 0).any():
        raise ValueError("input_norms must be non-negative (they are L2 norms)")
    return w.abs() * norms.to(w).unsqueeze(0)  # [out, in] * [1, in]


def _check_scores(scores) -> torch.Tensor:
    s = _check_matrix(scores, "scores")
    if (s < 0).any():
        raise ValueError("scores must be non-negative (a magnitude, Wanda or SparseGPT score), got a negative entry")
    return s


def _check_pattern(pattern) -> float | tuple[int, int]:
    """``pattern`` as a sparsity in [0, 1] or an ``(n, m)`` pair with ``1 <= n <= m``."""
    if isinstance(pattern, (tuple, list)):
        if len(pattern) != 2:
            raise ValueError(f"an N:M pattern must be a pair of positive ints (n, m), e.g. (2, 4), got {pattern!r}")
        n, m = pattern
        check_ints(("n of the N:M pattern", n, 1), ("m of the N:M pattern", m, 1))
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
