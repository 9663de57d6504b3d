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

The functions live in five modules, one concern each: :mod:`.sublayers` (finding the sublayers, calibration
statistics), :mod:`.wanda` (scores and masks), :mod:`.sparsegpt`, :mod:`.structure` (heads and neurons) and
:mod:`.one_shot` (:func:`prune_one_shot`: every block pruned in order, each calibrated on the pruned blocks before it);
``from deeplsp_helpers import transformer_pruning`` gives all of them.
"""

from .one_shot import ONE_SHOT_METHODS, prune_one_shot
from .sparsegpt import reconstruction_error, sparsegpt_prune
from .structure import head_importance, neuron_importance, remove_heads, remove_mlp_neurons
from .sublayers import activation_norms, attention_modules, block_linears, input_hessian, mlp_modules
from .wanda import mask_from_scores, row_mask, wanda_scores

__all__ = ["attention_modules", "mlp_modules", "block_linears", "activation_norms", "input_hessian", "wanda_scores",
           "row_mask", "mask_from_scores", "sparsegpt_prune", "reconstruction_error", "head_importance",
           "neuron_importance", "remove_heads", "remove_mlp_neurons", "ONE_SHOT_METHODS", "prune_one_shot"]
