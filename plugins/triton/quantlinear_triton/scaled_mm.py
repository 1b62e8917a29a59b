"""What the FP8 ``torch._scaled_mm`` kernels of the GPU plugins can run, declared once.

:class:`FP8ScaledMMBase` holds the capability declarations the CUDA and ROCm ``*.fp8_scaled_mm``
kernels share (FP8_STATIC: E4M3 weights with one or per-channel scales, static FP8 activations,
fp16/bf16 activations, bias fused).  It is device-neutral and not a kernel: each plugin's subclass
adds its name, priority, device family, checks and ``prepare``/``compute``; :func:`fp8_static_reason` is the
scheme check they share.  Imports no Triton.
"""

from __future__ import annotations

import torch

from quantlinear import LayerSpec, QuantLinear, UnsupportedSchemeError, fpquant


class FP8ScaledMMBase(QuantLinear):
    """FP8 x FP8 ``torch._scaled_mm`` with a static per-tensor activation scale (FP8_STATIC)."""

    abstract = True
    data_types = frozenset({"fp"})
    bits = frozenset({8})
    group_sizes = frozenset({-1, 0})
    sym = frozenset({True})
    formats = frozenset({"fp8"})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    quantizes_activations = True
    fuses_bias = True


def fp8_static_reason(spec: LayerSpec) -> str | None:
    """Why ``spec`` is not an FP8 x FP8 product with a static per-tensor activation scale (FP8_STATIC); None if it is."""
    try:
        kind = fpquant.act_quant_kind(spec.scheme)
    except UnsupportedSchemeError as e:
        return str(e)
    if kind is None:
        return ("weight-only FP8 (activations stay in 16 bits): there is no FP8 x FP8 product for _scaled_mm "
                "(quantizing activations would change the numerics)")
    if kind[0] != "fp8_static":
        return f"activation quantization {kind[0]} is not static FP8"
    return None


__all__ = ["FP8ScaledMMBase", "fp8_static_reason"]
