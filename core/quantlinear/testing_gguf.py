"""Conformance suite for GGUF kernels (llama.cpp block types, ``data_types = {"gguf"}``).

The checks of :mod:`quantlinear.testing`, with cases and weights of the GGUF formats::

    from quantlinear.testing_gguf import GGUFKernelConformance

    class TestMyGGUF(GGUFKernelConformance):
        kernels = [MyGGUFLinear]
        device = "cuda"

Claimed cases: every GGUF format the kernel declares (``gguf_q4_0`` ... ``gguf_q6_k``), at its
scheme (:func:`quantlinear.formats.gguf.gguf_scheme`), in the first dtype; the other dtypes, bias
and an odd shape (a number of blocks that is not a power of two) on the first format.  Weights are
random valid blocks (:func:`random_gguf_weights`: random bytes, finite fp16 block scales), which
exercise every bit of every field; the reference is the core's exact dequantization
(:func:`quantlinear.gguf_quants.dequantize_rows`), in fp32.
"""

from __future__ import annotations

import numpy as np
import torch

from .formats import GGUF_FORMATS, GGUFWeights
from .formats.gguf import gguf_scheme
from .gguf_quants import SCALE_FIELDS
from .qlinear import QuantLinear
from .spec import LayerSpec
from .testing import (
    TOLERANCE,
    Case,
    KernelConformance,
    check_state_dict_round_trip,
    rel_err,
)


def random_gguf_weights(qtype: str, out_features: int, in_features: int, seed: int = 0, scale: float = 0.02) -> GGUFWeights:
    """Random blocks of ``qtype`` whose fp16 scale fields are finite (``|d| ~ scale``, signs mixed)."""
    t = GGUF_FORMATS["gguf_" + qtype.lower()].gtype
    rng = np.random.default_rng(seed)
    nb = in_features // t.block
    raw = rng.integers(0, 256, size=(out_features, nb, t.type_size), dtype=np.uint8)
    for _, off in SCALE_FIELDS[qtype]:
        v = (rng.standard_normal((out_features, nb)) * scale).astype(np.float16)
        raw[:, :, off : off + 2] = v.view(np.uint8).reshape(out_features, nb, 2)
    return GGUFWeights(qtype, torch.from_numpy(raw.reshape(out_features, nb * t.type_size)))


def _shape(kernel: type[QuantLinear], block: int, odd: bool) -> tuple[int, int]:
    import math

    k_mult = math.lcm(kernel.in_features_multiple, block)
    n_mult = math.lcm(kernel.out_features_multiple, 16)
    K = k_mult * (3 if odd else 2) if k_mult >= 256 else k_mult * (5 if odd else 4)
    N = n_mult * (5 if odd else 4)
    return K, N


def claimed_gguf_cases(kernel: type[QuantLinear], device: str | torch.device = "cpu") -> list[Case]:
    dtypes = sorted(kernel.dtypes, key=str)
    base_dt = torch.float32 if torch.float32 in dtypes else dtypes[0]
    out: list[Case] = []
    first = True
    for fmt_name in sorted(kernel.formats & set(GGUF_FORMATS), key=lambda f: list(GGUF_FORMATS).index(f)):
        fmt = GGUF_FORMATS[fmt_name]
        variants = [(base_dt, False, False)]
        if first:
            variants += [(dt, False, False) for dt in dtypes if dt != base_dt] + [(base_dt, True, False), (base_dt, False, True)]
        for dt, bias, odd in variants:
            K, N = _shape(kernel, fmt.gtype.block, odd)
            spec = LayerSpec(gguf_scheme(fmt.gtype.name), fmt_name, K, N, bias, dt, device, False, "conformance.layer")
            if fmt.check_shape(spec) is None and kernel.can_implement(spec):
                out.append(Case(kernel, spec))
                first = False
    return out


def _weights(spec: LayerSpec, seed: int) -> GGUFWeights:
    return random_gguf_weights(GGUF_FORMATS[spec.format].gtype.name, spec.out_features, spec.in_features, seed)


def build_gguf_layer(case: Case, *, seed: int = 0) -> tuple[QuantLinear, GGUFWeights, torch.Tensor | None]:
    spec = case.spec
    w = _weights(spec, seed)
    bias = (torch.randn(spec.out_features, generator=torch.Generator().manual_seed(seed)) * 0.1).to(torch.float16) if spec.bias else None
    return case.kernel.from_weights(spec, w, bias), w, bias


def gguf_reference(x: torch.Tensor, w: GGUFWeights, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.to(torch.float32) @ w.dequantize().t().to(x.device)
    return y + bias.float().to(x.device) if bias is not None else y


def check_gguf_numerics(case: Case) -> float:
    layer, w, bias = build_gguf_layer(case)
    spec = case.spec
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, spec.in_features, generator=g).to(spec.dtype).to(spec.device)
    y = layer(x)
    assert y.shape == (2, 3, spec.out_features) and y.dtype == spec.dtype, f"{case.id}: output {tuple(y.shape)} {y.dtype}"
    err = rel_err(y, gguf_reference(x, w, bias))
    assert err <= TOLERANCE[spec.dtype], f"{case.id}: relative error {err:.3g} > {TOLERANCE[spec.dtype]}"
    xt = torch.randn(spec.in_features, 5, generator=g).to(spec.dtype).to(spec.device).t()  # non-contiguous
    err2 = rel_err(layer(xt), gguf_reference(xt, w, bias))
    assert err2 <= TOLERANCE[spec.dtype], f"{case.id}: non-contiguous input: relative error {err2:.3g}"
    return max(err, err2)


def check_gguf_state_dict_round_trip(case: Case) -> None:
    check_state_dict_round_trip(case, _weights(case.spec, 3))


class GGUFKernelConformance(KernelConformance):
    """Subclass in a test module, set ``kernels`` (and ``device``); pytest does the rest."""

    cases_for = staticmethod(claimed_gguf_cases)
    build = staticmethod(build_gguf_layer)
    numerics = staticmethod(check_gguf_numerics)
    state_dict_round_trip = staticmethod(check_gguf_state_dict_round_trip)


__all__ = [
    "GGUFKernelConformance",
    "build_gguf_layer",
    "check_gguf_numerics",
    "check_gguf_state_dict_round_trip",
    "claimed_gguf_cases",
    "gguf_reference",
    "random_gguf_weights",
]
