"""Deployment: a (pruned) model as an ONNX file, run by ONNX Runtime on the CPU, quantized to int8, sized on disk.

The path from a PyTorch model to a file a user ships:

1. :func:`export_onnx` writes the model as an ONNX graph (batch size left free, so one file serves 1 and 64).
   It refuses a model that still carries ``torch.nn.utils.prune`` masks: make them permanent first.
2. :func:`ort_session` opens the file in ONNX Runtime on the CPU with a fixed thread count;
   :class:`OrtModel` wraps the session so that it is called like a model (tensor in, tensor out), which is
   what :func:`deeplsp_helpers.latency.compare_speedups` needs to time it against PyTorch in one run.
3. :func:`max_abs_difference` and :func:`ort_accuracy` check that the file computes what the model did.
4. :func:`quantize_int8` writes an int8 copy (ONNX Runtime's static quantization, calibrated on a few
   training batches; 7-bit weights by default, so that CPUs without VNNI give the same answers).
5. :func:`file_size` and :func:`zipped_size` say what the file costs on disk and to ship: zeros left by
   unstructured pruning are stored densely in an ONNX file, and only compression makes them cheap.
"""

from __future__ import annotations

import inspect
import io
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch import nn

from ._modes import eval_mode
from ._validate import check_batch, check_bool, check_ints, check_labels, check_module
from .files import atomic_write
from .masks import masked_layers

__all__ = ["export_onnx", "ort_session", "OrtModel", "max_abs_difference", "ort_accuracy", "quantize_int8",
           "file_size", "zipped_size"]

DEFAULT_OPSET = 17  # ONNX Runtime runs it; per-channel int8 needs >= 13
# torch >= 2.5 has two exporters and, from 2.9, defaults to the torch.export-based one, which needs onnxscript
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _check_path(path, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or pathlib.Path), got {type(path).__name__}")
    return Path(path)


def _existing_file(path, name: str = "path") -> Path:
    path = _check_path(path, name)
    if not path.is_file():
        raise FileNotFoundError(f"{name} {path} is not a file")
    return path


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: str | os.PathLike, *,
                dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, input_name: str = "input",
                output_name: str = "output") -> Path:
    """Write ``model`` (in eval mode) as an ONNX file at ``path``, atomically; returns the path.

    Uses PyTorch's TorchScript-based exporter (``dynamo=False``; deprecated by PyTorch, which now defaults to its
    ``torch.export``-based exporter, also installed here with ``onnxscript``: chapter 07 shows both); it traces
    ``model(example_inputs)``, so the graph holds the operations of that one call (no Python control flow),
    and folds constants; with constant folding (on here) and the model in eval mode it also folds each
    BatchNorm into the convolution before it. Its deprecation warning is
    silenced here. With ``dynamic_batch`` the first dimension of the input and output is named ``batch`` and
    left free, so the file runs any batch size; the other dimensions are fixed to ``example_inputs``'s.
    ``input_name`` and ``output_name`` name the graph's input and output (what a session's ``run`` is fed and
    returns).

    Raises:
        ValueError: the model still carries ``torch.nn.utils.prune`` masks (``weight_orig`` and
            ``weight_mask`` and a forward pre-hook). Make them permanent first with
            :func:`deeplsp_helpers.deeplsp.remove_pruning_masks` (or ``torch.nn.utils.prune.remove(module,
            "weight")`` on each layer), or export :func:`deeplsp_helpers.deeplsp.deployable_copy`.
    """
    check_module(model)
    check_batch(example_inputs)
    path = _check_path(path)
    check_ints(("opset", opset, 13))
    check_bool(dynamic_batch, "dynamic_batch")
    for name, value in (("input_name", input_name), ("output_name", output_name)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name} must be a non-empty string, got {value!r}")
    if input_name == output_name:
        raise ValueError(f"input_name and output_name must differ, both are {input_name!r}")
    masked = [n or "the model itself" for n in masked_layers(model)]
    if masked:
        raise ValueError(
            f"the model still carries torch.nn.utils.prune masks (in {', '.join(masked)}): remove them before "
            "export with deeplsp_helpers.deeplsp.remove_pruning_masks(model) (or torch.nn.utils.prune.remove(module, "
            "'weight') on each layer), so that the file holds one plain weight per layer")
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with eval_mode(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(model, (example_inputs,), buf, input_names=[input_name], output_names=[output_name],
                          dynamic_axes=axes, opset_version=opset, **_TORCHSCRIPT_EXPORTER)
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def ort_session(path: str | os.PathLike, *, threads: int = 1):
    """An ``onnxruntime.InferenceSession`` for the ONNX file at ``path`` on the CPU, with ``threads`` threads.

    Operators run one after another (one inter-op thread), each on ``threads`` threads; idle threads do not
    spin waiting for work, so that in an interleaved timing they leave the cores to the next model.
    Graph optimizations are ONNX Runtime's default (all), as a deployment would run them.
    """
    path = _existing_file(path)
    check_ints(("threads", threads, 1))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtModel:
    """An ONNX Runtime session called like a PyTorch model: ``OrtModel(session)(x)`` takes a batch tensor and
    returns the output tensor (on the CPU, float32).

    ``threads`` is the session's intra-op thread count (0 for a session left at ONNX Runtime's default, one
    thread per core); :func:`deeplsp_helpers.latency.compare_latency` requires it to equal its own ``threads``,
    so that both runtimes are timed like for like: open the session with :func:`ort_session`.
    """

    def __init__(self, session):
        if not isinstance(session, ort.InferenceSession):
            raise TypeError(f"session must be an onnxruntime.InferenceSession (see ort_session), got "
                            f"{type(session).__name__}")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"OrtModel needs a model with one input and one output, got {len(inputs)} and "
                             f"{len(outputs)}")
        self.session = session
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.threads = session.get_session_options().intra_op_num_threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(x, "x")
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: array})[0])

    def __repr__(self) -> str:
        return f"OrtModel(input={self.input_name!r}, output={self.output_name!r}, threads={self.threads})"


def _as_ort_model(session) -> OrtModel:
    return session if isinstance(session, OrtModel) else OrtModel(session)


def max_abs_difference(model: nn.Module, session, inputs: torch.Tensor) -> float:
    """Largest absolute difference between ``model(inputs)`` (eval mode, mode restored) and the ONNX Runtime
    session's output (an ``InferenceSession`` or an :class:`OrtModel`) on the same inputs."""
    check_module(model)
    check_batch(inputs, "inputs")
    ort_model = _as_ort_model(session)
    with eval_mode(model), torch.inference_mode():
        expected = model(inputs).float().cpu()
    got = ort_model(inputs)
    if got.shape != expected.shape:
        raise ValueError(f"the session's output has shape {tuple(got.shape)}, the model's {tuple(expected.shape)}")
    return float((got - expected).abs().max())


def ort_accuracy(session, loader: Iterable) -> float:
    """Top-1 accuracy in percent of an ONNX Runtime session (an ``InferenceSession`` or an :class:`OrtModel`)
    over ``loader``, which yields ``(X, y)`` batches (a third element is ignored), like
    :func:`deeplsp_helpers.train.evaluate` for a PyTorch model."""
    ort_model = _as_ort_model(session)
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of (X, y) batches, got {type(loader).__name__}")
    correct = total = 0
    for batch in loader:
        X, y = batch[0], batch[1]
        out = ort_model(X)
        check_labels(y, out, "the loader's labels y")
        correct += int((out.argmax(1) == y.cpu()).sum())
        total += len(y)
    if total == 0:
        raise ValueError("loader yielded no samples")
    return 100.0 * correct / total


def _calibration_arrays(batches: Sequence) -> list[np.ndarray]:
    if isinstance(batches, torch.Tensor) or not isinstance(batches, (list, tuple)) or not batches:
        raise TypeError("calibration_batches must be a non-empty list of input batches or (X, y) pairs, "
                        "e.g. deeplsp_helpers.data.calibration_batches(splits.train, 4, 128)")
    arrays = []
    for i, b in enumerate(batches):
        X = b[0] if isinstance(b, (list, tuple)) else b
        check_batch(X, "each calibration batch")
        arrays.append(np.ascontiguousarray(X.detach().to("cpu", torch.float32).numpy()))
        if not np.isfinite(arrays[-1]).all():  # ONNX Runtime's calibration would fail with "AssertionError: scale issue"
            raise ValueError(f"calibration batch {i} holds NaN or infinite values; calibrate on real input images")
    if len({a.shape[1:] for a in arrays}) != 1:
        raise ValueError(f"calibration batches differ in shape beyond the batch size: {sorted({a.shape for a in arrays})}")
    return arrays


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, calibration_batches: Sequence, *,
                  per_channel: bool = True, reduce_range: bool = True) -> Path:
    """Write an int8 copy of the float ONNX file ``onnx_path`` at ``out_path`` (atomically); returns ``out_path``.

    ONNX Runtime's static quantization: the model is first pre-processed as ONNX Runtime recommends (shape
    inference and graph optimization: ``quant_pre_process``), then run on ``calibration_batches`` (a list of
    input batches or ``(X, y)`` pairs; draw them from the **training** split, e.g.
    ``data.calibration_batches(splits.train, 4, 128)``) to record each activation's range (min/max). In the QDQ
    format written here, weights are stored as int8 (symmetric: zero point 0, scale from each output channel's
    largest |w| with ``per_channel``) behind a DequantizeLinear, biases as int32, and activations pass through
    QuantizeLinear / DequantizeLinear pairs with the calibrated scales; ONNX Runtime replaces these patterns by
    integer kernels where it has them (an operator without one runs in float). Activations are int8 too (S8S8).
    A weight that is zero stays exactly zero.

    ``reduce_range`` (the default) stores the weights on a 7-bit scale (-64..64) instead of 8 bits. On an x86 CPU without
    VNNI (:func:`deeplsp_helpers.cpu.has_vnni`), ONNX Runtime's integer kernels add each pair of uint8 x int8
    products into an int16, which saturates when both products are large (255 x 127 x 2 > 32,767); the same
    8-bit file then loses points of accuracy there and none on a CPU with VNNI. With 7-bit weights every pair
    fits (255 x 64 x 2 < 32,768), so one file gives the same answers on both kinds of CPU, for a slightly
    coarser weight grid. Pass ``reduce_range=False`` for full 8-bit weights on a CPU known to have VNNI.
    """
    onnx_path = _existing_file(onnx_path, "onnx_path")
    out_path = _check_path(out_path, "out_path")
    check_bool(per_channel, "per_channel")
    check_bool(reduce_range, "reduce_range")
    arrays = _calibration_arrays(calibration_batches)
    try:
        graph_inputs = onnx.load(str(onnx_path), load_external_data=False).graph.input
    except Exception as err:  # protobuf's DecodeError, a truncated file, ...
        raise ValueError(f"onnx_path {onnx_path} is not a readable ONNX model (corrupt or truncated: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}); export it "
                         "again with export_onnx") from None
    if len(graph_inputs) != 1:
        raise ValueError(f"quantize_int8 needs a model with one input, {onnx_path} has {len(graph_inputs)}")
    input_name = graph_inputs[0].name
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in graph_inputs[0].type.tensor_type.shape.dim]
    shape = arrays[0].shape
    if len(fixed) != len(shape) or any(f is not None and f != n for f, n in zip(fixed, shape)):
        raise ValueError(f"calibration batches of shape {shape} do not fit the model's input "
                         f"{['batch' if f is None else f for f in fixed]} (a file exported with dynamic_batch=False "
                         "takes only its example batch size)")

    class Batches(CalibrationDataReader):
        def __init__(self):
            self._feeds = iter([{input_name: a} for a in arrays])

        def get_next(self):
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(prepared, quantized, Batches(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                        extra_options={"WeightSymmetric": True})  # zero point 0: a zero weight stays exactly 0
        data = quantized.read_bytes()
    return atomic_write(out_path, lambda f: f.write(data))


def file_size(path: str | os.PathLike) -> int:
    """Size of the file at ``path`` on disk, in bytes (divide by 1024 for KiB)."""
    return _existing_file(path).stat().st_size


def zipped_size(path: str | os.PathLike, level: int = 9) -> int:
    """Size in bytes of a zip archive (deflate, ``level`` 0-9) holding the file at ``path``: what it costs to
    ship. Runs of zeros, e.g. weights removed by unstructured pruning, compress to almost nothing."""
    path = _existing_file(path)
    check_ints(("level", level, 0, 9))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as z:
        z.write(path, arcname=path.name)
    return len(buf.getvalue())
