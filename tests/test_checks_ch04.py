"""Chapter 04 (torch.nn.utils.prune): its exercise checks accept right answers and reject known-wrong ones, with a message."""

import copy

import pytest
import torch
from check_cases import chapter_tests
from torch import nn
from torch.nn.utils import prune

from deeplsp_helpers import checks
from deeplsp_helpers.checks import ch04_torch_prune


class ThresholdPruning(prune.BasePruningMethod):
    PRUNING_TYPE = "unstructured"

    def __init__(self, threshold):
        self.threshold = threshold

    def compute_mask(self, t, default_mask):
        return default_mask * (t.abs() >= self.threshold).to(default_mask.dtype)

    @classmethod
    def apply(cls, module, name, threshold):
        return super().apply(module, name, threshold=threshold)


def strip_pruning(model):
    for mod in model.modules():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(mod, hook._tensor_name)
    return model


class SignedThreshold(ThresholdPruning):
    def compute_mask(self, t, default_mask):
        return default_mask * (t >= self.threshold).to(default_mask.dtype)


class StrictThreshold(ThresholdPruning):
    def compute_mask(self, t, default_mask):
        return default_mask * (t.abs() > self.threshold).to(default_mask.dtype)


def _remove_weight_only(model):
    for mod in model.modules():
        if prune.is_pruned(mod) and hasattr(mod, "weight_orig"):
            prune.remove(mod, "weight")
    return model


def _drop_hooks(model):
    for mod in model.modules():
        mod._forward_pre_hooks.clear()
    return model


def sparsity_after(layer, amounts):
    probe = copy.deepcopy(layer)
    for a in amounts:
        prune.l1_unstructured(probe, "weight", amount=a)
    return float((probe.weight == 0).float().mean())


def compound_sparsity(zeros, amounts):
    left = 1.0
    for a in amounts:
        left *= 1 - a
    return max(zeros, 1 - left)


def _sparsity_after_tensor(layer, amounts):  # a float32 0-d tensor is a fine answer
    probe = copy.deepcopy(layer)
    for a in amounts:
        prune.l1_unstructured(probe, "weight", amount=a)
    return (probe.weight == 0).float().mean()


def _formula(zeros, amounts):
    left = 1.0
    for a in amounts:
        left *= 1 - a
    return 1 - left


def _mask_zeros(layer, amounts):
    probe = copy.deepcopy(layer)
    for a in amounts:
        prune.l1_unstructured(probe, "weight", amount=a)
    return float((probe.weight_mask == 0).float().mean()) if amounts else float((probe.weight == 0).float().mean())


def _sparsity_in_place(layer, amounts):
    for a in amounts:
        prune.l1_unstructured(layer, "weight", amount=a)
    return float((layer.weight == 0).float().mean())


class BoolThreshold(ThresholdPruning):  # a bool mask is a mask too
    def compute_mask(self, t, default_mask):
        return (t.abs() >= self.threshold) & default_mask.bool()


class GlobalThreshold(ThresholdPruning):  # sees the whole tensor inside a container, so it combines the masks
    PRUNING_TYPE = "global"


class ZeroInPlace(ThresholdPruning):  # zeroes the weights, registers no mask
    @classmethod
    def apply(cls, module, name, threshold):
        with torch.no_grad():
            t = getattr(module, name)
            t[t.abs() < threshold] = 0


class ValuesNotMask(ThresholdPruning):
    def compute_mask(self, t, default_mask):
        return default_mask * t * (t.abs() >= self.threshold)


def _strip_by_buffers(model):
    for mod in model.modules():
        for name in [n[:-len("_mask")] for n, _ in mod.named_buffers(recurse=False) if n.endswith("_mask")]:
            prune.remove(mod, name)
    return model


def _strip_children_only(model):
    for mod in model.children():
        for hook in list(mod._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(mod, hook._tensor_name)
    return model


def _strip_weight_and_bias(model):
    for mod in model.modules():
        for name in ("weight", "bias"):
            if hasattr(mod, f"{name}_mask"):
                prune.remove(mod, name)
    return model


def _strip_everything(model):
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            prune.remove(mod, "weight")
    return model


def _strip_a_copy(model):
    return copy.deepcopy(strip_pruning(model))


def _strip_copy_first(model):  # a copy where the statement says in place: a pruned model cannot be deep-copied
    return strip_pruning(copy.deepcopy(model))


def _strip_by_hook_names(model):  # another right answer: the hooks say which tensors are pruned
    for mod in model.modules():
        names = [h._tensor_name for h in mod._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]
        for name in names:
            prune.remove(mod, name)
    return model


def _strip_by_orig_and_mask(model):  # another right answer: a pruned tensor leaves both name_orig and name_mask
    for mod in model.modules():
        for name in [n[:-len("_orig")] for n, _ in mod.named_parameters(recurse=False) if n.endswith("_orig")]:
            if hasattr(mod, f"{name}_mask"):
                prune.remove(mod, name)
    return model


RIGHT_ALSO = {  # the first answer is the notebook's; each one must pass
    "compound_sparsity": [(sparsity_after, compound_sparsity),
                          (_sparsity_after_tensor, lambda z, a: torch.tensor(compound_sparsity(z, a), dtype=torch.float32))],
    "threshold_pruning": [ThresholdPruning, BoolThreshold, GlobalThreshold],
    "strip_pruning": [strip_pruning, _strip_by_hook_names, _strip_by_orig_and_mask],
}
RIGHT = {name: answers[0] for name, answers in RIGHT_ALSO.items()}

WRONG_TOLD = {  # (wrong answer, what the message must say)
    "compound_sparsity": [
        ((_mask_zeros, compound_sparsity), "mask's zeros"),
        ((_sparsity_in_place, compound_sparsity), "changed the layer"),
        ((lambda layer, amounts: _formula(0, amounts), compound_sparsity), "that is the formula"),
        ((lambda layer, amounts: 100 * sparsity_after(layer, amounts), compound_sparsity), "not a percentage"),
        ((sparsity_after, _formula), "prunes them first"),
        ((sparsity_after, lambda z, a: z + (1 - z) * _formula(z, a)), "not spared"),
        ((sparsity_after, lambda z, a: min(1.0, sum(a))), "fraction of what the earlier calls left"),
    ],
    "threshold_pruning": [
        (SignedThreshold, "magnitude"), (StrictThreshold, "exactly at the threshold stays"),
        (ZeroInPlace, "super\\(\\).apply"),
        (ValuesNotMask, "only 0 and 1"),
    ],
    "strip_pruning": [
        (_remove_weight_only, "these remain"), (_drop_hooks, "these remain"),
        (lambda model: strip_pruning(model) and None, "return it"), (_strip_a_copy, "the same object"),
        (_strip_children_only, "nested"), (_strip_weight_and_bias, "whatever its name"),
        (_strip_everything, "ValueError"),
        (_strip_by_buffers, "row_mask that no pruning made"),   # every buffer named …_mask taken for a prune mask
        (_strip_copy_first, "cannot be deep-copied.*in place"),
    ],
}

WRONG = {name: [answer for answer, _ in told] for name, told in WRONG_TOLD.items()}

globals().update(chapter_tests(ch04_torch_prune, RIGHT, WRONG, WRONG_TOLD, RIGHT_ALSO))  # test_… functions for pytest


def test_check_rejects_a_function_instead_of_a_pruning_method():
    with pytest.raises(TypeError, match="BasePruningMethod"):
        checks.check_threshold_pruning(strip_pruning)
