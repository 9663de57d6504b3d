"""Recorded multi-seed studies: comparisons a chapter draws a conclusion from but cannot afford to repeat live.

Chapter 06 compares ways of choosing channels at one requested speed-up (one shot, ranked by group-normalised
magnitude under three costs, or by Taylor importance; HALP's progressive schedule in 4 and in 30 steps), one run of
each, inside its time budget; chapter 05's uniform magnitude pruning (the same fraction of every layer's channels,
here the smallest fraction, in steps of 2.5 %, at which the table predicts the request) is the baseline.
``python -m deeplsp_helpers.studies run ch06_structured`` repeats that comparison for several seeds, with the
chapter's code and budget, and records every run in ``checkpoints/studies.json`` (written atomically); the chapter
reads the record (:func:`read_study`) and shows it beside its own run. A seed sets the fine-tuning subset and its
order, and the calibration images; the latency table is measured anew for each seed, as every execution of the
chapter measures its own.

``request_accuracy`` asks :func:`~deeplsp_helpers.speedup.prune_to_speedup` for 2x at batch size 1 on VGG, on ResNet
and on a small conv-BN net no chapter uses, several times, each time with a freshly measured latency table, and
measures what each pruned model really gives (one interleaved run against its dense model): how close a request
lands, run to run.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from ._validate import check_int
from .files import atomic_write

__all__ = ["STUDIES", "STUDY_FILE", "read_study", "run_study", "ch06_request"]

STUDY_FILE = Path(__file__).resolve().parent / "checkpoints" / "studies.json"
STUDIES = ("ch06_structured", "request_accuracy")
ARMS = ("uniform magnitude (chapter 05)", "magnitude, cost=none", "magnitude, cost=latency", "magnitude, cost=macs",
        "Taylor, cost=none", "HALP, 4 steps", "HALP, 30 steps")


def ch06_request(reach: float) -> float:
    """Chapter 06's top request from the largest speed-up its table reaches: 90 % of it, rounded down to a quarter,
    at most 3x."""
    return min(3.0, math.floor(4 * 0.9 * reach) / 4)


def _records(path) -> tuple[Path, dict]:
    """The study file (``path``, default :data:`STUDY_FILE`) and every study recorded in it (none if it is absent)."""
    path = Path(path) if path is not None else STUDY_FILE
    return path, json.loads(path.read_text()) if path.is_file() else {}


def read_study(name: str, path: str | Path | None = None) -> dict:
    """The recorded study ``name`` (see :data:`STUDIES`); ``KeyError`` with the command that records it if absent."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; the studies are {STUDIES}")
    path, record = _records(path)
    if name not in record:
        raise KeyError(f"no record of study {name!r} in {path}: run `python -m deeplsp_helpers.studies run {name}`")
    return record[name]


def _uniform_to_request(dense, x1, request, table):
    """Chapter 05's recipe (Torch-Pruning's BasePruner, L1 group magnitude, the same ratio in every layer, the
    classifier kept) at the smallest ratio, in steps of 0.025, whose model the table predicts at ``request``."""
    from .channels import uniform_channel_pruning

    for ratio in [r / 1000 for r in range(25, 1000, 25)]:
        model = copy.deepcopy(dense)
        uniform_channel_pruning(model, x1, ratio, ignored_layers=[model.classifier])
        if table.dense_ms / table.predict(model) >= request:
            return model, ratio
    raise ValueError(f"uniform channel pruning cannot reach {request:g}x on this table")


def _ch06_structured(seeds, log) -> dict:
    from . import data, halp, latency, metrics, train, zoo
    from .latency_model import LatencyTable
    from .recipe import DEFAULT_RECIPE as R
    from .speedup import COSTS, prune_to_speedup, reachable_speedup

    splits = data.load_fashion_mnist()
    val = data.make_loaders(splits, batch_size=R.batch_size).val
    vgg = zoo.load_pretrained("vgg")
    x1 = splits.val.X[:1]
    dense_val = train.evaluate(vgg, val)
    request, runs = None, {}
    for seed in seeds:
        start = time.perf_counter()
        table = LatencyTable.measure(vgg, x1, threads=1, repeats=R.latency_repeats)
        reach = min(reachable_speedup(vgg, x1, table, cost=c) for c in COSTS)
        request = ch06_request(reach) if request is None else request  # the first seed's table sets it for all
        calib = data.calibration_batches(splits.train, n_batches=R.calibration_images // 64, batch_size=64, seed=seed)
        ft = train.with_teacher_outputs(vgg, data.subset(splits.train, R.finetune_samples, seed=seed))

        def fine_tune(model, ft=ft, seed=seed):
            loader = data.BatchLoader(ft, R.batch_size, shuffle=True, seed=seed)
            train.fine_tune(model, loader, num_epochs=R.finetune_epochs, lr=R.lr, progress=False)

        arms = {}
        for arm in ARMS:
            model = copy.deepcopy(vgg)
            if arm.startswith("uniform"):
                model, uniform_ratio = _uniform_to_request(vgg, x1, request, table)
                fine_tune(model)
            elif arm.startswith("HALP"):
                steps = int(arm.split()[1])
                halp.halp_prune(model, x1, request, table, calib, steps=steps, protect_first_conv=False,
                                fine_tune=halp.progressive_fine_tune(ft, steps, num_epochs=R.finetune_epochs, lr=R.lr,
                                                                     batch_size=R.batch_size, seed=seed))
            else:
                importance = halp.TaylorBNImportance(model, calib) if arm.startswith("Taylor") else None
                prune_to_speedup(model, x1, request, table, cost=arm.split("=")[1], importance=importance)
                fine_tune(model)
            arms[arm] = model
            log(f"seed {seed}, {arm}: widths {metrics.conv_widths(model)}, "
                f"validation {train.evaluate(model, val):.2f} % ({time.perf_counter() - start:.0f} s)")
        _, speedups = latency.compare_speedups({"dense": vgg, **arms}, x1, "dense", warmup=5, repeats=100, threads=1)
        runs[str(seed)] = {
            "reachable_speedup": round(reach, 3), "uniform_ratio": uniform_ratio,
            "seconds": round(time.perf_counter() - start, 1),
            "arms": {arm: {"val_acc": round(train.evaluate(m, val), 2), "widths": metrics.conv_widths(m),
                           "predicted_speedup": round(table.dense_ms / table.predict(m), 3),
                           "measured_speedup": [round(v, 3) for v in (speedups[arm].median, speedups[arm].low,
                                                                       speedups[arm].high)]}
                     for arm, m in arms.items()}}
    return {"request": request, "dense_val_acc": round(dense_val, 2), "seeds": list(seeds), "arms": list(ARMS),
            "budget": {"finetune_samples": R.finetune_samples, "finetune_epochs": R.finetune_epochs, "lr": R.lr,
                       "batch_size": R.batch_size, "distill": True, "calibration_images": R.calibration_images},
            "measured": "speed-up over dense at batch size 1, one thread: [median, 95 % interval low, high], "
                        "one interleaved run per seed",
            "runs": runs}


def _probe_net():
    """A small conv-BN net the chapters never use (strided convs, no pooling), with random weights."""
    from torch import nn

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    torch.manual_seed(0)
    return nn.Sequential(*block(1, 32, 1), *block(32, 64, 2), *block(64, 64, 1), *block(64, 128, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)).eval()


def _request_accuracy(seeds, log) -> dict:
    from . import data, latency, metrics, zoo
    from .latency_model import LatencyTable
    from .recipe import DEFAULT_RECIPE as R
    from .speedup import prune_to_speedup

    x1 = data.load_fashion_mnist().val.X[:1]
    nets = {"vgg": zoo.load_pretrained("vgg"), "resnet": zoo.load_pretrained("resnet"), "probe": _probe_net()}
    request, runs = 2.0, {}
    for name, dense in nets.items():
        runs[name] = []
        for seed in seeds:
            table = LatencyTable.measure(dense, x1, threads=1, repeats=R.latency_repeats)
            model = copy.deepcopy(dense)
            plan = prune_to_speedup(model, x1, request, table)
            _, speedups = latency.compare_speedups({"dense": dense, "pruned": model}, x1, "dense", warmup=5,
                                                   repeats=100, threads=1)
            s = speedups["pruned"]
            runs[name].append({"seed": seed, "predicted_speedup": round(plan["predicted_speedup"], 3),
                               "measured_speedup": [round(v, 3) for v in (s.median, s.low, s.high)],
                               "widths": metrics.conv_widths(model)})
            log(f"{name}, run {seed}: predicted {plan['predicted_speedup']:.2f}x, measured {s}")
    return {"request": request, "seeds": list(seeds), "batch_size": 1, "threads": 1,
            "latency_repeats": R.latency_repeats, "runs": runs}


def run_study(name: str, seeds=(0, 1, 2), *, path: str | Path | None = None, log=print) -> dict:
    """Run study ``name`` for ``seeds`` and record it (replacing an earlier record of it); returns the record."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; the studies are {STUDIES}")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds must be a non-empty list of ints >= 0, got none")
    for i, seed in enumerate(seeds):
        check_int(seed, f"seeds[{i}]", 0)
    from .cpu import describe_cpu

    torch.set_num_threads(2)
    start = time.perf_counter()
    result = (_ch06_structured if name == "ch06_structured" else _request_accuracy)(seeds, log)
    result.update(seconds=round(time.perf_counter() - start, 1), recorded_on=time.strftime("%Y-%m-%d"),
                  torch=torch.__version__, machine=platform.machine(), cpu=describe_cpu())
    path, record = _records(path)
    record[name] = result
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deeplsp_helpers.studies", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a study and record it")
    run.add_argument("name", choices=STUDIES)
    run.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    show = sub.add_parser("show", help="print a recorded study")
    show.add_argument("name", choices=STUDIES)
    args = parser.parse_args(argv)
    if args.command == "run":
        run_study(args.name, args.seeds, log=lambda line: print(line, flush=True))
    else:
        try:
            print(json.dumps(read_study(args.name), indent=1))
        except KeyError as err:
            print(err.args[0], file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
