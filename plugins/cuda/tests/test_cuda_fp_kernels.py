"""``cuda.triton_fp``: selection reasons, the float conformance kit, the custom op and torch.compile.

Without a GPU the kernels run in Triton's interpreter on CPU tensors through the plugin's
test-only CPU switch (conftest.py), in fp16/fp32 only (the interpreter mis-loads bf16); on a CUDA
machine the same tests run compiled on the GPU, bf16 included.
"""

import contextlib

import pytest
import torch

import quantlinear_cuda.fp_ops  # noqa: F401  (registers the op)
from quantlinear import LayerSpec, Scheme, fpquant
from quantlinear.scheme import PRESETS
from quantlinear.testing import TOLERANCE, Case
from quantlinear.testing_fp import FloatKernelConformance, build_float_layer, claimed_float_cases, float_reference, format_for
from quantlinear_cuda.bench import weights_to
from quantlinear_cuda import device as cuda_device
from quantlinear_cuda.device import DeviceProps
from quantlinear_cuda.kernels.triton_fp import TritonFPLinear
from quantlinear_triton import fp_packing as P

from cuda_testutil import DEV, GPU, SM70, SM75, SM80, SM90, rel_err

OP = torch.ops.quantlinear_cuda.fp_gemm
SM89 = DeviceProps("NVIDIA L4", (8, 9), sm_count=58)
FLOAT_PRESETS = ("MXFP4", "MXFP4_RCEIL", "MXFP8", "MXINT4", "NVFP4", "FPW8A16", "FP8_STATIC")
TOL = {torch.float16: 1e-2, torch.float32: 1e-4, torch.bfloat16: 2e-2}


def spec(name="MXFP4", dtype=torch.float16, K=4096, N=4096, device="cuda", scheme=None):
    sc = scheme or PRESETS[name]
    return LayerSpec(sc, format_for(TritonFPLinear, sc), K, N, dtype=dtype, device=torch.device(device))


@contextlib.contextmanager
def simulated(props, triton=True):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cuda_device, "device_props", lambda device: props)
        mp.setattr(cuda_device, "triton_available", lambda: triton)
        yield


def reference(x, w, spec, bias):
    """The kit's fp32 reference with the weights on x's device (its FP8 input_scale would stay on the CPU)."""
    return float_reference(x, weights_to(w, x.device), spec, bias)


# ---- selection --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FLOAT_PRESETS)
def test_accepts_every_float_preset(name):
    for props in (SM90, SM80):
        with simulated(props):
            for dt in (torch.float16, torch.bfloat16, torch.float32):
                v = TritonFPLinear.can_implement(spec(name, dt))
                assert v, (props.arch, dt, v.reason)


def test_rejections_name_the_reason(monkeypatch):
    with simulated(SM75):
        assert TritonFPLinear.can_implement(spec(dtype=torch.float16))
        v = TritonFPLinear.can_implement(spec(dtype=torch.bfloat16))
        assert not v and "8.0" in v.reason and "sm75" in v.reason
    with simulated(SM70):
        v = TritonFPLinear.can_implement(spec())
        assert not v and "7.5" in v.reason and "sm70" in v.reason
    with simulated(SM90, triton=False):
        v = TritonFPLinear.can_implement(spec())
        assert not v and "Triton is not installed" in v.reason
    with simulated(DeviceProps("AMD Instinct MI300X", (9, 4), hip=True)):
        v = TritonFPLinear.can_implement(spec())
        assert not v and "ROCm/HIP" in v.reason
    with simulated(SM90):
        v = TritonFPLinear.can_implement(spec("NVFP4", K=4104))
        assert not v and "multiple of the scale block 16" in v.reason
        v = TritonFPLinear.can_implement(spec(scheme=Scheme(4, 32, True, "mx_fp", 4, "mx_fp", 48, True, True)))
        assert not v and "power of two" in v.reason
        v = TritonFPLinear.can_implement(LayerSpec(Scheme(bits=4, group_size=128), "gptq", 4096, 4096, device=torch.device("cuda")))
        assert not v and "data_type=int" in v.reason
        monkeypatch.setattr(torch.version, "hip", "6.4.0", raising=False)
        assert "not rocm" in TritonFPLinear.can_implement(spec()).reason  # a ROCm GPU is not a cuda device
        v = TritonFPLinear.check(spec())  # and the kernel's own check says why, whatever the device family
        assert not v and "ROCm build" in v.reason


@pytest.mark.parametrize("props,elem,env", [(SM90, P.E4M3_NV, ""), (SM89, P.E4M3_NV, ""), (SM80, P.E4M3, ""), (SM90, P.E4M3, "bits")])
def test_fp8_decode_by_capability(props, elem, env, monkeypatch):
    """FP8 bytes go through the hardware conversion on sm89+ (unless told otherwise), the exact bit decode before; same numbers."""
    monkeypatch.setenv("QUANTLINEAR_CUDA_FP8_DECODE", env)
    with simulated(props):
        case = Case(TritonFPLinear, spec("FP8_STATIC", torch.float32, K=160, N=40, device=DEV))
        layer, w, _ = build_float_layer(case)
        assert layer.meta.elem == elem
        x = torch.randn(3, 160, generator=torch.Generator().manual_seed(0)).to(DEV)
        assert rel_err(layer(x), reference(x, w, case.spec, None)) < 1e-5


# ---- the conformance kit -------------------------------------------------------------------------------
def _cases(kernel, device):
    # CPU: fp16/fp32 cases (the interpreter mis-loads bf16), generated with the CPU switch on
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cuda_device, "CPU_INTERPRET", None if GPU else True)
        cases = claimed_float_cases(kernel, device)
    return cases if GPU else [c for c in cases if c.spec.dtype != torch.bfloat16]


def _numerics(case):
    """The kit's ``check_float_numerics`` with the reference computed on the layer's device (see ``reference``)."""
    layer, w, bias = build_float_layer(case)
    s, g = case.spec, torch.Generator().manual_seed(1)
    for x in ((torch.randn(2, 3, s.in_features, generator=g) * 1.5).to(s.dtype).to(s.device),
              (torch.randn(s.in_features, 5, generator=g) * 1.5).to(s.dtype).to(s.device).t()):  # 3-D, non-contiguous
        y = layer(x)
        assert y.shape == (*x.shape[:-1], s.out_features) and y.dtype == s.dtype
        err = rel_err(y.reshape(-1, s.out_features), reference(x.reshape(-1, s.in_features), w, s, bias))
        assert err <= TOLERANCE[s.dtype], f"{case.id}: relative error {err:.3g}"


class TestTritonFPConformance(FloatKernelConformance):
    kernels = [TritonFPLinear]
    device = "cuda" if GPU else "cpu"
    cases_for = staticmethod(_cases)
    numerics = staticmethod(_numerics)


# ---- the custom op -------------------------------------------------------------------------------------
def small_layer(name="NVFP4", dtype=torch.float16, bias=True, K=128, N=48):
    sc = PRESETS[name]
    s = LayerSpec(sc, format_for(TritonFPLinear, sc), K, N, bias=bias, dtype=dtype, device=DEV, name="t")
    return build_float_layer(Case(TritonFPLinear, s))


def op_args(layer, x):
    m = layer.meta
    return (x, layer.fp_qweight, layer.fp_scales, layer.fp_row_scales, layer.bias, layer.fp_act_scale, m.in_features, m.elem,
            m.scale, m.block, m.act, m.act_block)


def test_schema_and_fake():
    schema = str(OP.default._schema)
    assert schema.startswith("quantlinear_cuda::fp_gemm(Tensor x, Tensor qweight, Tensor? scales, Tensor? row_scales, Tensor? bias")
    assert "(a!)" not in schema
    layer, _, _ = small_layer()
    meta_args = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in op_args(layer, torch.randn(7, 128, dtype=torch.float16))]
    y = OP(*meta_args)
    assert y.shape == (7, 48) and y.dtype == torch.float16 and y.is_meta
    bad = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in op_args(layer, torch.randn(3, 64, dtype=torch.float16))]
    with pytest.raises(Exception, match="features"):
        OP(*bad)


@pytest.mark.parametrize("name", ["NVFP4", "FP8_STATIC", "MXFP4"])
def test_opcheck_and_op_matches_layer(name):
    layer, w, bias = small_layer(name, bias=name != "MXFP4")
    x = torch.randn(2, 128, dtype=torch.float16, device=DEV)
    torch.library.opcheck(OP, op_args(layer, x), test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    y = OP(*op_args(layer, x))
    assert torch.equal(y, layer(x))
    assert rel_err(y, reference(x, w, layer.spec, bias)) < TOL[torch.float16]


def test_layer_dispatch_per_m_and_compile():
    """Default configurations per M (GEMV, skinny dot, large tile), then fullgraph compile with two Ms."""
    layer, w, bias = small_layer("MXFP8", dtype=torch.float32, K=160)
    for M in (1, 3, 70):
        x = torch.randn(M, 160, generator=torch.Generator().manual_seed(M)).to(DEV)
        assert rel_err(layer(x), reference(x, w, layer.spec, bias)) < TOL[torch.float32], M

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = layer

        def forward(self, x):
            return torch.relu(self.q(x * 2.0)) - 1.0

    torch._dynamo.reset()
    compiled = torch.compile(Block(), fullgraph=True, backend="inductor" if GPU else "aot_eager")
    for M in (4, 9):
        x = torch.randn(M, 160, generator=torch.Generator().manual_seed(M)).to(DEV)
        ref = torch.relu(reference(x * 2.0, w, layer.spec, bias)) - 1.0
        assert rel_err(compiled(x), ref) < TOL[torch.float32], M


# ---- the benchmark runner's float side (no GPU needed) -----------------------------------------------------
@pytest.mark.parametrize("name", FLOAT_PRESETS)
def test_bench_float_weights_and_peer(name):
    from quantlinear.benchutil import BenchOptions, random_float_weights
    from quantlinear.formats import get_format
    from quantlinear_cuda import bench

    sc = PRESETS[name]
    fmt = bench.bench_format(sc, BenchOptions(scheme=name))
    assert fmt == format_for(TritonFPLinear, sc) and bench.SOURCES[fmt].dequant_peer
    K, N = 256, 48
    w = random_float_weights(sc, K, N, seed=1)
    s = LayerSpec(sc, fmt, K, N, dtype=torch.float32)
    tensors = get_format(fmt).pack(w, s)
    get_format(fmt).validate(tensors, s)  # a valid checkpoint: no NaN codes, scales of the stored kinds
    back = get_format(fmt).unpack(tensors, s)
    W = w.dequantize()
    assert torch.isfinite(W).all() and W.abs().max() > 0 and torch.equal(back.dequantize(), W)
    bits = sc.bits * K * N // 8
    assert bits < bench.SOURCES[fmt].floor_bytes(w, s) <= bits + N * K // 16 + 2 * N + 8  # codes + scales
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(0))
    ref = fpquant.act_qdq(x, sc, w).float() @ W.t()  # AutoRound's own inference (FP8 static: bf16 dequantized activations)
    assert rel_err(bench._dequant_mm(w, s, torch.float32)(x), ref) < 1e-5
    assert bench.bench_format(PRESETS["W4A16"], BenchOptions()) == "gptq_v2"


@pytest.mark.parametrize("name", ["NVFP4", "FP8_STATIC"])
def test_bench_impls_agree_with_the_reference(name, monkeypatch):
    """The runner's implementations for a float scheme (kernel, cuBLAS-style dense, dequant_mm) on a small layer."""
    from quantlinear.benchutil import BenchOptions
    from quantlinear_cuda import bench

    monkeypatch.setattr(cuda_device, "CPU_INTERPRET", None if GPU else True)
    sc = PRESETS[name]
    opts = BenchOptions(scheme=name, kernels=("cuda.triton_fp", "peer.*"))
    fmt = bench.bench_format(sc, opts)
    K, N = 128, 48
    spec = LayerSpec(sc, fmt, K, N, dtype=torch.float16, device=DEV)
    w = bench.weights_to(bench.SOURCES[fmt].make(sc, K, N, 0), DEV)
    W = w.dequantize()
    impls = bench._impls(K, N, sc, torch.float16, DEV, w, W, opts, lambda s: None)
    assert [im.name for im in impls] == ["cuda.triton_fp", "peer.cublas", "peer.dequant_mm"]
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(0)).to(torch.float16).to(DEV)
    ref = bench._reference_act(x, w, spec) @ W.t()
    for im in impls:
        y = im.first(x)
        tol = 1e-2 if im.name != "peer.cublas" else 2e-1  # the dense peer skips activation quantization
        assert rel_err(y, ref) < tol, im.name
    assert torch.equal(impls[0].op_call(x), impls[0].first(x))
