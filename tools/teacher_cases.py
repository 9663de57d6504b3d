"""Teacher-only cases for the exercises, one function per check: ``teacher_<check>`` takes what the check cell
passes to ``checks.check_<check>`` and asserts on cases that are in neither the notebooks nor the installed package.

Build tooling, not installed with the package: ``tools/nbgrader_course.py`` copies each function, with the call,
into the hidden-tests region (``### BEGIN HIDDEN TESTS``) of its check cell in the nbgrader source notebooks. nbgrader
removes that region from what students receive and puts it back when it autogrades, so a student who reads the
installed package (its public cases) still meets cases they have not seen.

Each function is self-contained (it imports what it uses), so that it runs pasted into a notebook cell; it passes the
reference answers and fails known-wrong ones (``tests/test_nbgrader.py``). Exercises whose answer is read off the
learner's own measurement (``checks.check_answer``) have no teacher-only case: their check already compares the answer
with that measurement.

The functions live in three modules by chapter, ``teacher_cases_ch00_03.py``, ``teacher_cases_ch04_06.py`` and
``teacher_cases_ch07_09.py`` (next to this one); ``import teacher_cases`` gives all of them.
"""

from teacher_cases_ch00_03 import (  # noqa: F401  (re-exported: nbgrader_course.py and the tests read them here)
    teacher_csr_break_even,
    teacher_fine_grained_mask,
    teacher_global_masks,
    teacher_iterative_steps,
    teacher_keep_zero,
    teacher_macs_by_layer,
    teacher_obs_step,
    teacher_one_shot_limit,
    teacher_pick_on_validation,
    teacher_row_nm_ok,
    teacher_sparse_storage_bits,
    teacher_sparsity_plan,
    teacher_taylor_one_layer,
)
from teacher_cases_ch04_06 import (  # noqa: F401  (re-exported: nbgrader_course.py and the tests read them here)
    teacher_compound_sparsity,
    teacher_coupled_layers,
    teacher_global_sparsity,
    teacher_is_dead,
    teacher_keep_inputs,
    teacher_speedup,
    teacher_speedup_at,
    teacher_strip_pruning,
    teacher_threshold_pruning,
)
from teacher_cases_ch07_09 import (  # noqa: F401  (re-exported: nbgrader_course.py and the tests read them here)
    teacher_block_influence,
    teacher_decode_step,
    teacher_masked_layers,
    teacher_nm_mask_rows,
    teacher_ort_predict,
    teacher_perplexity_from_logits,
    teacher_pruning_gain_per_runtime,
    teacher_remove_head,
    teacher_wanda_mask,
)
