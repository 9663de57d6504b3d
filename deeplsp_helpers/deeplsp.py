"""The DeepLSP pipeline: sensitivity, measured latency, structured channel pruning, sensitivity-adaptive
unstructured pruning, mask removal, and a per-stage report. Chapter 06 builds it step by step.

CLI::

    python -m deeplsp_helpers.deeplsp --model vgg --structured 0.5 --unstructured 0.5 \\
        --finetune-epochs 1 --out pruned.pt
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from . import metrics
from .criteria import prunable_layers
from .latency import compare_latency, measure_latency
from .structured import (
    LatencyAwareImportance,
    collapse_channels,
    layer_costs,
    load_pruned,
    save_pruned,
    structured_channel_pruning,
)

__all__ = ["compute_sensitivity", "measure_latency", "collapse_channels", "LatencyAwareImportance", "layer_costs",
           "structured_channel_pruning", "prune_latency_aware", "apply_unstructured_pruning",
           "remove_pruning_masks", "deployable_copy", "report_row", "apply_combined_pruning", "save_pruned", "load_pruned", "format_report"]



def _check_ratio(value, name: str, upper: float = 1.0, inclusive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number in [0, {upper}{']' if inclusive else ')'}, got {value!r}")
    if not (0.0 <= value <= upper if inclusive else 0.0 <= value < upper):
        raise ValueError(f"{name} must be in [0, {upper}{']' if inclusive else ')'}, got {value!r}")
    return float(value)


def compute_sensitivity(model: nn.Module, batches: Iterable | None = None, *, dummy: bool = False,
                        input_shape: Sequence[int] | None = None, num_classes: int = 10,
                        seed: int = 0) -> dict[str, float]:
    """Per-layer sensitivity: a 50/50 blend of mean |dL/dw| and mean |w|, each normalised over layers.

    Both terms are divided by their sum over the model's Conv2d/Linear layers before blending, so the
    gradient term (tiny numbers) and the weight term (larger numbers) weigh the same; the scores sum
    to 1. Higher = more sensitive = prune less.

    Args:
        batches: calibration batches ``(X, y)`` of real data (e.g. a few validation batches).
        dummy: reproduce the seed script instead: one random input and random targets of
            ``input_shape`` (e.g. ``(8, 1, 28, 28)``). Its gradients describe noise, not the task.
    The model's gradients and mode are left untouched (gradients come from ``torch.autograd.grad``).
    """
    layers = prunable_layers(model)
    if dummy:
        if not input_shape or not all(isinstance(d, int) and d > 0 for d in input_shape) or len(input_shape) < 2:
            raise ValueError("dummy=True needs input_shape, a batch shape such as (8, 1, 28, 28)")
        gen = torch.Generator().manual_seed(seed)
        batches = [(torch.randn(*input_shape, generator=gen),
                    torch.randint(0, num_classes, (input_shape[0],), generator=gen))]
    elif batches is None:
        raise ValueError("pass calibration batches of real data (e.g. validation batches), or dummy=True with input_shape")
    weights = [m.weight for m in layers.values()]
    device = weights[0].device
    grads = [torch.zeros_like(w) for w in weights]
    was = model.training
    model.eval()
    n = 0
    try:
        for X, y in batches:
            loss = nn.functional.cross_entropy(model(X.to(device)), y.to(device))
            for acc, g in zip(grads, torch.autograd.grad(loss, weights)):
                acc += g
            n += 1
    finally:
        model.train(was)
    if n == 0:
        raise ValueError("batches yielded nothing")
    g_mean = torch.stack([(g / n).abs().mean() for g in grads])
    w_mean = torch.stack([w.detach().abs().mean() for w in weights])
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


def prune_latency_aware(model: nn.Module, sensitivities, target_sparsity: float, *, max_ratio: float = 0.99,
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
    target = _check_ratio(target_sparsity, "target_sparsity", upper=max_ratio, inclusive=True)
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    sens = _combine(sensitivities, list(layers))
    sizes = {k: m.weight.numel() for k, m in layers.items()}
    ratios = _ratios_for(sens, sizes, target, max_ratio, alpha)
    for name, m in layers.items():
        prune.l1_unstructured(m, "weight", amount=ratios[name])
    return ratios


def apply_unstructured_pruning(model: nn.Module, amount: float) -> nn.Module:
    """Uniform L1 unstructured pruning: ``amount`` of each Conv2d/Linear weight set to zero (with masks)."""
    amount = _check_ratio(amount, "amount", inclusive=True)
    for m in prunable_layers(model).values():
        prune.l1_unstructured(m, "weight", amount=amount)
    return model


def remove_pruning_masks(model: nn.Module) -> nn.Module:
    """Make every prune mask permanent: plain ``weight`` parameters, no ``*_orig``/``*_mask`` keys, no hooks."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return model


def deployable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its prune masks made permanent (the model itself keeps its masks).

    ``copy.deepcopy`` fails on a masked model after a forward pass (its ``weight`` is then a computed,
    non-leaf tensor), so the computed weights are detached for the copy.
    """
    hooked = [(m, h._tensor_name) for m in model.modules() for h in m._forward_pre_hooks.values()
              if isinstance(h, prune.BasePruningMethod)]
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
               threads: int = 1, repeats: int = 20) -> dict:
    """One report row for ``model`` as deployed (masks made permanent on a copy): params, non-zero params,
    MACs, validation/test accuracy (if ``loaders``), latency at bs 1 and 64 and the speed-up over
    ``baseline``, measured interleaved with it so the ratio comes from one run."""
    probe = deployable_copy(model)  # measure what would be deployed (masks add a multiplication per forward)
    row = {"stage": stage, "params": metrics.count_parameters(probe),
           "nonzero": metrics.count_parameters(probe, nonzero_only=True),
           "macs": metrics.count_macs(probe, example_inputs[:1])}
    if loaders is not None:
        from .train import evaluate

        row["val_acc"], row["test_acc"] = evaluate(probe, loaders.val), evaluate(probe, loaders.test)
    for bs in (1, 64):
        x = example_inputs[:bs] if len(example_inputs) >= bs else \
            example_inputs[:1].expand(bs, *example_inputs.shape[1:]).contiguous()
        n = repeats * 3 if bs == 1 else repeats  # bs-1 runs are short and noisier: take more of them
        res = compare_latency({"base": baseline, "model": probe}, x, warmup=3, repeats=n, threads=threads)
        row[f"lat{bs}_ms"] = res["model"].median_ms
        row[f"lat{bs}_iqr"] = res["model"].iqr_ms
        row[f"speedup{bs}"] = res["base"].median_ms / res["model"].median_ms
    return row


def apply_combined_pruning(model: nn.Module, example_inputs: torch.Tensor, structured_ratio: float,
                           unstructured_ratio: float, *, latency_aware: bool = False, sensitivities=None,
                           finetune: Callable[[nn.Module, str], None] | None = None, loaders=None,
                           report: bool | str = True, threads: int = 1, latency_repeats: int = 20,
                           cost_measure: str | None = "latency"):
    """structured -> (fine-tune) -> unstructured (uniform, or sensitivity-adaptive) -> (fine-tune) -> remove masks.

    Args:
        example_inputs: a batch [N, C, H, W] used for tracing and latency (bs 1 and 64 are derived from it).
        latency_aware: sensitivity-adaptive unstructured ratios (:func:`prune_latency_aware`); the
            sensitivities are ``sensitivities`` or, if None, computed on four validation batches.
        finetune: ``finetune(model, stage)`` called after each stage (``'structured'``, ``'unstructured'``);
            during the second call the prune masks are still attached, so pruned weights stay zero.
        loaders: ``data.Loaders`` for the report's validation/test accuracy (and the sensitivities).
        report: ``True`` measures every stage, ``'final'`` only the input and the result, ``False`` nothing.
        cost_measure: what :class:`LatencyAwareImportance` weighs channels by: ``'latency'`` (each layer's
            measured share, at batch size 1; it varies a little from run to run, and so can the pruned
            widths), ``'macs'`` (deterministic), or ``None``: no cost weighting, channels ranked by their
            L1 magnitude alone (Torch-Pruning's ``GroupMagnitudeImportance(p=1)``).
    Returns:
        ``(model, rows)``: the pruned model (a new object; the input is not modified) and one report row
        per stage, each with params, non-zero params, MACs, accuracy, and latency at bs 1 / 64 with the
        speed-up over the input model measured in the same run.
    """
    prunable_layers(model)
    s_ratio = _check_ratio(structured_ratio, "structured_ratio")
    u_ratio = _check_ratio(unstructured_ratio, "unstructured_ratio", upper=0.99, inclusive=True)
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.ndim != 4:
        raise TypeError("example_inputs must be a batch tensor [N, C, H, W]")
    baseline = copy.deepcopy(model).eval()
    pruned = copy.deepcopy(model).eval()
    rows = []

    if cost_measure not in ("latency", "macs", None):
        raise ValueError(f"cost_measure must be 'latency', 'macs' or None, got {cost_measure!r}")
    if report not in (True, False, "final"):
        raise ValueError(f"report must be True (every stage), 'final' or False, got {report!r}")

    def record(stage):
        if report is True or (report == "final" and stage in ("dense", "final")):
            rows.append(report_row(stage, pruned, example_inputs, loaders, baseline, threads, latency_repeats))

    record("dense")
    if s_ratio > 0:
        if cost_measure is None:
            importance = tp.importance.GroupMagnitudeImportance(p=1)
        else:
            importance = LatencyAwareImportance.from_model(pruned, example_inputs[:1], cost_measure, threads=threads,
                                                           repeats=max(latency_repeats, 20))
        structured_channel_pruning(pruned, example_inputs[:1], s_ratio, importance=importance)
        record("structured")
        if finetune is not None:
            finetune(pruned, "structured")
            record("structured + fine-tune")
    if u_ratio > 0:
        if latency_aware:
            if sensitivities is None:
                if loaders is None:
                    raise ValueError("latency_aware=True needs sensitivities or loaders to compute them")
                batches = [b for _, b in zip(range(4), loaders.val)]
                sensitivities = compute_sensitivity(pruned, batches)
            prune_latency_aware(pruned, sensitivities, u_ratio)
        else:
            apply_unstructured_pruning(pruned, u_ratio)
        record("unstructured")
        if finetune is not None:
            finetune(pruned, "unstructured")
    remove_pruning_masks(pruned)
    record("final")
    return pruned.eval(), rows


def format_report(rows: list[dict]) -> str:
    """The per-stage report as a fixed-width table."""
    head = f"{'stage':24s} {'params':>9s} {'non-zero':>9s} {'MACs':>11s} {'val %':>6s} {'test %':>6s} " \
           f"{'bs1 ms':>7s} {'x':>5s} {'bs64 ms':>8s} {'x':>5s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['stage']:24s} {r['params']:9,d} {r['nonzero']:9,d} {r['macs']:11,d} "
                     f"{r.get('val_acc', float('nan')):6.2f} {r.get('test_acc', float('nan')):6.2f} "
                     f"{r['lat1_ms']:7.3f} {r['speedup1']:5.2f} {r['lat64_ms']:8.2f} {r['speedup64']:5.2f}")
    return "\n".join(lines)


def _ratio_arg(upper: float):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0.0 <= v < upper or math.isnan(v):
            raise argparse.ArgumentTypeError(f"{text} is outside [0, {upper:g})")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .models import MODEL_NAMES

    p = argparse.ArgumentParser(prog="python -m deeplsp_helpers.deeplsp",
                                description="Prune a pretrained reference model with the DeepLSP pipeline, print "
                                            "the per-stage report and save a deployable model.")
    p.add_argument("--model", required=True, choices=MODEL_NAMES, help="which pretrained reference model to prune")
    p.add_argument("--structured", type=_ratio_arg(1.0), default=0.5,
                   help="fraction of channels to remove globally, in [0, 1) (default 0.5)")
    p.add_argument("--unstructured", type=_ratio_arg(1.0), default=0.5,
                   help="fraction of the remaining Conv/Linear weights to zero, in [0, 1) (default 0.5)")
    p.add_argument("--latency-aware", action="store_true",
                   help="sensitivity-adaptive per-layer unstructured ratios instead of a uniform ratio")
    p.add_argument("--costs", choices=("latency", "macs", "none"), default="latency",
                   help="what channels are weighed by in structured pruning: each layer's measured latency share "
                        "(default), its MAC share (deterministic), or none (L1 magnitude alone)")
    p.add_argument("--distill", action="store_true",
                   help="fine-tune with knowledge distillation from the dense model (T=4, alpha=0.5)")
    p.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs after each stage (default 1)")
    p.add_argument("--finetune-samples", type=int, default=10000,
                   help="training samples used for fine-tuning (default 10000)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for latency measurement (default 1)")
    p.add_argument("--out", required=True, help="file to write the pruned model to (loads with load_pruned)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.finetune_epochs < 0:
        parser.error("--finetune-epochs must be >= 0")
    if not 0 < args.finetune_samples <= 55000:
        parser.error("--finetune-samples must be in 1..55000")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error("--lr must be a positive number")

    from . import data, seed_everything, train, zoo

    seed_everything(0)
    splits = data.load_fashion_mnist()
    loaders = data.make_loaders(splits, batch_size=128, train_subset=args.finetune_samples)
    model = zoo.load_pretrained(args.model)

    teacher = zoo.load_pretrained(args.model) if args.distill else None

    def finetune(m, stage):
        if args.finetune_epochs:
            train.fine_tune(m, loaders.train, num_epochs=args.finetune_epochs, lr=args.lr, teacher=teacher,
                            device="cpu")

    pruned, rows = apply_combined_pruning(model, splits.val.X[:64], args.structured, args.unstructured,
                                          latency_aware=args.latency_aware, finetune=finetune, loaders=loaders,
                                          threads=args.threads,
                                          cost_measure=None if args.costs == "none" else args.costs)
    print(format_report(rows))
    path = save_pruned(pruned, args.model, args.out)
    again = load_pruned(path)
    with torch.inference_mode():
        same = torch.equal(again(splits.test.X[:64]), pruned(splits.test.X[:64]))
    if not same:
        print("error: the saved model does not reproduce the pruned model's outputs", file=sys.stderr)
        return 1
    print(f"saved to {path} (reloads with deeplsp_helpers.structured.load_pruned; outputs identical)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
