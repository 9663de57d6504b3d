"""Training, evaluation and fine-tuning loops with progress bars and callbacks.

Progress bars are quiet when ``$CI`` or ``$TQDM_DISABLE`` is set (they would only clutter logs
and executed notebooks); pass ``progress=True`` to force them on. A bar redraws at most twice a
second (``mininterval``), so a long loop never floods a notebook's output channel.

Speed: training and evaluation run the model in the channels-last memory format (NHWC), which
PyTorch's CPU convolutions run faster (measured on a 2-core machine, PyTorch 2.14: training steps
1.3-1.9x, evaluation 1.4-1.8x faster for the course's convolutional models). The model is put back
in its own memory format afterwards, so latency measured later sees the model as it was.
A distillation teacher's outputs can be computed once per data subset
(:func:`with_teacher_outputs`) and reused by every fine-tuning run on it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from . import get_device
from ._modes import eval_mode, train_mode
from ._validate import check_bool, check_ints, check_labels, check_module, check_number

__all__ = ["evaluate", "train", "fine_tune", "distillation_loss", "progress_enabled", "with_teacher_outputs",
           "channels_last", "reestimate_batchnorm"]

PROGRESS_MININTERVAL = 0.5  # seconds between two redraws of a progress bar

Callback = Callable[[nn.Module], None]


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to draw tqdm bars: ``progress`` if given, else off under ``$CI`` / ``$TQDM_DISABLE``."""
    if progress is not None:
        return bool(progress)
    return not any(os.environ.get(v, "").lower() not in ("", "0", "false") for v in ("CI", "TQDM_DISABLE"))


def _check_loader(loader, what: str) -> None:
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"{what} must be an iterable of (X, y) batches, got {type(loader).__name__}")


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def channels_last(model: nn.Module, enabled: bool = True):
    """Run ``model`` in the channels-last memory format inside the block, then restore its parameters'
    and buffers' own formats (the same ``Parameter`` objects throughout, so an optimizer keeps them).

    Only models with a ``Conv2d`` are converted (a model of Linear layers gains nothing). Inputs
    should be converted too: ``X.contiguous(memory_format=torch.channels_last)``.
    """
    if not enabled or not _has_conv(model) or any(t.is_inference() for t in (*model.parameters(), *model.buffers())):
        yield False  # (a model created under inference_mode cannot be converted in place: it runs as it is)
        return
    # Put every 4-D parameter and buffer back exactly, strides included: a [C, 1, k, k] weight is both
    # "contiguous" and "channels-last", and one left with channels-last strides makes the whole model run
    # NHWC afterwards. ``Module.to`` keeps Parameter objects but *replaces* buffers (e.g. prune masks), so
    # both are restored through their module.
    saved = [(m, store, key, t.data if store == "_parameters" else t)
             for m in model.modules() for store in ("_parameters", "_buffers")
             for key, t in getattr(m, store).items() if t is not None and t.ndim == 4]
    with torch.inference_mode(False), torch.no_grad():  # never turn parameters into inference tensors
        model.to(memory_format=torch.channels_last)
    try:
        yield True
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for m, store, key, orig in saved:
                now = getattr(m, store).get(key)
                if now is None:
                    continue
                if store == "_parameters":
                    if now.data is not orig:
                        orig.copy_(now.data)
                        now.data = orig
                elif now is not orig:
                    orig.copy_(now)
                    m._buffers[key] = orig


def _to_input(X: torch.Tensor, device, cl: bool) -> torch.Tensor:
    X = X.to(device)
    return X.contiguous(memory_format=torch.channels_last) if cl and X.ndim == 4 else X


def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy in percent, in eval mode, without gradients. The model's mode is restored.

    ``loader`` yields ``(X, y)`` batches (a third element, e.g. teacher logits, is ignored).
    """
    check_module(model)
    _check_loader(loader, "loader")
    device = torch.device(device) if device is not None else _model_device(model)
    correct = total = 0
    with eval_mode(model), channels_last(model, device.type == "cpu") as cl, torch.inference_mode():
        for batch in loader:
            X, y = batch[0], batch[1]
            y_hat = model(_to_input(X, device, cl))
            check_labels(y, y_hat, "the loader's labels y")  # [N, 1] or one-hot labels: a wrong number, no error
            correct += (y_hat.argmax(1) == y.to(device)).sum().item()
            total += len(y)
    if total == 0:
        raise ValueError("loader yielded no samples")
    return 100.0 * correct / total


def reestimate_batchnorm(model: nn.Module, loader: Iterable, device: torch.device | str | None = None) -> nn.Module:
    """Recompute every BatchNorm layer's running mean and variance from ``loader``'s images, changing no weight.

    The statistics are reset and re-estimated as an equal-weight average over the batches (train-mode forward
    passes without gradients), the part of fine-tuning's recovery after pruning that needs no learning. Each
    layer's ``momentum`` and every module's train/eval flag are restored. Returns the model.
    """
    check_module(model)
    _check_loader(loader, "loader")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the model has no BatchNorm layer whose statistics could be re-estimated")
    if not all(m.track_running_stats for m in norms):
        raise ValueError("every BatchNorm layer must track running statistics (track_running_stats=True)")
    device = torch.device(device) if device is not None else _model_device(model)
    momenta = [m.momentum for m in norms]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    seen = 0
    try:
        with train_mode(model), torch.no_grad():
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative (equal-weight) average over the batches
            for batch in loader:
                model(batch[0].to(device))
                seen += len(batch[0])
        if seen == 0:
            raise ValueError("loader yielded no samples")
    except BaseException:
        for m, state in zip(norms, before):  # a failed re-estimation leaves the old statistics in place
            m.load_state_dict(state)
        raise
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return model


def _logits(model: nn.Module, X: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    device = _model_device(model)
    with eval_mode(model), channels_last(model, device.type == "cpu") as cl, torch.inference_mode():
        return torch.cat([model(_to_input(X[i:i + batch_size], device, cl)).float().cpu()
                          for i in range(0, len(X), batch_size)])


def with_teacher_outputs(teacher: nn.Module, dataset):
    """A copy of ``dataset`` (a ``data.ImageTensorDataset``) that carries ``teacher``'s logits for every
    image, computed once, in eval mode. Loaders over it yield ``(X, y, teacher_logits)``, and
    :func:`train` / :func:`fine_tune` distil from those logits without running the teacher again:
    the teacher is fixed, so its outputs on a fixed subset can be shared by every fine-tuning run.
    """
    from .data import ImageTensorDataset

    check_module(teacher)
    if not isinstance(dataset, ImageTensorDataset):
        raise TypeError(f"dataset must be a data.ImageTensorDataset, got {type(dataset).__name__}")
    return ImageTensorDataset(dataset.X, dataset.y, dataset.classes, soft=_logits(teacher, dataset.X))


def distillation_loss(y_hat: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor, *,
                      temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """``(1 - alpha) * CE(y_hat, y) + alpha * T^2 * KL(teacher || student)`` at temperature ``T``.

    Knowledge distillation: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
    arXiv:1503.02531. The ``T^2`` factor keeps the soft term's gradients on the scale of the hard term's.
    """
    if not temperature > 0 or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"need temperature > 0 and alpha in [0, 1], got {temperature!r}, {alpha!r}")
    hard = nn.functional.cross_entropy(y_hat, y)
    soft = nn.functional.kl_div(nn.functional.log_softmax(y_hat / temperature, 1),
                                nn.functional.log_softmax(teacher_logits / temperature, 1),
                                reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature ** 2 * soft


def _run_epochs(model, loader, optimizer, scheduler, num_epochs, callbacks, penalty, device, progress, desc,
                on_epoch_end, teacher=None, cl=False, before_step=(), start_step=0, stop_step=None):
    loss_fn = nn.CrossEntropyLoss()
    if teacher is not None:
        teacher.eval()
    step = 0
    for epoch in range(num_epochs):
        model.train()
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{num_epochs}", leave=False, disable=not progress_enabled(progress),
                   mininterval=PROGRESS_MININTERVAL)
        running, seen = 0.0, 0
        for batch in bar:
            step += 1
            if stop_step is not None and step > stop_step:  # a segment of a longer run: stop where it ends
                break
            if step <= start_step:  # resumed run: these steps happened before (the schedule was advanced past them)
                continue
            X, y = _to_input(batch[0], device, cl), batch[1].to(device)
            soft = batch[2].to(device) if len(batch) > 2 else None
            optimizer.zero_grad(set_to_none=True)
            if soft is not None:
                loss = distillation_loss(model(X), y, soft)
            elif teacher is None:
                loss = loss_fn(model(X), y)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(X)
                loss = distillation_loss(model(X), y, teacher_logits)
            if penalty is not None:
                loss = loss + penalty(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch + 1}; lower the learning rate")
            loss.backward()
            for hook in before_step:
                hook(model)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            for cb in callbacks:
                cb(model)
            running += loss.item() * len(y)
            seen += len(y)
            if progress_enabled(progress):
                bar.set_postfix(loss=f"{running / seen:.3f}", refresh=False)
        on_epoch_end(epoch, running / max(seen, 1))
        if stop_step is not None and step >= stop_step:
            return


def _with_cached_teacher(loader, teacher):
    """A BatchLoader over the same samples carrying ``teacher``'s logits (computed once), else ``loader``."""
    from .data import BatchLoader

    if not isinstance(loader, BatchLoader):
        return loader
    if loader.dataset.soft is not None:
        raise ValueError("the loader's dataset already carries teacher outputs; pass teacher=None")
    cached = BatchLoader(with_teacher_outputs(teacher, loader.dataset), loader.batch_size, loader.shuffle,
                         loader.seed, loader.drop_last)
    cached._epoch = loader._epoch
    return cached


def _make_optimizer(model, optimizer: str, lr: float, weight_decay: float, momentum: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":  # decoupled weight decay (Loshchilov & Hutter, arXiv:1711.05101): the transformers' default
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {optimizer!r}")


def _check_hparams(num_epochs, lr, weight_decay):
    check_ints(("num_epochs", num_epochs, 0))
    check_number(lr, "lr", 0)
    check_number(weight_decay, "weight_decay", 0, strict=False)


def train(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None, *, num_epochs: int = 5,
          lr: float = 0.05, optimizer: str = "sgd", weight_decay: float = 5e-4, momentum: float = 0.9,
          schedule: str = "onecycle", select_best: bool = True, callbacks: Sequence[Callback] = (),
          penalty: Callable[[nn.Module], torch.Tensor] | None = None, teacher: nn.Module | None = None,
          device=None, progress: bool | None = None, before_step: Sequence[Callback] = (),
          start_step: int = 0, stop_step: int | None = None) -> dict:
    """Train with cross-entropy; optionally keep the epoch with the best validation accuracy.

    Args:
        optimizer: ``'sgd'`` (Nesterov momentum), ``'adam'`` or ``'adamw'`` (decoupled weight decay).
        schedule: ``'onecycle'`` (Smith & Topin, arXiv:1708.07120), ``'cosine'`` or ``'constant'``.
        select_best: with a ``val_loader``, restore the weights of the best validation epoch.
        callbacks: called as ``cb(model)`` after every optimizer step (e.g. to re-apply masks).
        before_step: called as ``hook(model)`` after the backward pass and before each optimizer step, when
            the gradients exist (e.g. Torch-Pruning's ``GroupNormPruner.regularize``, which adds the gradient
            of a weighted squared-L2 penalty on each channel group to the gradients).
        penalty: an extra loss term ``penalty(model)``, e.g. L1 on BatchNorm scales.
        teacher: a model whose soft outputs the model also learns from (:func:`distillation_loss`,
            T = 4, alpha = 0.5); e.g. the dense model while fine-tuning its pruned copy. Over a
            ``data.BatchLoader`` its outputs are computed once for the whole subset, not per batch; a
            loader over :func:`with_teacher_outputs` carries them already (then leave ``teacher`` None).
        start_step: resume a run of ``num_epochs`` at this optimizer step: the learning-rate schedule starts
            where it stood after ``start_step`` steps, and the first ``start_step`` batches are skipped, so the
            model takes ``num_epochs * len(train_loader) - start_step`` steps (weight rewinding resumes this
            way: Renda et al., "Comparing Rewinding and Fine-tuning in Neural Network Pruning", arXiv:2003.02389).
        stop_step: end the run after this optimizer step (None: at its end). With ``start_step`` it runs one
            segment of a longer run, steps ``start_step + 1 .. stop_step`` on that run's schedule; the last epoch
            in the history may then be partial. (The optimizer, and so its momentum, starts afresh in each call.)
    Returns:
        A history dict: ``train_loss``, ``val_acc`` per epoch, ``best_epoch``, ``seconds``.
    """
    check_module(model)
    _check_loader(train_loader, "train_loader")
    _check_hparams(num_epochs, lr, weight_decay)
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module or None, got {type(teacher).__name__}")
    for hooks, label in ((callbacks, "callbacks"), (before_step, "before_step")):
        if callable(hooks) or not all(callable(h) for h in hooks):
            raise TypeError(f"{label} must be a list of callables hook(model), e.g. [pruner.apply]")
    check_bool(select_best, "select_best")
    if progress is not None:
        check_bool(progress, "progress")
    if schedule not in ("onecycle", "cosine", "constant"):
        raise ValueError(f"schedule must be 'onecycle', 'cosine' or 'constant', got {schedule!r}")
    device = torch.device(device) if device is not None else get_device()
    model.to(device)
    opt = _make_optimizer(model, optimizer, lr, weight_decay, momentum)
    steps = max(1, num_epochs * len(train_loader))
    check_ints(("start_step", start_step, 0))
    if start_step >= steps:
        raise ValueError(f"start_step must be below the run's {steps} steps (num_epochs * len(train_loader)), "
                         f"got {start_step}")
    if stop_step is not None:
        check_ints(("stop_step", stop_step, start_step + 1))
        if stop_step > steps:
            raise ValueError(f"stop_step must be at most the run's {steps} steps (num_epochs * len(train_loader)), "
                             f"got {stop_step}")
    sched = None
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    if sched is not None and start_step:
        with warnings.catch_warnings():  # stepping the schedule before any optimizer step is the point here
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            for _ in range(start_step):
                sched.step()
    history = {"train_loss": [], "val_acc": [], "best_epoch": None, "seconds": 0.0}
    best = {"acc": -1.0, "state": None}

    def on_epoch_end(epoch, loss):
        history["train_loss"].append(loss)
        if val_loader is not None:
            acc = evaluate(model, val_loader, device)
            history["val_acc"].append(acc)
            if acc > best["acc"]:
                best["acc"], history["best_epoch"] = acc, epoch + 1
                if select_best:
                    best["state"] = copy.deepcopy(model.state_dict())

    start = time.perf_counter()
    loader = train_loader
    if teacher is not None:
        teacher.to(device)
        loader = _with_cached_teacher(train_loader, teacher)
        if loader is not train_loader:
            teacher = None  # its outputs travel with the batches now
    with channels_last(model, device.type == "cpu") as cl:
        _run_epochs(model, loader, opt, sched, num_epochs, callbacks, penalty, device, progress, "epoch",
                    on_epoch_end, teacher, cl, before_step, start_step, stop_step)
    if loader is not train_loader:
        train_loader._epoch = loader._epoch  # the next pass over train_loader gets a new order, as without a teacher
    history["seconds"] = time.perf_counter() - start
    if select_best and best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return history


def fine_tune(model: nn.Module, train_loader: Iterable, *, num_epochs: int = 1, lr: float = 0.01,
              optimizer: str = "sgd", weight_decay: float = 5e-4, momentum: float = 0.9,
              callbacks: Sequence[Callback] = (), penalty: Callable[[nn.Module], torch.Tensor] | None = None,
              teacher: nn.Module | None = None, val_loader: Iterable | None = None, device=None,
              progress: bool | None = None, before_step: Sequence[Callback] = (), start_step: int = 0,
              stop_step: int | None = None) -> dict:
    """Fine-tune a (pruned) model with a cosine-decaying learning rate.

    ``callbacks`` run after every optimizer step: pass a pruner's ``apply`` to keep pruned
    weights at zero (otherwise their gradients, carried on by momentum, bring them back).
    ``teacher`` (e.g. the dense model) adds knowledge distillation (:func:`distillation_loss`).
    ``before_step`` hooks run between the backward pass and each optimizer step; ``start_step`` / ``stop_step``
    run one segment of the schedule (see :func:`train`).
    Returns the same history dict as :func:`train` (the last epoch is kept, not the best).
    """
    return train(model, train_loader, val_loader, num_epochs=num_epochs, lr=lr, optimizer=optimizer,
                 weight_decay=weight_decay, momentum=momentum, schedule="cosine", select_best=False,
                 callbacks=callbacks, penalty=penalty, teacher=teacher, device=device, progress=progress,
                 before_step=before_step, start_step=start_step, stop_step=stop_step)
