"""What this CPU's vector units can do: the facts that change pruned and quantized models' speed and accuracy.

Two x86 laptops can run the same course with different results, because libraries pick their kernels by the
instructions the CPU has:

- the **vector width** sets the channel block of PyTorch's (oneDNN's) convolution layout: 16 float32 lanes with
  AVX-512, 8 with AVX2, so a width that is a multiple of 16 suits one CPU and a multiple of 8 the other;
- **int8 dot products (VNNI)**: with ``avx512_vnni`` or ``avx_vnni`` an int8 kernel multiplies uint8 by int8 and
  adds into int32 in one instruction. Without it, ONNX Runtime's x86 kernels use ``vpmaddubsw``, which adds each
  *pair* of uint8 x int8 products into an int16 that saturates at 32,767: two products of 255 x 127 do not fit.
  Quantizing weights to 7 bits (``reduce_range``) keeps every pair below the limit.

:func:`cpu_vector_extensions` reads the flags (Linux ``/proc/cpuinfo``; NumPy's own detection elsewhere).
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

__all__ = ["cpu_vector_extensions", "float_vector_width", "has_vnni", "int8_pairs_saturate", "describe_cpu"]

_VECTOR_FLAG = re.compile(r"^(avx[0-9a-z_]*|amx[0-9a-z_]*|fma|sse4_[12]|asimd[a-z]*|sve[0-9]*|neon)$")


def cpu_vector_extensions() -> list[str]:
    """The CPU's SIMD extensions as lower-case flag names (``avx2``, ``avx512f``, ``avx512_vnni``, ``avx_vnni``,
    ``amx_int8``, ``asimd`` …), sorted. Linux: the first processor's flags in ``/proc/cpuinfo``; other systems:
    the features NumPy detected at import (names such as ``avx512_vnni`` lower-cased from ``AVX512_VNNI``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):  # x86, Arm
                return sorted({f for f in value.split() if _VECTOR_FLAG.match(f)})
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features  # NumPy >= 2
    except ImportError:  # pragma: no cover - older NumPy
        from numpy.core._multiarray_umath import __cpu_features__ as features
    names = {k.lower().replace("avx512vnni", "avx512_vnni").replace("avxvnni", "avx_vnni") for k, v in features.items() if v}
    return sorted({n for n in names if _VECTOR_FLAG.match(n)})


def float_vector_width(extensions: list[str] | None = None) -> int:
    """float32 lanes of the widest vector unit: 16 (AVX-512), 8 (AVX/AVX2), 4 (SSE, Arm NEON) or 1 (none known)."""
    ext = set(cpu_vector_extensions() if extensions is None else extensions)
    if "avx512f" in ext:
        return 16
    if ext & {"avx", "avx2"}:
        return 8
    if ext & {"sse4_1", "sse4_2", "asimd", "neon"}:
        return 4
    return 1


def has_vnni(extensions: list[str] | None = None) -> bool:
    """Whether x86 int8 dot products accumulate into int32 without an int16 step (AVX-512 VNNI or AVX-VNNI).
    False on an x86 CPU without them, where ONNX Runtime's uint8 x int8 kernels can saturate (see the module);
    also False on Arm, whose int8 dot products (``asimddp``) do not have that problem."""
    ext = set(cpu_vector_extensions() if extensions is None else extensions)
    return bool(ext & {"avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8"})


def int8_pairs_saturate(extensions: list[str] | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels on this CPU add products in int16 pairs that can saturate:
    an x86 CPU without VNNI. (Arm's int8 dot products accumulate in int32.)"""
    ext = cpu_vector_extensions() if extensions is None else list(extensions)
    return any(e.startswith(("avx", "sse")) for e in ext) and not has_vnni(ext)


def describe_cpu(extensions: list[str] | None = None) -> str:
    """One line: machine, float vector width, int8 dot products, e.g.
    ``x86_64, AVX-512 (16 float32 lanes), int8 dot products: VNNI (no int16 saturation)``."""
    ext = cpu_vector_extensions() if extensions is None else list(extensions)
    width = float_vector_width(ext)
    unit = {16: "AVX-512", 8: "AVX2" if "avx2" in ext else "AVX", 4: "SSE/NEON", 1: "no SIMD found"}[width]
    x86 = any(e.startswith(("avx", "sse")) for e in ext)
    int8 = ("VNNI (no int16 saturation)" if has_vnni(ext) else
            "no VNNI (uint8 x int8 pairs saturate at int16)" if int8_pairs_saturate(ext) else
            "VNNI not applicable (not x86)" if not x86 else "unknown")
    return f"{platform.machine() or 'unknown machine'}, {unit} ({width} float32 lanes), int8 dot products: {int8}"
