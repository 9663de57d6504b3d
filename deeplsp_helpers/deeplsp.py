"""The DeepLSP pipeline: sensitivity, measured latency, structured channel pruning, sensitivity-adaptive
unstructured pruning, mask removal, and a per-stage report. Chapter 06 builds it step by step.

"DeepLSP" is the name of the seed script this course grew from: *Deep* networks, *L*atency-aware
*S*tructured and unstructured *P*runing. Its latency-aware part is the structured stage pruned to a
requested speed-up with a measured latency table (:mod:`deeplsp_helpers.speedup`); its unstructured
stage is sensitivity-adaptive (:func:`prune_sensitivity_adaptive`, which the seed called
``prune_latency_aware``: that name is kept as an alias, although no latency is involved there).

CLI::

    python -m deeplsp_helpers.deeplsp --model vgg --out pruned.pt   # chapter 06's recipe (deeplsp_helpers.recipe)
    python -m deeplsp_helpers.deeplsp --model vgg --target-speedup 2.5 --costs latency --unstructured 0.5 \\
        --uniform --finetune-epochs 1 --no-distill --out pruned.pt
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from . import criteria, metrics
from ._validate import check_fraction, check_ints, check_module, check_number, check_shape
from .criteria import prunable_layers
from .latency import compare_speedups
from .masks import hooked_tensors, pruned_tensors
from .structured import LatencyAwareImportance, structured_channel_pruning

__all__ = ["compute_sensitivity", "prune_sensitivity_adaptive", "prune_latency_aware", "apply_unstructured_pruning",
           "sparsity_for_nonzero_factor", "remove_pruning_masks", "deployable_copy", "report_row", "apply_combined_pruning",
           "format_report"]


def compute_sensitivity(model: nn.Module, batches: Iterable | None = None, *, dummy: bool = False,
                        input_shape: Sequence[int] | None = None, num_classes: int = 10,
                        seed: int = 0) -> dict[str, float]:
    """Per-layer sensitivity: a 50/50 blend of mean |dL/dw| and mean |w|, each normalised over layers.

    The gradient term is chapter 02's :func:`deeplsp_helpers.criteria.gradient`: |dL/dw| of each
    batch, then the mean over batches (per-batch gradients of opposite sign must not cancel), then the
    mean over the layer's weights. Both terms are divided by their sum over the model's Conv2d/Linear
    layers before blending, so the gradient term (tiny numbers) and the weight term (larger numbers)
    weigh the same; the scores sum to 1. Higher = more sensitive = prune less.

    Args:
        batches: calibration batches ``(X, y)`` of real data from the **training** split.
        dummy: reproduce the seed script instead: one random input and random targets of
            ``input_shape`` (e.g. ``(8, 1, 28, 28)``). Its gradients describe noise, not the task.
    The model's gradients and mode are left untouched (gradients come from ``torch.autograd.grad``).
    """
    layers = prunable_layers(model)
    if dummy:
        if input_shape is None:
            raise ValueError("dummy=True needs input_shape, a batch shape such as (8, 1, 28, 28)")
        input_shape = check_shape(input_shape, "input_shape", min_len=2, example="(8, 1, 28, 28)")
        gen = torch.Generator().manual_seed(seed)
        batches = [(torch.randn(*input_shape, generator=gen),
                    torch.randint(0, num_classes, (input_shape[0],), generator=gen))]
    elif batches is None:
        raise ValueError("pass calibration batches of real data (from the training split), "
                         "or dummy=True with input_shape")
    grads = criteria.gradient(model, batches)
    g_mean = torch.stack([grads[n].mean() for n in layers])
    w_mean = torch.stack([m.weight.detach().abs().mean() for m in layers.values()])
    score = 0.5 * g_mean / g_mean.sum().clamp_min(1e-30) + 0.5 * w_mean / w_mean.sum().clamp_min(1e-30)
    return {name: float(s) for name, s in zip(layers, score)}


def _combine(sensitivities, names: Sequence[str]) -> dict[str, float]:
    maps = [sensitivities] if isinstance(sensitivities, Mapping) else list(sensitivities)
    if not maps or not all(isinstance(m, Mapping) for m in maps):
        raise TypeError("sensitivities must be a {layer: score} dict or a list of such dicts")
    total = dict.fromkeys(names, 0.0)
    for m in maps:
        missing, extra = set(names) - set(m), set(m) - set(names)
        if missing or extra:
            raise ValueError(f"sensitivity map does not match the model's layers (missing {sorted(missing)}, "
                             f"unknown {sorted(extra)})")
        vals = [float(m[k]) for k in names]
        if any(not math.isfinite(v) or v < 0 for v in vals) or sum(vals) <= 0:
            raise ValueError("sensitivity scores must be finite, >= 0, and not all zero")
        s = sum(vals)
        for k, v in zip(names, vals):
            total[k] += v / s
    return total


def _ratios_for(sens: dict[str, float], sizes: dict[str, int], target: float, max_ratio: float,
                alpha: float) -> dict[str, float]:
    """Per-layer ratios 1 - clip(c * s_rel**alpha, 1 - max_ratio, 1), with c found by bisection so that
    the parameter-weighted sparsity equals ``target``; s_rel is sensitivity relative to the mean."""
    mean = sum(sens.values()) / len(sens)
    rel = {k: max(v / mean, 1e-12) ** alpha for k, v in sens.items()}
    total = sum(sizes.values())

    def ratios(c):
        return {k: 1.0 - min(1.0, max(1.0 - max_ratio, c * rel[k])) for k in sens}

    def weighted(c):
        r = ratios(c)
        return sum(r[k] * sizes[k] for k in sens) / total

    lo, hi = 0.0, 1.0
    while weighted(hi) > target and hi < 1e12:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if weighted(mid) > target else (lo, mid)
    return ratios(hi)


def prune_sensitivity_adaptive(model: nn.Module, sensitivities, target_sparsity: float, *, max_ratio: float = 0.99,
                               alpha: float = 1.0) -> dict[str, float]:
    """Sensitivity-adaptive L1 unstructured pruning of every Conv2d/Linear weight, in place (with masks).

    ``sensitivities`` is one ``{layer: score}`` map or a list of them (e.g. an "edge" map from a small
    on-device batch and a "cloud" map from the validation set); each is normalised to sum 1, then they
    are added. A layer keeps a fraction of its weights proportional to its relative sensitivity
    (``** alpha``), clipped so each ratio lies in [0, ``max_ratio``]; the scale is solved so that the
    sparsity over all these weights, weighted by their sizes, equals ``target_sparsity``.
    Returns ``{layer: ratio}``.
    """
    layers = prunable_layers(model)
    target = check_fraction(target_sparsity, "target_sparsity", high=max_ratio, high_open=False)
    check_number(alpha, "alpha", 0)
    sens = _combine(sensitivities, list(layers))
    sizes = {k: m.weight.numel() for k, m in layers.items()}
    ratios = _ratios_for(sens, sizes, target, max_ratio, alpha)
    for name, m in layers.items():
        prune.l1_unstructured(m, "weight", amount=ratios[name])
    return ratios


prune_latency_aware = prune_sensitivity_adaptive
"""The seed script's name for :func:`prune_sensitivity_adaptive` (kept so the seed's code still runs; it
involves no latency: the ratios come from sensitivities alone)."""


def apply_unstructured_pruning(model: nn.Module, amount: float) -> nn.Module:
    """Uniform L1 unstructured pruning: ``amount`` of each Conv2d/Linear weight set to zero, with
    ``torch.nn.utils.prune`` masks that stay in the model (zeros survive fine-tuning without callbacks;
    :func:`remove_pruning_masks` makes them permanent). For masks kept outside the model and arbitrary
    scores, see :class:`deeplsp_helpers.pruners.FineGrainedPruner`."""
    amount = check_fraction(amount, "amount", high_open=False)
    for m in prunable_layers(model).values():
        prune.l1_unstructured(m, "weight", amount=amount)
    return model


def sparsity_for_nonzero_factor(model: nn.Module, dense: nn.Module, factor: float, *, max_sparsity: float = 0.95) -> float:
    """The sparsity of ``model``'s Conv/Linear weights that leaves ``dense``'s parameter count / ``factor`` non-zero
    parameters in ``model`` (its other parameters, biases and BatchNorms, stay), clipped to [0, ``max_sparsity``].

    For a recipe that promises "``factor`` times fewer non-zero parameters than the dense model" after a
    structured stage has already removed some (chapter 06; the zoo's ``vgg_deeplsp``).
    """
    check_module(model)
    check_module(dense, "dense")
    check_number(factor, "factor", 1, strict=False, hint=" (how many times fewer non-zero parameters)")
    weights = sum(m.weight.numel() for m in prunable_layers(model).values())
    others = metrics.count_parameters(model) - weights
    keep = metrics.count_parameters(dense) / factor - others
    return min(max_sparsity, max(0.0, 1 - keep / weights))


def remove_pruning_masks(model: nn.Module) -> nn.Module:
    """Make every prune mask permanent: plain ``weight`` parameters, no ``*_orig``/``*_mask`` keys, no hooks."""
    check_module(model)
    for m in model.modules():
        hooked = hooked_tensors(m)
        for name in pruned_tensors(m):
            if name in hooked:
                prune.remove(m, name)
            else:  # the pair pruning leaves, its hook deleted: the same result by hand (weight = orig * mask)
                orig, mask = getattr(m, f"{name}_orig"), getattr(m, f"{name}_mask")
                del m._parameters[f"{name}_orig"], m._buffers[f"{name}_mask"]
                if name in m.__dict__:
                    del m.__dict__[name]
                m.register_parameter(name, nn.Parameter((orig * mask).detach(), requires_grad=orig.requires_grad))
    return model


def deployable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its prune masks made permanent (the model itself keeps its masks).

    ``copy.deepcopy`` fails on a masked model after a forward pass (its ``weight`` is then a computed,
    non-leaf tensor), so the computed weights are detached for the copy.
    """
    hooked = [(m, name) for m in model.modules() for name in hooked_tensors(m)]
    saved = [(m, name, getattr(m, name)) for m, name in hooked]
    try:
        for m, name, t in saved:
            setattr(m, name, t.detach())
        clone = copy.deepcopy(model)
    finally:
        for m, name, t in saved:
            setattr(m, name, t)
    return remove_pruning_masks(clone)


def report_row(stage: str, model: nn.Module, example_inputs: torch.Tensor, loaders, baseline: nn.Module,
               threads: int = 1, repeats: int = 20, with_test: bool = False) -> dict:
    """One report row for ``model`` as deployed (masks made permanent on a copy): params, non-zero params,
    MACs, validation accuracy (if ``loaders``; test accuracy too if ``with_test``: report it once, at the end),
    latency at bs 1 and 64 and the speed-up over ``baseline`` with its 95 % interval, measured interleaved
    with it so the ratio comes from one run."""
    probe = deployable_copy(model)  # measure what would be deployed (masks add a multiplication per forward)
    row = {"stage": stage, "params": metrics.count_parameters(probe),
           "nonzero": metrics.count_parameters(probe, nonzero_only=True),
           "macs": metrics.count_macs(probe, example_inputs[:1])}
    if loaders is not None:
        from .train import evaluate

        row["val_acc"] = evaluate(probe, loaders.val)
        if with_test:
            row["test_acc"] = evaluate(probe, loaders.test)
    for bs in (1, 64):
        x = example_inputs[:bs] if len(example_inputs) >= bs else \
            example_inputs[:1].expand(bs, *example_inputs.shape[1:]).contiguous()
        n = repeats * 3 if bs == 1 else repeats  # bs-1 runs are short and noisier: take more of them
        stats, speedups = compare_speedups({"base": baseline, "model": probe}, x, "base", warmup=3, repeats=n,
                                           threads=threads)
        row[f"lat{bs}_ms"] = stats["model"].median_ms
        row[f"speedup{bs}"] = speedups["model"].median
        row[f"speedup{bs}_interval"] = (speedups["model"].low, speedups["model"].high)
    return row


def apply_combined_pruning(model: nn.Module, example_inputs: torch.Tensor, structured_ratio: float | None = None,
                           unstructured_ratio: float = 0.0, *, target_speedup: float | None = None,
                           batch_size: int = 1, latency_table=None, cost: str = "none",
                           nonzero_factor: float | None = None,
                           sensitivity_adaptive: bool = False, latency_aware: bool | None = None,
                           sensitivities=None, calibration=None,
                           finetune: Callable[[nn.Module, str], None] | None = None, loaders=None,
                           report: bool | str = True, threads: int = 1, latency_repeats: int = 20,
                           cost_measure: str | None = None, halp_steps: int = 0):
    """structured -> (fine-tune) -> unstructured (uniform, or sensitivity-adaptive) -> (fine-tune) -> remove masks.

    Args:
        example_inputs: a batch [N, C, H, W] used for tracing and latency (bs 1 and 64 are derived from it).
        structured_ratio: remove this fraction of the channels (global ranking; ``cost_measure`` picks what
            :class:`~deeplsp_helpers.structured.LatencyAwareImportance` weighs them by: ``'latency'``,
            ``'macs'`` or ``None`` (default) for plain L1 magnitude). ``0`` or None: no channel pruning, unless
        target_speedup: remove channels until ``latency_table`` (measured at ``batch_size`` if None) predicts
            this speed-up at ``batch_size`` (:func:`deeplsp_helpers.speedup.prune_to_speedup`; ``cost`` is
            ``'latency'``, ``'macs'`` or ``'none'``, default ``'none'``: the channels go in order of L1 magnitude,
            which chapter 06 chose on validation among one-shot costs). Give one of the two.
        halp_steps: with ``target_speedup``, reach it HALP's way instead of in one shot
            (:func:`deeplsp_helpers.halp.halp_prune`: this many steps, channels re-scored by Taylor importance on
            ``calibration`` before each, a latency knapsack on ``latency_table``; the first conv is pruned like the
            rest, as in chapter 06); ``finetune`` is then called as ``finetune(model, "structured k/K")`` after
            step k of K (the recipe spreads its structured fine-tune over the steps:
            :func:`deeplsp_helpers.halp.progressive_fine_tune`) instead of once with ``"structured"``. ``cost``
            must be ``'latency'``: that is HALP's knapsack.
        unstructured_ratio: zero this fraction of the remaining Conv/Linear weights; or instead
        nonzero_factor: zero as many as leave the input model's parameter count / ``nonzero_factor`` non-zero
            (:func:`sparsity_for_nonzero_factor`, computed after the structured stage: chapter 06's budget).
        sensitivity_adaptive: per-layer unstructured ratios from sensitivities
            (:func:`prune_sensitivity_adaptive`); the sensitivities are ``sensitivities`` or, if None, computed
            on ``calibration`` batches (default: 512 images of ``loaders.train``'s dataset: the training split).
            ``latency_aware`` is the seed's name for this flag.
        finetune: ``finetune(model, stage)`` called after each stage (``'structured'``, ``'unstructured'``);
            during the second call the prune masks are still attached, so pruned weights stay zero. The
            second call is made whenever an unstructured stage was asked for, even if the structured stage already
            left fewer non-zero parameters than ``nonzero_factor`` allows (nothing to zero): the fine-tuning
            budget does not depend on where the request lands.
        loaders: ``data.Loaders`` for the report's validation accuracy (test accuracy: final row only).
        report: ``True`` measures every stage, ``'final'`` only the input and the result, ``False`` nothing.
    Returns:
        ``(model, rows)``: the pruned model (a new object; the input is not modified) and one report row
        per stage (see :func:`report_row`).
    """
    prunable_layers(model)
    if latency_aware is not None:
        sensitivity_adaptive = bool(latency_aware)
    if target_speedup is not None and structured_ratio:
        raise ValueError("give structured_ratio or target_speedup, not both")
    s_ratio = check_fraction(structured_ratio or 0.0, "structured_ratio")
    u_ratio = check_fraction(unstructured_ratio, "unstructured_ratio", high=0.99, high_open=False)
    if nonzero_factor is not None:
        if u_ratio:
            raise ValueError("give unstructured_ratio or nonzero_factor, not both")
        check_number(nonzero_factor, "nonzero_factor", 1, strict=False,
                     hint=" (how many times fewer non-zero parameters than the input model)")
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.ndim != 4:
        raise TypeError("example_inputs must be a batch tensor [N, C, H, W]")
    if cost_measure not in ("latency", "macs", None):
        raise ValueError(f"cost_measure must be 'latency', 'macs' or None, got {cost_measure!r}")
    if report not in (True, False, "final"):
        raise ValueError(f"report must be True (every stage), 'final' or False, got {report!r}")
    check_ints(("batch_size", batch_size, 1), ("halp_steps", halp_steps, 0))
    if halp_steps and (target_speedup is None or cost != "latency" or calibration is None):
        raise ValueError("halp_steps needs target_speedup, cost='latency' (HALP's latency knapsack) and calibration "
                         f"batches from the training split (its Taylor scores); got target_speedup={target_speedup!r}, "
                         f"cost={cost!r}, calibration={'given' if calibration is not None else None}")
    unstructured = u_ratio > 0 or nonzero_factor is not None
    if sensitivity_adaptive and unstructured and sensitivities is None and calibration is None and loaders is None:
        raise ValueError("sensitivity_adaptive=True needs sensitivities, calibration batches or loaders")
    baseline = copy.deepcopy(model).eval()
    pruned = copy.deepcopy(model).eval()
    rows = []

    def record(stage):
        if report is True or (report == "final" and stage in ("dense", "final")):
            rows.append(report_row(stage, pruned, example_inputs, loaders, baseline, threads, latency_repeats,
                                   with_test=stage == "final"))

    record("dense")
    if target_speedup is not None or s_ratio > 0:
        if target_speedup is not None:
            from .speedup import prune_to_speedup

            x = example_inputs[:batch_size] if len(example_inputs) >= batch_size else \
                example_inputs[:1].expand(batch_size, *example_inputs.shape[1:]).contiguous()
            if halp_steps:
                from .halp import halp_prune
                from .latency_model import LatencyTable

                table = latency_table if latency_table is not None else LatencyTable.measure(pruned, x, threads=threads)
                step_done = None if finetune is None else (lambda m, k: finetune(m, f"structured {k}/{halp_steps}"))
                halp_prune(pruned, x, target_speedup, table, calibration, steps=halp_steps, fine_tune=step_done,
                           protect_first_conv=False)
            else:
                prune_to_speedup(pruned, x, target_speedup, latency_table, cost=cost, threads=threads)
        else:
            if cost_measure is None:
                importance = tp.importance.GroupMagnitudeImportance(p=1)
            else:
                importance = LatencyAwareImportance.from_model(pruned, example_inputs[:1], cost_measure,
                                                               threads=threads, repeats=max(latency_repeats, 20))
            structured_channel_pruning(pruned, example_inputs[:1], s_ratio, importance=importance)
        record("structured" if not halp_steps or finetune is None else "structured + fine-tune")
        if finetune is not None and not halp_steps:
            finetune(pruned, "structured")
            record("structured + fine-tune")
    if nonzero_factor is not None:
        u_ratio = sparsity_for_nonzero_factor(pruned, baseline, nonzero_factor)
    if u_ratio > 0:
        if sensitivity_adaptive:
            if sensitivities is None:
                if calibration is None:
                    from .data import calibration_batches

                    ds = loaders.train.dataset
                    bs = min(128, len(ds))
                    calibration = calibration_batches(ds, min(4, len(ds) // bs), bs)
                sensitivities = compute_sensitivity(pruned, calibration)
            prune_sensitivity_adaptive(pruned, sensitivities, u_ratio)
        else:
            apply_unstructured_pruning(pruned, u_ratio)
        record("unstructured")
    if finetune is not None and (u_ratio > 0 or nonzero_factor is not None):
        # the budget is spent even when the structured stage already met the non-zero budget (nothing to zero):
        # every recipe gets the same total fine-tuning
        finetune(pruned, "unstructured")
    remove_pruning_masks(pruned)
    record("final")
    return pruned.eval(), rows


def format_report(rows: list[dict]) -> str:
    """The per-stage report as a fixed-width table (speed-ups: median of per-round ratios over the input
    model, measured interleaved with it; test accuracy only where the row has it)."""
    head = f"{'stage':24s} {'params':>9s} {'non-zero':>9s} {'MACs':>11s} {'val %':>6s} {'test %':>6s} " \
           f"{'bs1 ms':>7s} {'x':>5s} {'bs64 ms':>8s} {'x':>5s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        test = f"{r['test_acc']:6.2f}" if "test_acc" in r else f"{'':6s}"
        lines.append(f"{r['stage']:24s} {r['params']:9,d} {r['nonzero']:9,d} {r['macs']:11,d} "
                     f"{r.get('val_acc', float('nan')):6.2f} {test} "
                     f"{r['lat1_ms']:7.3f} {r['speedup1']:5.2f} {r['lat64_ms']:8.2f} {r['speedup64']:5.2f}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m deeplsp_helpers.deeplsp: the command line lives in deeplsp_cli
    from .deeplsp_cli import main

    sys.exit(main())
