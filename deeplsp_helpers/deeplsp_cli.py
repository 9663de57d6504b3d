"""The DeepLSP pipeline's command line: ``python -m deeplsp_helpers.deeplsp`` (or ``.deeplsp_cli``).

Prunes a pretrained reference model, prints the per-stage report and saves a deployable model. Every
error is one line on stderr with exit code 2, and nothing is written unless the run succeeds.
"""

from __future__ import annotations

import argparse
import math
import sys
import uuid

import torch

from .deeplsp import apply_combined_pruning, format_report
from .files import check_free_space, clean_stale
from .recipe import DEFAULT_RECIPE as R
from .serialization import load_pruned, save_pruned

__all__ = ["build_parser", "main"]


def _number_arg(low: float, high: float, *, low_open: bool = False, high_open: bool = True):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if math.isnan(v) or not ok:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{text} is outside {interval}")
        return v
    return parse


def _cnn_name(text: str) -> str:
    """A ``--model`` value: the transformers are refused with the reason (the choices list names the CNNs)."""
    from .models import TRANSFORMER_NAMES

    if text.lower() in TRANSFORMER_NAMES:
        raise argparse.ArgumentTypeError(
            f"{text} is a transformer; the DeepLSP pipeline prunes convolution channels (chapters 05-06). Prune a "
            "transformer's heads, MLP neurons or weights with deeplsp_helpers.transformer_pruning (chapter 08)")
    return text.lower()  # the names are lower case; LENET works as load_pretrained("LENET") does


def build_parser() -> argparse.ArgumentParser:
    from .models import CNN_NAMES

    p = argparse.ArgumentParser(prog="python -m deeplsp_helpers.deeplsp",
                                description="Prune a pretrained reference model with the DeepLSP pipeline, print "
                                            "the per-stage report and save a deployable model. The defaults are "
                                            "chapter 06's recipe (deeplsp_helpers.recipe.DeepLSPRecipe): "
                                            f"a requested {R.target_speedup:g}x at batch size {R.request_batch_size} "
                                            "(the largest request chapter 06's search kept within 1 point in most "
                                            "runs; its widths follow this machine's latency table), "
                                            f"cost {R.cost}, {R.nonzero_factor:g}x fewer non-zero parameters "
                                            "(sensitivity-adaptive), fine-tuning distilled from the dense model.")
    p.add_argument("--model", required=True, type=_cnn_name, choices=CNN_NAMES,
                   help="which pretrained convolutional reference model to prune")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--structured", type=_number_arg(0, 1), default=None,
                     help="fraction of channels to remove globally, in [0, 1) (instead of --target-speedup)")
    how.add_argument("--target-speedup", type=_number_arg(1, math.inf, low_open=True), default=None,
                     help="remove channels until a latency table of this machine predicts this speed-up (> 1; "
                          f"default {R.target_speedup:g} unless --structured is given)")
    p.add_argument("--batch-size", type=int, default=R.request_batch_size,
                   help="batch size at which --target-speedup is requested and the latency table measured "
                        f"(default {R.request_batch_size})")
    zeros = p.add_mutually_exclusive_group()
    zeros.add_argument("--unstructured", type=_number_arg(0, 0.99, high_open=False), default=None,
                       help="fraction of the remaining Conv/Linear weights to zero, in [0, 0.99] (instead of "
                            "--nonzero-factor)")
    zeros.add_argument("--nonzero-factor", type=_number_arg(1, math.inf), default=None,
                       help="zero weights until the model has this many times fewer non-zero parameters than the "
                            f"dense one (default {R.nonzero_factor:g} unless --unstructured is given)")
    adaptive = p.add_mutually_exclusive_group()
    adaptive.add_argument("--sensitivity-adaptive", "--latency-aware", dest="sensitivity_adaptive",
                          action="store_true", default=True,
                          help="per-layer unstructured ratios from layer sensitivities (the default; "
                               "--latency-aware is the seed script's name for it)")
    adaptive.add_argument("--uniform", dest="sensitivity_adaptive", action="store_false",
                          help="one uniform unstructured ratio in every layer instead")
    p.add_argument("--costs", choices=("latency", "macs", "none"), default=R.cost,
                   help="what removing a channel is weighed by: measured latency, MACs, or none (L1 magnitude "
                        f"alone; default {R.cost}, chosen on validation in chapter 06)")
    distill = p.add_mutually_exclusive_group()
    distill.add_argument("--distill", dest="distill", action="store_true", default=R.distill,
                         help="fine-tune with knowledge distillation from the dense model (T=4, alpha=0.5; "
                              f"{'the default' if R.distill else 'off by default'})")
    distill.add_argument("--no-distill", dest="distill", action="store_false",
                         help="fine-tune on the labels alone")
    p.add_argument("--halp-steps", type=int, default=R.halp_steps,
                   help="reach --target-speedup HALP's way in this many steps during the first fine-tune (Taylor "
                        "importance, latency knapsack; needs --costs latency); 0: in one shot (default)")
    p.add_argument("--finetune-epochs", type=int, default=R.finetune_epochs // 2,
                   help=f"fine-tuning epochs after each stage (default {R.finetune_epochs // 2})")
    p.add_argument("--finetune-samples", type=int, default=R.finetune_samples,
                   help=f"training samples used for fine-tuning (default {R.finetune_samples})")
    p.add_argument("--lr", type=float, default=R.lr, help=f"fine-tuning learning rate (default {R.lr:g})")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for latency measurement (default 1)")
    p.add_argument("--sparse", action="store_true",
                   help="store zeros compactly in the saved file (bitmask + non-zero values)")
    p.add_argument("--out", required=True, help="file to write the pruned model to (loads with load_pruned)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The CLI. Every error is one line on stderr and exit code 2; the output file is written last, atomically."""
    import os
    from pathlib import Path

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.finetune_epochs < 0:
        parser.error("--finetune-epochs must be >= 0")
    if not 0 < args.finetune_samples <= 55000:
        parser.error("--finetune-samples must be in 1..55000")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.halp_steps < 0:
        parser.error("--halp-steps must be >= 0")
    if args.halp_steps and (args.costs != "latency" or args.structured is not None or args.finetune_epochs < 1):
        parser.error("--halp-steps needs --costs latency, a --target-speedup (not --structured) and "
                     "--finetune-epochs >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error("--lr must be a positive number")
    if not args.out.strip() or args.out.endswith(("/", os.sep)) or Path(args.out).name in ("", ".", ".."):
        parser.error(f"--out must name a file to write, got {args.out!r}")
    if Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a folder; give a file name in it, e.g. {Path(args.out) / 'pruned.pt'}")
    if Path(args.out).exists() and not Path(args.out).is_file():
        parser.error(f"--out {args.out} exists and is not a regular file (a FIFO or device); give a file name")
    out_dir = Path(args.out).resolve().parent
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        parser.error(f"cannot write --out {args.out}: {out_dir} is not a writable folder")
    from .zoo import CHECKPOINT_DIR

    dense = CHECKPOINT_DIR / f"{args.model}.pt"  # a pruned model is smaller than its dense checkpoint
    try:
        check_free_space(out_dir, dense.stat().st_size if dense.is_file() else 0, f"--out {args.out}")
    except OSError as err:
        parser.error(str(err.strerror))
    target = R.target_speedup if args.structured is None and args.target_speedup is None else args.target_speedup
    nonzero_factor = R.nonzero_factor if args.unstructured is None and args.nonzero_factor is None \
        else args.nonzero_factor

    from . import data, seed_everything, zoo
    from .recipe import DeepLSPRecipe

    try:
        seed_everything(0)
        splits = data.load_fashion_mnist()
        loaders = data.make_loaders(splits, batch_size=128)  # the report's validation accuracy
        model = zoo.load_pretrained(args.model)
        # the recipe's data, calibration and fine-tuning, with this run's settings (the defaults: the recipe itself)
        recipe = DeepLSPRecipe(target_speedup=target or R.target_speedup, request_batch_size=args.batch_size,
                               cost=args.costs, nonzero_factor=nonzero_factor or R.nonzero_factor,
                               finetune_epochs=2 * args.finetune_epochs, finetune_samples=args.finetune_samples,
                               lr=args.lr, distill=args.distill, halp_steps=args.halp_steps)
        finetune = recipe.finetune_fn(model, splits)
        calibration = recipe.calibration(splits)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2

    try:
        pruned, rows = apply_combined_pruning(
            model, splits.val.X[:64], args.structured, args.unstructured or 0.0, target_speedup=target,
            batch_size=args.batch_size, cost=args.costs, nonzero_factor=nonzero_factor,
            sensitivity_adaptive=args.sensitivity_adaptive, calibration=calibration,
            finetune=finetune, loaders=loaders, threads=args.threads,
            cost_measure=None if args.costs == "none" else args.costs, halp_steps=args.halp_steps)
    except (ValueError, ArithmeticError, RuntimeError) as err:  # bad settings, a diverging fine-tune, ...
        print(f"error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 2
    print(format_report(rows))
    out = Path(args.out)
    # checked before it takes the requested name; unique, so that two runs writing the same --out never share it
    # (and one a killed run left behind is removed by the next run)
    clean_stale(out.parent, f".{out.name}.", ".partial")
    partial = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        save_pruned(pruned, args.model, partial, sparse=args.sparse)
        again = load_pruned(partial)
        with torch.inference_mode():
            same = torch.equal(again(splits.test.X[:64]), pruned(splits.test.X[:64]))
        if not same:
            print("error: the saved model does not reproduce the pruned model's outputs", file=sys.stderr)
            return 2
        os.replace(partial, out)
    except OSError as err:  # a full disk, a folder removed meanwhile: one line, not a traceback
        print(f"error: cannot write --out {out}: {err.strerror or err}", file=sys.stderr)
        return 2
    finally:
        partial.unlink(missing_ok=True)
    print(f"saved to {out} ({out.stat().st_size / 1024:.0f} KiB; reloads with "
          "deeplsp_helpers.serialization.load_pruned; outputs identical)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
