"""The DeepLSP recipe, in one place: what chapter 06 validates, what the model zoo builds its pruned
checkpoints with, and what the command line does by default.

    structured stage   channels removed until this machine's latency table (measured at ``request_batch_size``)
                       predicts ``target_speedup`` (:func:`deeplsp_helpers.speedup.prune_to_speedup`, one shot;
                       ``cost`` weighs each channel's importance by nothing, MACs or predicted milliseconds);
                       or, with ``halp_steps`` = K > 0, HALP's way in K steps (Taylor importance, latency
                       knapsack, ``cost="latency"``; :func:`deeplsp_helpers.halp.halp_prune`)
    fine-tune          ``finetune_epochs // 2`` epochs over ``finetune_samples`` training images (seed 0); with
                       ``halp_steps`` the K steps happen during this fine-tune, spread over its first quarter
                       (:func:`deeplsp_helpers.halp.progressive_fine_tune`)
    unstructured stage sensitivity-adaptive magnitude pruning (sensitivities on ``calibration_images`` training
                       images) until the model keeps the dense model's parameter count / ``nonzero_factor``
                       non-zero (:func:`deeplsp_helpers.deeplsp.sparsity_for_nonzero_factor`)
    fine-tune          the other epochs (seed 1), prune masks attached so that zeros stay zero; then masks removed

Fine-tuning is SGD at ``lr`` with batches of ``batch_size``, distilled from the dense model if ``distill``
(:func:`deeplsp_helpers.train.fine_tune`). HALP's progressive, Taylor-scored variant of the structured stage is
:func:`deeplsp_helpers.halp.halp_prune`; chapter 06 compares it with this recipe's one-shot stage.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from ._validate import check_bool, check_ints, check_number

__all__ = ["DeepLSPRecipe", "DEFAULT_RECIPE"]


@dataclasses.dataclass(frozen=True)
class DeepLSPRecipe:
    """One DeepLSP recipe (see the module's docstring); the defaults are the recipe chapter 06 validates."""

    target_speedup: float = 1.5
    request_batch_size: int = 1
    cost: str = "none"
    latency_repeats: int = 50
    nonzero_factor: float = 10.5
    calibration_images: int = 512
    finetune_epochs: int = 2
    finetune_samples: int = 15_000
    lr: float = 0.05
    batch_size: int = 128
    distill: bool = True
    halp_steps: int = 0

    def __post_init__(self):
        from .speedup import COSTS

        check_number(self.target_speedup, "target_speedup", 1)
        check_number(self.nonzero_factor, "nonzero_factor", 1, strict=False, hint=" (times fewer non-zero parameters)")
        check_number(self.lr, "lr", 0)
        if self.cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {self.cost!r}")
        check_ints(("request_batch_size", self.request_batch_size, 1), ("latency_repeats", self.latency_repeats, 3),
                   ("calibration_images", self.calibration_images, 64), ("finetune_epochs", self.finetune_epochs, 0),
                   ("finetune_samples", self.finetune_samples, 1), ("batch_size", self.batch_size, 1))
        check_bool(self.distill, "distill")
        check_ints(("halp_steps", self.halp_steps, 0))
        if self.halp_steps and (self.cost != "latency" or self.finetune_epochs < 2):
            raise ValueError("halp_steps > 0 (HALP's structured stage) needs cost='latency' (its latency knapsack) and "
                             f"finetune_epochs >= 2 (its steps happen during the first stage's fine-tune); got "
                             f"cost={self.cost!r}, finetune_epochs={self.finetune_epochs}")

    def as_record(self) -> dict:
        """The recipe as a plain dict (what the zoo's manifest records)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "DeepLSPRecipe":
        """The recipe a manifest entry records (its ``base`` and ``chapter`` keys ignored). A field the entry lacks
        takes its default: entries written before ``request_batch_size`` existed were all requested at batch size 1."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(record) - fields - {"base", "chapter"}
        if unknown:
            raise ValueError(f"not fields of a DeepLSPRecipe: {sorted(unknown)}")
        return cls(**{k: v for k, v in record.items() if k in fields})

    def calibration(self, splits) -> list:
        """The sensitivity batches: ``calibration_images`` images of the training split, 64 a batch (seeded)."""
        from . import data

        return data.calibration_batches(splits.train, n_batches=self.calibration_images // 64, batch_size=64)

    def finetune_fn(self, dense: nn.Module, splits, *, finetune_data=None,
                    after_stage: Callable[[nn.Module, str], None] | None = None, progress: bool | None = None,
                    val_loader=None, history: dict | None = None):
        """The recipe's fine-tuning as a ``finetune(model, stage)`` callback for
        :func:`~deeplsp_helpers.deeplsp.apply_combined_pruning`: ``finetune_epochs // 2`` epochs after the structured
        stage (seed 0), the rest after the unstructured one (seed 1), over ``finetune_data`` (default: the first
        ``finetune_samples`` of a shuffled training split, :func:`deeplsp_helpers.data.subset`, with ``dense``'s
        outputs if ``distill``). ``after_stage(model, stage)`` is called after each (e.g. to keep a copy of the
        structured stage; during the unstructured call the prune masks are still attached). With ``val_loader`` and a
        dict ``history``, the validation accuracy after every fine-tuning epoch is stored as ``history[stage]`` (a
        list, one per epoch; with ``halp_steps``, the structured stage's list holds the accuracy after its last step)."""
        from . import data, seed_everything, train

        if progress is not None:
            check_bool(progress, "progress")
        if history is not None and not isinstance(history, dict):
            raise TypeError("history must be a dict (filled with each stage's validation per epoch), got "
                            f"{type(history).__name__}")
        if history is not None and val_loader is None:
            raise ValueError("history needs val_loader: the validation accuracy per epoch is measured on it")
        if finetune_data is None and self.finetune_epochs:
            finetune_data = data.subset(splits.train, self.finetune_samples)
            if self.distill:
                finetune_data = train.with_teacher_outputs(dense, finetune_data)
        epochs = {"structured": self.finetune_epochs // 2,
                  "unstructured": self.finetune_epochs - self.finetune_epochs // 2}
        seeds = {"structured": 0, "unstructured": 1}
        schedules = {}  # HALP: one progressive schedule over the structured stage's fine-tune

        def finetune(model, stage):
            if stage.startswith("structured "):  # "structured k/K": HALP's step k of K
                from .halp import progressive_fine_tune

                k, steps = (int(v) for v in stage.split()[1].split("/"))
                if steps not in schedules:
                    schedules[steps] = progressive_fine_tune(finetune_data, steps, num_epochs=epochs["structured"],
                                                             lr=self.lr, batch_size=self.batch_size,
                                                             seed=seeds["structured"])
                schedules[steps](model, k)
                if k == steps:
                    if history is not None:
                        history["structured"] = [round(train.evaluate(model, val_loader), 2)]
                    if after_stage is not None:
                        after_stage(model, "structured")
                return
            if epochs[stage]:
                seed_everything(seeds[stage])
                loader = data.BatchLoader(finetune_data, self.batch_size, shuffle=True, seed=seeds[stage])
                done = train.fine_tune(model, loader, num_epochs=epochs[stage], lr=self.lr, progress=progress,
                                       val_loader=val_loader)
                if history is not None:
                    history[stage] = [round(a, 2) for a in done["val_acc"]]
            if after_stage is not None:
                after_stage(model, stage)

        return finetune

    def run(self, dense: nn.Module, splits, *, table=None, calibration=None, finetune_data=None,
            after_stage: Callable[[nn.Module, str], None] | None = None, progress: bool | None = None,
            loaders=None, report: bool | str = False, threads: int = 1, val_loader=None, history: dict | None = None):
        """Apply the recipe to ``dense`` (left unchanged): ``(pruned model, report rows)``, masks removed.

        Args:
            splits: the FashionMNIST splits (:func:`deeplsp_helpers.data.load_fashion_mnist`): the request is made
                on the first ``request_batch_size`` validation images, everything learnt from the training split.
            table: a :class:`~deeplsp_helpers.latency_model.LatencyTable` of ``dense`` at ``request_batch_size``
                (measured here, ``latency_repeats`` repeats, if None).
            calibration: the sensitivity batches (default :meth:`calibration`).
            finetune_data, after_stage, progress, val_loader, history: see :meth:`finetune_fn`.
            loaders, report: the per-stage report of :func:`~deeplsp_helpers.deeplsp.apply_combined_pruning`
                (default: none, and no rows).
        """
        from .deeplsp import apply_combined_pruning
        from .latency_model import LatencyTable

        x = splits.val.X[: self.request_batch_size]
        if len(x) < self.request_batch_size:
            raise ValueError(f"request_batch_size {self.request_batch_size} is larger than the validation split")
        if table is None:
            table = LatencyTable.measure(dense, x, threads=threads, repeats=self.latency_repeats)
        finetune = self.finetune_fn(dense, splits, finetune_data=finetune_data, after_stage=after_stage,
                                    progress=progress, val_loader=val_loader, history=history)
        return apply_combined_pruning(dense, x, target_speedup=self.target_speedup,
                                      batch_size=self.request_batch_size, latency_table=table, cost=self.cost,
                                      nonzero_factor=self.nonzero_factor, sensitivity_adaptive=True,
                                      calibration=self.calibration(splits) if calibration is None else calibration,
                                      finetune=finetune, loaders=loaders, report=report, threads=threads,
                                      halp_steps=self.halp_steps)


DEFAULT_RECIPE = DeepLSPRecipe()

