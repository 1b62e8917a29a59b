"""Every CPU int kernel against the reference dequantization, over the whole capability grid.

Tolerance: max |y - ref| / max |ref| <= 1e-4 for fp32 activations, 1e-2 for fp16/bf16, where
``ref = x.float() @ IntWeights.dequantize().T (+ bias)``.  No timing is asserted anywhere.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from quantlinear import IntWeights, LayerSpec, Scheme
from quantlinear.benchutil import random_int_weights
from quantlinear_cpu.kernels.dequant import DequantLinear
from quantlinear_cpu.kernels.int4pack import Int4PackLinear
from quantlinear_cpu.kernels.int4x2 import Int4x2Linear
from quantlinear_cpu.kernels.int8pack import Int8PackLinear
from quantlinear_cpu.kernels.native import NativeF32Linear

KERNELS = [NativeF32Linear, Int4PackLinear, Int8PackLinear, Int4x2Linear, DequantLinear]
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
K, N = 256, 64  # K a multiple of every group size tried and of 32 (gptq packing); N of 16 and 32


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max())


def reference(x: torch.Tensor, w: IntWeights, spec: LayerSpec, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = x.float() @ w.dequantize(spec.group_size).t()
    return y + bias.float() if bias is not None else y


def _grid():
    for kernel, bits, sym, gs, dt in itertools.product(KERNELS, (2, 3, 4, 5, 8), (True, False), (32, 64, 128, -1), DTYPES):
        spec = LayerSpec(Scheme(bits=bits, group_size=gs, sym=sym), "gptq_v2", K, N, False, dt, "cpu", False, "t.proj")
        if kernel.can_implement(spec):
            yield pytest.param(kernel, spec, id=f"{kernel.name}-{spec.scheme.id}-{str(dt)[6:]}")


GRID = list(_grid())


def test_grid_covers_every_kernel():
    covered = {p.values[0] for p in GRID}
    assert covered == set(KERNELS), f"kernels with no case: {set(KERNELS) - covered}"


@pytest.mark.parametrize("kernel,spec", GRID)
def test_matches_reference(kernel, spec):
    w = random_int_weights(K, N, spec.scheme, seed=spec.scheme.bits)
    layer = kernel.from_weights(spec, w)
    x = torch.randn(7, K, generator=torch.Generator().manual_seed(1)).to(spec.dtype)
    y = layer(x)
    assert y.shape == (7, N) and y.dtype == spec.dtype
    assert rel_err(y, reference(x, w, spec)) <= TOL[spec.dtype]


def _one_spec_per_kernel_and_dtype(bits_for=lambda k: 4 if 4 in k.bits else max(k.bits), **kw):
    for kernel, dt in itertools.product(KERNELS, DTYPES):
        b = bits_for(kernel)
        spec = LayerSpec(Scheme(bits=b, group_size=kw.get("gs", 64 if b != 8 or kernel is not Int8PackLinear else -1), sym=False),
                         "gptq_v2", kw.get("K", K), N, kw.get("bias", False), dt, "cpu", kw.get("act_order", False), "t.proj")
        if kernel.can_implement(spec):
            yield pytest.param(kernel, spec, id=f"{kernel.name}-{spec.scheme.id}-{str(dt)[6:]}")


@pytest.mark.parametrize("kernel,spec", list(_one_spec_per_kernel_and_dtype(bias=True)))
def test_bias_batch_dims_and_non_contiguous_input(kernel, spec):
    g = torch.Generator().manual_seed(2)
    w = random_int_weights(K, N, spec.scheme, seed=5)
    bias = torch.randn(N, generator=g).to(torch.float16)
    layer = kernel.from_weights(spec, w, bias)
    x3 = torch.randn(2, 3, K, generator=g).to(spec.dtype)  # batch dims
    y3 = layer(x3)
    assert y3.shape == (2, 3, N) and y3.dtype == spec.dtype
    assert rel_err(y3, reference(x3, w, spec, bias)) <= TOL[spec.dtype]
    xt = torch.randn(K, 5, generator=g).to(spec.dtype).t()  # non-contiguous [5, K]
    assert not xt.is_contiguous()
    assert rel_err(layer(xt), reference(xt, w, spec, bias)) <= TOL[spec.dtype]
    xs = torch.randn(4, 2 * K, generator=g).to(spec.dtype)[:, ::2]  # strided columns
    assert rel_err(layer(xs), reference(xs, w, spec, bias)) <= TOL[spec.dtype]


def _act_order_weights(spec: LayerSpec, seed: int = 7) -> IntWeights:
    w = random_int_weights(spec.in_features, spec.out_features, spec.scheme, seed=seed)
    perm = torch.randperm(spec.in_features, generator=torch.Generator().manual_seed(seed))
    g_idx = (torch.arange(spec.in_features) // spec.group_size)[perm].to(torch.int32)  # a real act-order g_idx
    return IntWeights(w.qweight, w.zeros, w.scales, g_idx)


# per-channel layers (cpu.int8pack) have one group: every g_idx is trivial there
@pytest.mark.parametrize("kernel,spec", [p for p in _one_spec_per_kernel_and_dtype(act_order=True) if p.values[1].num_groups > 1])
def test_act_order_g_idx(kernel, spec):
    w = _act_order_weights(spec)
    layer = kernel.from_weights(spec, w)
    assert (layer.input_perm is not None) != kernel.handles_g_idx  # base class permutes unless the kernel handles g_idx
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(3)).to(spec.dtype)
    assert rel_err(layer(x), reference(x, w, spec)) <= TOL[spec.dtype]


@pytest.mark.parametrize("kernel", [DequantLinear, NativeF32Linear])
@pytest.mark.parametrize("bits", [3, 4, 5, 8])
def test_partial_last_group(kernel, bits):
    """K = 320 with groups of 128: the last group has 64 channels (dequant and native take it)."""
    spec = LayerSpec(Scheme(bits=bits, group_size=128, sym=False), "gptq_v2", 320, N, False, torch.float32, "cpu", False, "t.proj")
    assert spec.num_groups == 3
    if not kernel.can_implement(spec):
        pytest.skip(kernel.can_implement(spec).reason)
    w = random_int_weights(320, N, spec.scheme, seed=11)
    x = torch.randn(5, 320, generator=torch.Generator().manual_seed(4))
    assert rel_err(kernel.from_weights(spec, w)(x), reference(x, w, spec)) <= 1e-4


@pytest.mark.parametrize("M", [1, 2, 3, 5, 8, 9, 17])
def test_native_row_blocking(M):
    """The C kernel blocks rows by 8 with a 1-7 row tail: every remainder is exercised."""
    spec = LayerSpec(Scheme(bits=4, group_size=32, sym=False), "gptq_v2", 128, 48, False, torch.float32, "cpu", False, "t.proj")
    if not NativeF32Linear.can_implement(spec):
        pytest.skip(NativeF32Linear.can_implement(spec).reason)
    w = random_int_weights(128, 48, spec.scheme, seed=M)
    x = torch.randn(M, 128, generator=torch.Generator().manual_seed(M))
    assert rel_err(NativeF32Linear.from_weights(spec, w)(x), reference(x, w, spec)) <= 1e-5


def test_empty_batch():
    spec = LayerSpec(Scheme(bits=4, group_size=32), "gptq_v2", 64, 32, False, torch.float32, "cpu", False, "t.proj")
    for kernel in (NativeF32Linear, DequantLinear):
        if kernel.can_implement(spec):
            y = kernel.from_weights(spec, random_int_weights(64, 32, spec.scheme))(torch.zeros(0, 64))
            assert y.shape == (0, 32)
