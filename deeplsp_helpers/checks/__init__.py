"""Automatic checks for the chapters' exercises.

Each ``check_…`` runs a learner's function on cases the notebook does not show (non-square tensors,
negative weights, ties at the threshold, grouped convolutions, masks that must survive optimizer steps …)
and compares it with what it must compute. A wrong answer raises :class:`CheckFailed` saying which case
failed and what was expected; an exercise not written yet (``raise NotImplementedError``) says so. In
Jupyter a failed check shows that one message, not a traceback. A passed check prints how many cases it ran.

One module per chapter (``ch00_getting_started`` … ``ch09_language_models``) holds that chapter's checks; the shared
harness (calling the learner's function, comparing, reporting) is in ``_harness``. Call them from here:
``from deeplsp_helpers import checks; checks.check_obs_step(obs_step)``.
"""

from __future__ import annotations

from ._harness import CheckFailed
from .answers import check_answer
from .ch00_getting_started import (
    check_macs_by_layer,
    check_pick_on_validation,
    check_sparse_storage_bits,
)
from .ch01_granularity import check_csr_break_even, check_fine_grained_mask, check_row_nm_ok
from .ch02_criteria import check_global_masks, check_obs_step, check_taylor_one_layer
from .ch03_timing import check_iterative_steps, check_keep_zero, check_one_shot_limit, check_sparsity_plan
from .ch04_torch_prune import check_compound_sparsity, check_strip_pruning, check_threshold_pruning
from .ch05_structured import check_coupled_layers, check_keep_inputs, check_speedup_at
from .ch06_deeplsp import check_global_sparsity, check_is_dead, check_speedup
from .ch07_deployment import check_masked_layers, check_ort_predict, check_pruning_gain_per_runtime
from .ch08_transformers import check_nm_mask_rows, check_remove_head, check_wanda_mask
from .ch09_language_models import check_block_influence, check_decode_step, check_perplexity_from_logits

__all__ = [
    "CheckFailed",
    "check_answer",                                                                  # experiments
    "check_sparse_storage_bits", "check_macs_by_layer", "check_pick_on_validation",  # 00
    "check_row_nm_ok", "check_csr_break_even", "check_fine_grained_mask",            # 01
    "check_taylor_one_layer", "check_obs_step", "check_global_masks",                # 02
    "check_iterative_steps", "check_keep_zero", "check_one_shot_limit",              # 03
    "check_sparsity_plan",                                                           # 03
    "check_compound_sparsity", "check_threshold_pruning", "check_strip_pruning",     # 04
    "check_coupled_layers", "check_keep_inputs", "check_speedup_at",                 # 05
    "check_is_dead", "check_global_sparsity", "check_speedup",                       # 06
    "check_ort_predict", "check_pruning_gain_per_runtime", "check_masked_layers",    # 07
    "check_wanda_mask", "check_nm_mask_rows", "check_remove_head",                   # 08
    "check_perplexity_from_logits", "check_block_influence", "check_decode_step",    # 09
]
