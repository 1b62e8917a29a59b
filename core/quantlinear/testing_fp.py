"""Conformance suite for floating-point / microscaling kernels (MXFP4/8, MXINT4, NVFP4, FP8).

The same checks as :mod:`quantlinear.testing` (which builds integer schemes), for kernels whose
``data_types`` are float ones::

    from quantlinear.testing_fp import FloatKernelConformance

    class TestMyMX(FloatKernelConformance):
        kernels = [MyMXLinear]
        device = "cuda"

Claimed cases come from the float presets (``MXFP4``, ``MXFP4_RCEIL``, ``MXFP8``, ``MXFP8_RCEIL``, ``MXINT4``,
``NVFP4``, ``FPW8A16``, ``FP8_STATIC``) and their weight-only variants, in every format, dtype,
with bias and with an odd shape.  Weights are made by the core's reference quantizer
(:func:`quantlinear.fpquant.quantize_float`), the reference output is the fp32 matmul of the
reference activation quantize-dequantize (:func:`quantlinear.fpquant.act_qdq`; FP8 static
activations dequantized exactly in fp32) with the fp32 dequantized weight.
"""

from __future__ import annotations

from dataclasses import replace


import torch

from . import fpquant
from .formats import FLOAT_FORMATS, FloatWeights, get_format
from .qlinear import QuantLinear
from .scheme import PRESETS, Scheme
from .spec import LayerSpec
from .testing import (
    TOLERANCE,
    Case,
    KernelConformance,
    check_state_dict_round_trip,
    rel_err,
)

FLOAT_PRESETS = ("MXFP4", "MXFP4_RCEIL", "MXFP8", "MXFP8_RCEIL", "MXINT4", "NVFP4", "FPW8A16", "FP8_STATIC")


def float_schemes() -> list[Scheme]:
    """The float presets and the weight-only variant of each act-quantizing one."""
    out: list[Scheme] = []
    for name in FLOAT_PRESETS:
        s = PRESETS[name]
        for v in (s, replace(s, act_bits=16)):
            if v not in out:
                out.append(v)
    return out


def format_for(kernel: type[QuantLinear], scheme: Scheme) -> str | None:
    for f in sorted(kernel.formats & set(FLOAT_FORMATS)):
        fmt = FLOAT_FORMATS[f]
        if scheme.data_type in fmt.data_types and getattr(fmt, "layout_bits", None) == scheme.bits:
            return f
    return None


def _shape(kernel: type[QuantLinear], odd: bool) -> tuple[int, int]:
    import math

    k_mult = math.lcm(kernel.in_features_multiple, 32)
    n_mult = math.lcm(kernel.out_features_multiple, 16)
    K = k_mult * (5 if odd else 4) if k_mult < 64 else k_mult * (3 if odd else 2)
    N = n_mult * (5 if odd else 4)
    return K, N


def claimed_float_cases(kernel: type[QuantLinear], device: str | torch.device = "cpu") -> list[Case]:
    """Specs of float schemes the kernel accepts: every scheme once, plus dtype, bias and odd-shape variants."""
    dtypes = sorted(kernel.dtypes, key=str)
    base_dt = torch.float32 if torch.float32 in dtypes else dtypes[0]
    out: list[Case] = []
    seen: set[LayerSpec] = set()
    first = True
    for scheme in float_schemes():
        fmt = format_for(kernel, scheme)
        if fmt is None:
            continue
        variants = [(base_dt, False, False)]
        if not scheme.weight_only and torch.bfloat16 in dtypes and base_dt != torch.bfloat16:
            variants.append((torch.bfloat16, False, False))  # activation quantization in the models' usual dtype
        if first:
            variants += [(dt, False, False) for dt in dtypes if dt != base_dt] + [(base_dt, True, False), (base_dt, False, True)]
        for dt, bias, odd in variants:
            K, N = _shape(kernel, odd)
            spec = LayerSpec(scheme, fmt, K, N, bias, dt, device, False, "conformance.layer")
            if spec in seen or get_format(fmt).check_shape(spec) is not None:
                continue
            seen.add(spec)
            if kernel.can_implement(spec):
                out.append(Case(kernel, spec))
                first = False
    return out


def random_float_weights(spec: LayerSpec, seed: int = 0) -> FloatWeights:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(spec.out_features, spec.in_features, generator=g) * 0.05
    w[:, ::7] *= 4.0  # spread magnitudes so blocks get different scales
    return fpquant.quantize_float(w.to(torch.bfloat16), spec.scheme, act_amax=3.0)


def build_float_layer(case: Case, *, seed: int = 0) -> tuple[QuantLinear, FloatWeights, torch.Tensor | None]:
    spec = case.spec
    w = random_float_weights(spec, seed)
    bias = (torch.randn(spec.out_features, generator=torch.Generator().manual_seed(seed)) * 0.1).to(torch.float16) if spec.bias else None
    return case.kernel.from_weights(spec, w, bias), w, bias


def reference_act(x: torch.Tensor, w: FloatWeights, spec: LayerSpec) -> torch.Tensor:
    """The activation as the scheme quantizes it, in fp32 (FP8 static: exact ``fp8 * input_scale``)."""
    kind = fpquant.act_quant_kind(spec.scheme)
    if kind is not None and kind[0] == "fp8_static":
        scale = w.input_scale.to(x.device)  # the checkpoint's tensor may live elsewhere (CPU) than the layer
        return fpquant.fp8_static_quantize_input(x, scale).float() * scale.float()
    return fpquant.act_qdq(x, spec.scheme, w).float()


def float_reference(x: torch.Tensor, w: FloatWeights, spec: LayerSpec, bias: torch.Tensor | None) -> torch.Tensor:
    y = reference_act(x, w, spec) @ w.dequantize().t().to(x.device)
    return y + bias.float().to(x.device) if bias is not None else y


def check_float_numerics(case: Case) -> float:
    layer, w, bias = build_float_layer(case)
    spec = case.spec
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 3, spec.in_features, generator=g) * 1.5).to(spec.dtype).to(spec.device)
    y = layer(x)
    assert y.shape == (2, 3, spec.out_features) and y.dtype == spec.dtype, f"{case.id}: output {tuple(y.shape)} {y.dtype}"
    err = rel_err(y, float_reference(x, w, spec, bias))
    assert err <= TOLERANCE[spec.dtype], f"{case.id}: relative error {err:.3g} > {TOLERANCE[spec.dtype]}"
    xt = (torch.randn(spec.in_features, 5, generator=g) * 1.5).to(spec.dtype).to(spec.device).t()  # non-contiguous
    err2 = rel_err(layer(xt), float_reference(xt, w, spec, bias))
    assert err2 <= TOLERANCE[spec.dtype], f"{case.id}: non-contiguous input: relative error {err2:.3g}"
    return max(err, err2)


def check_float_state_dict_round_trip(case: Case) -> None:
    check_state_dict_round_trip(case, random_float_weights(case.spec, seed=3))


class FloatKernelConformance(KernelConformance):
    """Subclass in a test module, set ``kernels`` (and ``device``); pytest does the rest."""

    cases_for = staticmethod(claimed_float_cases)
    build = staticmethod(build_float_layer)
    numerics = staticmethod(check_float_numerics)
    state_dict_round_trip = staticmethod(check_float_state_dict_round_trip)


__all__ = [
    "FLOAT_PRESETS",
    "FloatKernelConformance",
    "build_float_layer",
    "check_float_numerics",
    "check_float_state_dict_round_trip",
    "claimed_float_cases",
    "float_reference",
    "float_schemes",
    "format_for",
    "random_float_weights",
    "reference_act",
]
