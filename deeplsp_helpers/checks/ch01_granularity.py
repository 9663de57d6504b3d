"""Chapter 01, pruning granularity: N:M rows, the CSR break-even, a fine-grained mask."""

from __future__ import annotations

import torch
from torch import nn

from ._harness import _call, _callable, _compare_numbers, _expect, _number, _own_rng, _passed


def _row_nm_ok(mask, n, m):
    rows, cols = mask.shape
    padded = nn.functional.pad(mask.float(), (0, (-cols) % m))
    return bool((padded.reshape(rows, -1, m).sum(-1) <= n).all())


@_own_rng
def check_row_nm_ok(row_nm_ok):
    """row_nm_ok(mask, n, m): does every group of m consecutive entries of every row hold at most n ones?"""
    from ..masks import nm_mask

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


@_own_rng
def check_csr_break_even(csr_break_even):
    """csr_break_even(rows, cols): the sparsity above which CSR (32-bit values, indices) beats dense."""
    _callable(csr_break_even, "csr_break_even")
    _compare_numbers("csr_break_even", csr_break_even, [(128, 1152), (7, 3), (1000, 10), (1, 1), (3, 500)],
                     lambda rows, cols: 1 - (32 * rows * cols - 32 * (rows + 1)) / (64 * rows * cols),
                     "the row-pointer array has rows + 1 entries")


@_own_rng
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
