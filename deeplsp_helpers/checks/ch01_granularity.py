"""Chapter 01, pruning granularity: N:M rows, the CSR break-even measured on real CSR tensors, a fine-grained mask."""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from ._harness import (
    CheckFailed,
    _as_real,
    _call,
    _callable,
    _cause,
    _expect,
    _explain,
    _mask_problem,
    _own_rng,
    _passed,
    _same_real,
    _show,
)


def _where(mask, n, m):
    shown = mask.int().tolist() if mask.numel() <= 16 else f"({mask.dtype})"
    return f"row_nm_ok(mask, {n}, {m}) on the {tuple(mask.shape)} mask {shown}"


def _row_nm_ok(mask, n, m, *, tail=True, rows=True, strict=False, per_row=False):
    """The right answer (all keywords default), and the known-wrong variants the messages name."""
    mask = mask.float() if rows else mask.float().T
    r, cols = mask.shape
    if per_row:  # only the row's total is bounded
        return bool((mask.sum(1) <= n * -(-cols // m)).all())
    if not tail:
        mask, cols = mask[:, : cols // m * m], cols // m * m
        if cols == 0:
            return True
    padded = nn.functional.pad(mask, (0, (-cols) % m))
    sums = padded.reshape(r, -1, m).sum(-1)
    return bool((sums < n).all() if strict else (sums <= n).all())


@_own_rng
def check_row_nm_ok(row_nm_ok):
    """row_nm_ok(mask, n, m): does every group of m consecutive entries of every row hold at most n ones?
    The mask is a 2-D float 0/1 or bool tensor; the answer must be a Python bool."""
    from ..masks import nm_mask

    _callable(row_nm_ok, "row_nm_ok")
    torch.manual_seed(0)
    tail = torch.tensor([[1, 0, 0, 0, 1, 0, 0, 0, 1, 1.0]])      # only the ragged tail breaks 1:4
    columns = torch.tensor([[1, 1, 0, 0.0]] * 4)                   # rows fine, columns not
    exact = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0.0]])             # exactly n ones per group is allowed
    burst = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0.0]])             # 3 of 8 in the row, but 3 in one group of 4
    middle = torch.tensor([[1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0.0]])  # the middle group breaks 2:4
    short = torch.tensor([[1, 1, 1.0]])                            # a row shorter than m: one partial group
    extra = nm_mask(torch.randn(5, 11), 3, 8).clone()
    extra[2, :4] = 1
    cases = [(tail, 1, 4), (columns, 2, 4), (exact, 2, 4), (burst, 2, 4), (middle, 2, 4), (short, 2, 4),
             (nm_mask(torch.randn(6, 10), 2, 4), 2, 4), (nm_mask(torch.randn(3, 7), 1, 2).bool(), 1, 2),
             (extra.bool(), 3, 8), (extra, 3, 8), (torch.zeros(2, 5), 2, 4)]
    answers = []
    for mask, n, m in cases:
        got = _call("row_nm_ok", row_nm_ok, mask.clone(), n, m)
        _expect(isinstance(got, bool), f"{_where(mask, n, m)}: return a Python bool (True/False), got {_show(got)}"
                                       + (" (wrap it: bool(...))" if isinstance(got, torch.Tensor) else ""))
        answers.append(got)
    variants = [([_row_nm_ok(*case, **wrong) for case in cases], message) for wrong, message in (
        ({"tail": False}, "the last, shorter group of a row counts too"),
        ({"rows": False}, "the groups run along each row, not down the columns"),
        ({"strict": True}, "exactly n ones in a group is allowed (at most n)"),
        ({"per_row": True}, "every group of m must hold at most n ones, not the row on average"))]
    why = _explain(answers, variants)
    for (mask, n, m), got in zip(cases, answers):
        want = _row_nm_ok(mask, n, m)
        _expect(got == want, f"{_where(mask, n, m)} should be {want}, got {got}" + (f": {why}" if why else ""))
    _passed("row_nm_ok", len(cases))


def _csr_bits(rows, nnz):
    return 32 * nnz + 32 * nnz + 32 * (rows + 1)  # values, column indices, row pointers; 32 bits each


def _with_zeros(rows, cols, zeros, seed=0):
    """A [rows, cols] tensor of non-zero values (both signs) with exactly ``zeros`` zeros."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.rand(rows * cols, generator=gen) + 0.5) * (torch.randint(0, 2, (rows * cols,), generator=gen) * 2 - 1)
    w[torch.randperm(rows * cols, generator=gen)[:zeros]] = 0
    return w.reshape(rows, cols)


def _quiet(fn):
    """``fn`` without PyTorch's notice that sparse CSR support is in beta (once per hidden case would bury the
    check's own message)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
            return fn(*args, **kwargs)
    return wrapped


@_own_rng
def check_csr_break_even(csr_bits, csr_break_even):
    """csr_bits(w): the bits of a real CSR tensor built from the 2-D ``w`` (32 per value, column index and row
    pointer); csr_break_even(rows, cols): the smallest sparsity (zeros / (rows·cols)) at which that CSR takes
    fewer bits than dense storage (32·rows·cols), found by measuring with csr_bits."""
    _callable(csr_bits, "csr_bits")
    _callable(csr_break_even, "csr_break_even")
    csr_bits, csr_break_even = _quiet(csr_bits), _quiet(csr_break_even)
    torch.manual_seed(0)
    empty_row = _with_zeros(5, 4, 3, seed=1)
    empty_row[2] = 0
    measured = [_with_zeros(7, 13, 55, seed=2), empty_row, torch.zeros(3, 6), _with_zeros(4, 9, 0, seed=3),
                _with_zeros(1, 10, 4, seed=4), _with_zeros(12, 2, 20, seed=5)]
    for w in measured:
        rows, nnz = w.shape[0], int((w != 0).sum())
        want, before = _csr_bits(rows, nnz), w.clone()
        got = _call("csr_bits", csr_bits, w)
        _expect(torch.equal(w, before), "csr_bits must leave w unchanged")
        where = f"csr_bits on a {tuple(w.shape)} tensor with {nnz} non-zeros ({w.numel() - nnz} zeros)"
        if not _same_real(got, want):
            why = _cause(got, [
                (want // 8, "count bits, not bytes"),
                (_csr_bits(rows, nnz) - 32, "the row-pointer array has rows + 1 entries, not rows"),
                (32 * nnz + 64 * nnz + 64 * (rows + 1), "count 32 bits per index, as the table of section 4 does "
                 "(PyTorch's to_sparse_csr() stores its indices as int64, 64 bits each)"),
                (_csr_bits(rows, w.numel()), "count only the non-zeros: CSR does not store the zeros"),
                (32 * w.numel(), "that is the dense storage; build the CSR tensor (w.to_sparse_csr()) and count "
                                 "its values, col_indices and crow_indices")],
                "32 bits for each value, each column index and each of the rows + 1 row pointers")
            raise CheckFailed(f"{where} should take {want} bits, got {_show(got)}: {why}")
    shapes = [(7, 3), (2, 2), (1, 3), (7, 4), (3, 500), (1000, 10), (128, 1152)]  # the large ones last
    for rows, cols in shapes:
        numel, dense = rows * cols, 32 * rows * cols
        got = _call("csr_break_even", csr_break_even, rows, cols)
        s, tol = _as_real(got)
        where = f"csr_break_even({rows}, {cols})"
        _expect(s is not None and 0 <= s <= 1, f"{where} should be a sparsity between 0 and 1, got {_show(got)}")
        zeros = round(s * numel)
        crossing = (rows * cols + rows + 1) / (2 * rows * cols)
        slack = min(0.49, max(1e-3, 4 * tol * numel))  # a float32 answer cannot say more than this
        _expect(abs(s * numel - zeros) < slack,
                f"{where} = {s:.10g} is not a sparsity a {rows}x{cols} tensor can have ({s:.10g}·{numel} = "
                f"{s * numel:.4f} zeros is not a whole number): return zeros / (rows·cols) of the first tensor your "
                f"measurement finds smaller as CSR" + (" (the formula's crossing point is not a measured tensor)"
                                                       if _same_real(got, crossing) else ""))
        at = _call("csr_bits", csr_bits, _with_zeros(rows, cols, zeros))
        _expect(_as_real(at)[0] is not None and _as_real(at)[0] < dense,
                f"{where} = {s:.10g} ({zeros} zeros of {numel}): your csr_bits measures {_show(at)} bits there, "
                f"not fewer than the {dense} of dense storage" + (" (equal is not smaller)" if _same_real(at, dense)
                                                                 else ""))
        if zeros > 0:
            fewer = _call("csr_bits", csr_bits, _with_zeros(rows, cols, zeros - 1))
            _expect(_as_real(fewer)[0] is not None and _as_real(fewer)[0] >= dense,
                    f"{where} = {s:.10g} is not the smallest: with {zeros - 1} zeros ({(zeros - 1) / numel:.10g}) your "
                    f"csr_bits already measures {_show(fewer)} bits, fewer than the {dense} of dense storage")
    _passed("csr_bits and csr_break_even", len(measured) + len(shapes))


@_own_rng
def check_fine_grained_mask(fine_grained_mask):
    """fine_grained_mask(w, sparsity): a float 0/1 or bool mask of w's shape, zeroing exactly round(s·numel)
    entries with the smallest |w| (ties split), leaving w unchanged."""
    _callable(fine_grained_mask, "fine_grained_mask")
    torch.manual_seed(0)
    ties = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0], [-1.0, 1.0, 3.0, -1.0, 1.0]])
    cases = [(torch.randn(7, 13) - 0.5, 0.6),     # non-square, mostly negative; 54.6 zeros: round, not int
             (torch.randn(4, 3, 5), 0.25), (torch.randn(2, 3, 3, 3), 0.4), (ties, 0.5), (ties, 0.3),
             (torch.randn(3, 4), 0.3),            # 3.6 zeros: round to 4
             (torch.randn(3, 4), 0.0), (torch.randn(3, 4), 1.0)]
    for w, s in cases:
        before = w.clone()
        mask = _call("fine_grained_mask", fine_grained_mask, w, s)
        where = f"on a {tuple(w.shape)} tensor at sparsity {s}"
        _expect(torch.equal(w, before), f"{where}: fine_grained_mask must leave w unchanged (compute a new mask)")
        problem = _mask_problem(mask, w.shape)
        _expect(problem is None, f"{where}: {problem}")
        keep = mask != 0
        zeros, want = int((~keep).sum()), round(s * w.numel())
        if zeros != want:
            a = w.abs().flatten().sort().values
            threshold = a[want - 1] if want else None
            why = "zero exactly round(sparsity · numel) entries"
            if zeros == int(s * w.numel()):
                why = (f"{s}·{w.numel()} = {s * w.numel():.4g}: round it (to {want}), int() truncates to "
                       f"{int(s * w.numel())}")
            elif threshold is not None and zeros in (int((a <= threshold).sum()), int((a < threshold).sum())):
                why = f"{int((a == threshold).sum())} entries tie at |w| = {threshold.item():g}: split the ties " \
                      "(rank with a stable sort) to hit the count"
            raise CheckFailed(f"{where}: expected exactly {want} zeros, got {zeros}: {why}")
        if 0 < zeros < w.numel() and w.abs()[keep].min() < w.abs()[~keep].max():
            signed = w[keep].min() >= w[~keep].max()
            raise CheckFailed(f"{where}: a kept weight has a smaller |w| than a pruned one"
                              + (": rank by magnitude |w|, not by the signed value (a large negative weight matters)"
                                 if signed else ": prune the entries with the smallest |w|"))
    _passed("fine_grained_mask", len(cases))
