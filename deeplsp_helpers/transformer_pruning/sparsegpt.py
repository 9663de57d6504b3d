"""SparseGPT: prune a linear layer and update its remaining weights on the calibration Hessian; the reconstruction
error a pruned layer leaves."""

from __future__ import annotations

import torch

from .. import masks
from .._validate import check_fraction, check_ints
from .wanda import _check_matrix, _check_pattern


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
    check_ints(("blocksize", blocksize, 1))
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
