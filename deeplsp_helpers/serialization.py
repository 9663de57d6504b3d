"""Saving and loading pruned models: tensors only, so loading works with ``weights_only=True``.

A pruned model no longer has the shapes :func:`~deeplsp_helpers.models.build_model` creates, so its
``state_dict`` alone does not load into a fresh model. :func:`save_pruned` stores the architecture's name
and the tensors; :func:`load_pruned` builds a fresh model and resizes every layer to the saved shapes.
With ``sparse=True`` every tensor with enough zeros is stored as a bitmask (one bit per entry, chapter 01)
plus its non-zero values, so the file shows what unstructured pruning removed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from ._validate import check_bool, check_module, check_tensor
from .files import atomic_write, regular_file
from .masks import masked_layers
from .models import build_model

__all__ = ["save_pruned", "load_pruned", "pack_sparse", "unpack_sparse"]

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_sparse(t: torch.Tensor) -> dict:
    """``{"shape", "bitmask", "values"}``: one bit per entry (non-zero or not, packed 8 to a byte) and the
    non-zero values in row-major order."""
    t = check_tensor(t, "pack_sparse's tensor", floating=True, allow_empty=True)
    flat = t.cpu().reshape(-1)
    nz = flat != 0
    padded = torch.cat([nz, torch.zeros((-len(nz)) % 8, dtype=torch.bool)]).view(-1, 8).to(torch.uint8)
    return {"shape": torch.tensor(list(t.shape), dtype=torch.int64), "bitmask": (padded * _BITS).sum(1).to(torch.uint8),
            "values": flat[nz].clone()}


def unpack_sparse(packed: dict) -> torch.Tensor:
    """The dense tensor back from :func:`pack_sparse`'s output."""
    shape = [int(v) for v in packed["shape"]]
    n = 1
    for d in shape:
        n *= d
    if len(packed["bitmask"]) * 8 < n:
        raise ValueError("corrupt sparse tensor: the bitmask is shorter than the shape")
    bits = ((packed["bitmask"].unsqueeze(1) & _BITS) > 0).reshape(-1)[:n]
    values = packed["values"]
    if int(bits.sum()) != len(values):
        raise ValueError("corrupt sparse tensor: the bitmask and the number of values disagree")
    out = torch.zeros(n, dtype=values.dtype)
    out[bits] = values
    return out.reshape(shape)


def _worth_packing(t: torch.Tensor) -> bool:
    if not t.is_floating_point() or t.numel() < 64:
        return False
    nnz = int(t.count_nonzero())
    return t.numel() / 8 + nnz * t.element_size() < t.numel() * t.element_size()


def _rebuild(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize every layer of a freshly built ``model`` to the shapes in ``state`` (a pruned state_dict)."""
    for name, m in model.named_modules():
        key = f"{name}.weight" if name else "weight"
        if key not in state:
            continue
        w = state[key]
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            m.out_channels = w.shape[0]
            m.groups = w.shape[0] if depthwise else m.groups
            m.in_channels = w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = w.shape[0]
        else:
            continue
        for pname, p in list(m.named_parameters(recurse=False)):
            setattr(m, pname, nn.Parameter(torch.empty_like(state[f"{name}.{pname}"]), requires_grad=p.requires_grad))
        for bname, b in list(m.named_buffers(recurse=False)):
            if b is not None and f"{name}.{bname}" in state:
                setattr(m, bname, torch.empty_like(state[f"{name}.{bname}"]))
    model.load_state_dict(state)
    return model


def _digest(state: dict[str, torch.Tensor], sparse: dict[str, dict]) -> str:
    """sha256 over every key, shape, dtype and byte of the stored tensors (packed ones as stored)."""
    h = hashlib.sha256()
    items = [(k, v) for k, v in state.items()] + [(f"{k}/{part}", t) for k, d in sparse.items() for part, t in sorted(d.items())]
    for key, t in sorted(items, key=lambda kv: kv[0]):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_pruned(model: nn.Module, arch: str, path: str | os.PathLike, *, sparse: bool = False) -> Path:
    """Save a pruned model as ``{'arch': name, 'state_dict': tensors}``, atomically (temp file + rename).

    Only tensors and a string are stored, so :func:`load_pruned` can use ``weights_only=True``
    (a whole-model ``torch.save(model)`` would need ``weights_only=False``, which runs pickled code).
    ``sparse=True`` stores each tensor whose zeros make it worthwhile as a bitmask plus non-zero values
    (:func:`pack_sparse`); it loads back to equal tensors (a -0.0 comes back as 0.0; outputs are identical).
    """
    check_module(model)
    check_bool(sparse, "sparse")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or pathlib.Path), got {type(path).__name__}")
    build_model(arch)  # validates the name
    arch = arch.lower()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    masked = [n or "the model itself" for n in masked_layers(model)]
    if masked:
        raise ValueError(f"model still has pruning masks (in {', '.join(masked)}); call remove_pruning_masks(model) "
                         "before saving")
    try:  # refuse now a file that could never be loaded, rather than at load time
        _rebuild(build_model(arch), state)
    except (RuntimeError, KeyError, ValueError, IndexError) as err:
        raise ValueError(f"the model does not fit arch {arch!r}: a {arch} resized to its shapes does not take its "
                         f"tensors ({str(err).splitlines()[0][:200]}); pass the architecture the model was built "
                         "as") from None
    blob = {"arch": arch, "state_dict": state}
    if sparse:
        blob["sparse"] = {k: pack_sparse(v) for k, v in state.items() if _worth_packing(v)}
        blob["state_dict"] = {k: v for k, v in state.items() if k not in blob["sparse"]}
    blob["sha256"] = _digest(blob["state_dict"], blob.get("sparse", {}))
    return atomic_write(path, lambda f: torch.save(blob, f))


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Load a model written by :func:`save_pruned`: a fresh model of its ``arch`` resized to the saved shapes."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no pruned model at {path}")
    regular_file(path, "pruned model")  # a FIFO would block torch.load forever
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # EOFError with no message for a truncated file, zip errors, unpickling errors
        detail = str(err).splitlines()[0][:200] if str(err) else "no detail"
        raise ValueError(f"{path} is not a readable save_pruned file: truncated or corrupt ({type(err).__name__}: "
                         f"{detail}); save the model again") from None
    if not isinstance(blob, dict) or "arch" not in blob or "state_dict" not in blob:
        raise ValueError(f"{path} was not written by save_pruned (expected keys 'arch' and 'state_dict')")
    sparse, state = blob.get("sparse", {}), blob["state_dict"]
    if not isinstance(state, dict) or not isinstance(sparse, dict) or not isinstance(blob["arch"], str):
        raise ValueError(f"{path} was not written by save_pruned (its 'arch', 'state_dict' or 'sparse' has the wrong type)")
    try:
        digest = _digest(state, sparse) if "sha256" in blob else None  # files from before the checksum have none
    except (AttributeError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path} was not written by save_pruned (it holds something other than tensors: {err})") from None
    if digest is not None and blob["sha256"] != digest:
        raise ValueError(f"{path} fails its checksum: its tensors were changed or corrupted after save_pruned wrote "
                         "them; save the model again")
    try:
        state = dict(state)
        state.update({k: unpack_sparse(v) for k, v in sparse.items()})
        return _rebuild(build_model(blob["arch"]), state).eval()
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as err:
        raise ValueError(f"{path} does not load into a {blob['arch']!r} model: "
                         f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}") from None
