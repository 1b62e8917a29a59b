"""Shared helpers for the ROCm plugin tests (imported as a module, not a conftest)."""

from __future__ import annotations

import pytest
import torch

from quantlinear import LayerSpec, Scheme
from quantlinear.benchutil import random_int_weights
from quantlinear.testing import rel_err  # noqa: F401  (NaN or inf never passes a tolerance)
from quantlinear_triton.runtime import interpreting

CDNA = ("gfx90a", "gfx942", "gfx950")
RDNA = ("gfx1100", "gfx1201")

needs_interpreter = pytest.mark.skipif(not interpreting() or torch.cuda.is_available(),
                                       reason="CPU tensors run the Triton kernels only in Triton's interpreter (no GPU)")


TOL = {torch.float16: 2e-3, torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


def make_layer(kernel, bits, group, sym, K, N, dtype, bias=False, seed=0, fmt="gptq_v2", device="cpu"):
    """A prepared layer of ``kernel`` and its fp32 reference weight (``IntWeights.dequantize``) and bias."""
    sc = Scheme(bits=bits, group_size=group, sym=sym)
    w = random_int_weights(K, N, sc, seed=seed)
    spec = LayerSpec(sc, fmt, K, N, bias=bias, dtype=dtype, device=torch.device(device))
    b = (torch.randn(N, generator=torch.Generator().manual_seed(seed)) * 0.1).to(dtype) if bias else None
    layer = kernel.from_weights(spec, w, b)
    return layer, w.dequantize(spec.group_size), (b.float() if bias else None)


def reference(x, W, b):
    y = x.float() @ W.t()
    return y + b if b is not None else y


def rand_x(M, K, dtype, seed=1):
    return torch.randn(M, K, generator=torch.Generator().manual_seed(seed)).to(dtype)
