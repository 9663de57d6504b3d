"""Chapter 01 (pruning granularity): its exercise checks accept right answers and reject known-wrong ones, with a message."""

import torch
from check_cases import chapter_tests
from torch import nn

from deeplsp_helpers import checks, masks
from deeplsp_helpers.checks import ch01_granularity


def row_nm_ok(mask, n, m):
    rows, cols = mask.shape
    padded = nn.functional.pad(mask, (0, (-cols) % m))
    return bool((padded.reshape(rows, -1, m).sum(-1) <= n).all())


def fine_grained_mask(w, sparsity):
    k = round(sparsity * w.numel())
    mask = torch.ones(w.numel())
    mask[w.abs().flatten().argsort()[:k]] = 0
    return mask.reshape(w.shape)


def _mask_with_ties_over(w, sparsity):  # a threshold that prunes every tie: too many zeros
    k = round(sparsity * w.numel())
    if k == 0:
        return torch.ones_like(w)
    return (w.abs() > w.abs().flatten().kthvalue(k).values).float()


def _signed_mask(w, sparsity):
    mask = torch.ones(w.numel())
    mask[w.flatten().argsort()[:round(sparsity * w.numel())]] = 0
    return mask.reshape(w.shape)


def csr_bits(w):
    t = w.to_sparse_csr()
    return 32 * (t.values().numel() + t.col_indices().numel() + t.crow_indices().numel())


def _with_zeros(rows, cols, zeros):
    w = torch.ones(rows * cols)
    w[:zeros] = 0
    return w.reshape(rows, cols)


def break_even_by(bits):
    def csr_break_even(rows, cols):
        low, high = 0, rows * cols  # bits fall as zeros grow: bisect for the first count below dense
        while low < high:
            mid = (low + high) // 2
            if bits(_with_zeros(rows, cols, mid)) < 32 * rows * cols:
                high = mid
            else:
                low = mid + 1
        return low / (rows * cols)
    return csr_break_even


def _csr_bits_int32(w):  # the real arrays, with 32-bit indices, counted in bytes
    t = w.to_sparse_csr()
    real = torch.sparse_csr_tensor(t.crow_indices().int(), t.col_indices().int(), t.values(), t.shape)
    return 8 * sum(a.numel() * a.element_size() for a in (real.values(), real.col_indices(), real.crow_indices()))


def _break_even_closed_form(rows, cols):  # nnz < (rows·cols - rows - 1) / 2
    nnz = (rows * cols - rows - 1) // 2 if (rows * cols - rows - 1) % 2 else (rows * cols - rows - 1) // 2 - 1
    return (rows * cols - nnz) / (rows * cols)


def _csr_bits_rows(w):
    return 64 * int((w != 0).sum()) + 32 * w.shape[0]


def _csr_bits_int64(w):
    t = w.to_sparse_csr()
    return 8 * sum(a.numel() * a.element_size() for a in (t.values(), t.col_indices(), t.crow_indices()))


def _fine_grained_bool(w, sparsity):
    return fine_grained_mask(w, sparsity).bool()


def _fine_grained_int(w, sparsity):
    mask = torch.ones(w.numel())
    mask[w.abs().flatten().argsort()[:int(sparsity * w.numel())]] = 0
    return mask.reshape(w.shape)


def _fine_grained_in_place(w, sparsity):
    w.abs_()
    return fine_grained_mask(w, sparsity)


RIGHT_ALSO = {  # the first answer is the notebook's; each one must pass
    "row_nm_ok": [row_nm_ok, lambda mask, n, m: row_nm_ok(mask.float(), n, m)],
    "csr_break_even": [(csr_bits, break_even_by(csr_bits)), (_csr_bits_int32, _break_even_closed_form),
                       (lambda w: torch.tensor(float(csr_bits(w))), break_even_by(csr_bits))],
    "fine_grained_mask": [fine_grained_mask, _fine_grained_bool, lambda w, s: fine_grained_mask(w, s).double()],
}
RIGHT = {name: answers[0] for name, answers in RIGHT_ALSO.items()}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "row_nm_ok": [
        (lambda mask, n, m: row_nm_ok(mask[:, : mask.shape[1] // m * m], n, m) if mask.shape[1] >= m else True,
         "shorter group"),
        (lambda mask, n, m: row_nm_ok(mask.T.contiguous(), n, m), "along each row"),
        (lambda mask, n, m: bool((nn.functional.pad(mask.float(), (0, (-mask.shape[1]) % m))
                                  .reshape(mask.shape[0], -1, m).sum(-1) < n).all()), "exactly n ones"),
        (lambda mask, n, m: bool((mask.float().sum(1) <= n * -(-mask.shape[1] // m)).all()), "not the row on average"),
        (lambda mask, n, m: torch.tensor(row_nm_ok(mask, n, m)), "Python bool"),
    ],
    "csr_break_even": [
        ((_csr_bits_rows, break_even_by(_csr_bits_rows)), "rows \\+ 1"),
        ((_csr_bits_int64, break_even_by(_csr_bits_int64)), "32 bits per index"),
        ((lambda w: csr_bits(w) // 8, break_even_by(csr_bits)), "bits, not bytes"),
        ((lambda w: 32 * w.numel(), break_even_by(csr_bits)), "that is the dense storage"),
        ((csr_bits, lambda rows, cols: (rows * cols + rows + 1) / (2 * rows * cols)), "not|equal"),
        ((csr_bits, break_even_by(lambda w: csr_bits(w) - 1)), "not fewer|equal is not smaller"),
        ((csr_bits, lambda rows, cols: break_even_by(csr_bits)(rows, cols) + 1 / (rows * cols)), "not the smallest"),
    ],
    "fine_grained_mask": [
        (_signed_mask, "not by the signed value"),
        (_mask_with_ties_over, "split the ties"),
        (lambda w, s: fine_grained_mask(w, s)[0], "shape"),
        (_fine_grained_int, "int\\(\\) truncates"),
        (lambda w, s: w * fine_grained_mask(w, s), "only 0 and 1"),
        (lambda w, s: fine_grained_mask(w, s).long(), "float 0/1 tensor or a bool tensor"),
        (_fine_grained_in_place, "leave w unchanged"),
    ],
}

WRONG = {name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()}

globals().update(chapter_tests(ch01_granularity, RIGHT, WRONG, WRONG_TOLD, RIGHT_ALSO))  # test_… functions for pytest


def test_reference_answer_agrees_with_the_package():
    torch.manual_seed(0)
    w = torch.randn(6, 9)
    assert torch.equal(fine_grained_mask(w, 0.4), masks.fine_grained_mask(w, 0.4).float())


def test_a_check_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.check_fine_grained_mask(fine_grained_mask)  # this check seeds the RNG for its hidden cases
    assert torch.equal(torch.rand(3), expected)
