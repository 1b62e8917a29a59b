"""The custom op: schema, fake implementation, opcheck, and compile without graph breaks."""

import pytest
import torch

import quantlinear_cuda.ops  # noqa: F401  (registers the ops)
from quantlinear import LayerSpec, Scheme
from quantlinear.benchutil import random_int_weights
from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

from cuda_testutil import DEV, GPU, TOL, rel_err

OP = torch.ops.quantlinear_cuda.wna16_gemm


def small_layer(bias=True, sym=False, dtype=torch.float16, K=256, N=64):
    sc = Scheme(bits=4, group_size=64, sym=sym)
    w = random_int_weights(K, N, sc, seed=21)
    spec = LayerSpec(sc, "gptq_v2", K, N, bias=bias, dtype=dtype, device=DEV)
    b = torch.linspace(-1, 1, N).to(dtype) if bias else None
    return TritonWNA16Linear.from_weights(spec, w, b), w.dequantize(64).to(DEV), (b.float().to(DEV) if bias else None)


def op_args(layer, x):
    m = layer.meta
    return (x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, m.bits, m.group_size, m.in_features, m.slab, layer.zero_point)


def test_schema():
    schema = str(OP.default._schema)
    assert schema.startswith("quantlinear_cuda::wna16_gemm(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros, Tensor? bias")
    assert "(a!)" not in schema  # no mutated inputs


def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer, _, _ = small_layer()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.randn(7, 256, dtype=torch.float16, device=DEV))
        y = OP(*op_args(layer, x))
        assert y.shape == (7, 64) and y.dtype == torch.float16 and y.device == x.device
    # meta tensors go through the fake implementation too
    meta_args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in op_args(layer, torch.randn(3, 256, dtype=torch.float16))]
    y = OP(*meta_args)
    assert y.shape == (3, 64) and y.is_meta


def test_fake_impl_rejects_bad_shapes():
    layer, _, _ = small_layer()
    args = list(op_args(layer, torch.randn(3, 128, dtype=torch.float16)))
    args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(Exception, match="features"):
        OP(*args)


@pytest.mark.parametrize("bias,sym", [(True, False), (False, True)])
def test_opcheck(bias, sym):
    layer, _, _ = small_layer(bias=bias, sym=sym, K=128, N=32)
    x = torch.randn(2, 128, dtype=torch.float16, device=DEV)
    torch.library.opcheck(OP, op_args(layer, x), test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_op_matches_layer_and_reference():
    layer, W, b = small_layer()
    x = torch.randn(5, 256, dtype=torch.float16, device=DEV)
    y_op = OP(*op_args(layer, x))
    assert torch.equal(y_op, layer(x))
    assert rel_err(y_op, x.float() @ W.t() + b) < TOL[torch.float16]


def test_compile_fullgraph_no_graph_break():
    """fullgraph=True fails on any graph break; aot_eager traces through the fake impl on CPU too."""
    layer, W, b = small_layer()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = layer

        def forward(self, x):
            return torch.relu(self.q(x * 2.0)) - 1.0

    blk = Block()
    x = torch.randn(4, 256, dtype=torch.float16, device=DEV)
    compiled = torch.compile(blk, fullgraph=True, backend="inductor" if GPU else "aot_eager")
    y = compiled(x)
    ref = torch.relu(((x * 2.0).float() @ W.t() + b).half().float()) - 1.0
    assert rel_err(y, ref) < TOL[torch.float16]
    y2 = compiled(torch.randn(9, 256, dtype=torch.float16, device=DEV))  # another M
    assert y2.shape == (9, 64)
