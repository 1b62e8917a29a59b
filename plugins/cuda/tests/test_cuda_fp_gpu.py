"""``cuda.triton_fp`` on real hardware: skipped without a CUDA GPU.

Every float preset, fp16 and bf16, the GEMV (M = 1), skinny ``tl.dot`` (M = 16) and the tensor-core ``tc`` kernel
(M = 48 with split-K, M = 300; Hopper; elsewhere the large ``tl.dot`` tile) paths against the fp32 reference: the fpquant-quantized activations times the fp32
dequantized weight (``quantlinear.testing_fp.float_reference``).  Tolerance: 1e-3 of max |ref|,
plus in bf16 the output's own rounding (up to 2**-9 relative per element, so 2**-8 leaves room
for a reference value next to a rounding boundary).  Then the activation kernel bit for bit
against fpquant (run on the CPU, AutoRound's own ops), torch.compile(fullgraph) and CUDA graphs.
"""

import pytest
import torch

from quantlinear import LayerSpec, fpquant
from quantlinear.scheme import PRESETS
from quantlinear.testing import Case
from quantlinear.testing_fp import build_float_layer, float_reference, format_for
from quantlinear_cuda.bench import weights_to

from cuda_testutil import GPU, graph_replay_fresh, rel_err

pytestmark = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")

SCHEMES = ("MXFP4", "MXFP4_RCEIL", "MXFP8", "MXINT4", "NVFP4", "FPW8A16", "FP8_STATIC")
TOL = {torch.float16: 1e-3, torch.bfloat16: 1e-3 + 2.0**-8}
K, N = 1024, 520  # N: not a multiple of any row block


def layer_for(name, dtype, bias=True, weight_only=False, seed=0):
    from dataclasses import replace

    from quantlinear_cuda.kernels.triton_fp import TritonFPLinear

    sc = PRESETS[name]
    if weight_only:
        sc = replace(sc, act_bits=16)
    spec = LayerSpec(sc, format_for(TritonFPLinear, sc), K, N, bias=bias, dtype=dtype, device=torch.device("cuda"), name="gpu")
    assert TritonFPLinear.can_implement(spec), TritonFPLinear.can_implement(spec).reason
    layer, w, b = build_float_layer(Case(TritonFPLinear, spec), seed=seed)
    return layer, weights_to(w, torch.device("cuda")), b, spec  # the reference's FP8 input_scale on the GPU too


# every preset as AutoRound defines it, and the weight-only variant of those that quantize activations
VARIANTS = [(n, False) for n in SCHEMES] + [(n, True) for n in SCHEMES if not PRESETS[n].weight_only]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,weight_only", VARIANTS)
def test_every_scheme_both_paths(name, dtype, weight_only):
    layer, w, b, spec = layer_for(name, dtype, weight_only=weight_only)
    for M in (1, 16, 48, 300):
        x = (torch.randn(M, K, device="cuda") * 1.5).to(dtype)
        err = rel_err(layer(x), float_reference(x, w, spec, b))
        assert err < TOL[dtype], (name, dtype, M, err)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_activation_quantization_bit_exact_on_gpu(dtype):
    from quantlinear_triton import fp_kernels as fk
    from quantlinear_triton import fp_packing as P

    x = (torch.randn(64, 2048) * torch.exp(torch.randn(64, 2048) * 2)).to(dtype)
    xg = x.cuda()
    for code, el, rceil in ((P.A_MX_E2M1, "e2m1", False), (P.A_MX_E4M3, "e4m3", False), (P.A_MX_E2M1 + P.A_RCEIL, "e2m1", True)):
        assert torch.equal(fk.quantize_activations(xg, code, 32, None).cpu(), fpquant.mx_qdq(x, el, 32, rceil)), (el, rceil)
    gs = fpquant.nvfp4_global_scale(torch.tensor(3.0))
    assert torch.equal(fk.quantize_activations(xg, P.A_NVFP4, 16, gs.cuda()).cpu(), fpquant.nvfp4_qdq(x, gs, 16))
    s = fpquant.fp8_scale(torch.tensor(3.0)).reshape(1).to(torch.bfloat16)
    assert torch.equal(fk.quantize_activations(xg, P.A_FP8, 0, s.cuda()).cpu(), fpquant.fp8_static_quantize_input(x, s).to(dtype))


@pytest.mark.parametrize("name", ["MXFP4", "NVFP4", "FP8_STATIC"])
def test_compile_and_cuda_graph(name):
    layer, w, b, spec = layer_for(name, torch.bfloat16)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    for M in (1, 16, 300):  # GEMV with split-K, skinny dot, large tile
        x = (torch.randn(M, K, device="cuda")).to(torch.bfloat16)
        ref = float_reference(x, w, spec, b)
        assert rel_err(compiled(x), ref) < TOL[torch.bfloat16], ("compile", M)
        layer(x)  # compile the kernels outside the capture
        y = graph_replay_fresh(layer, x)
        assert rel_err(y, float_reference(x, w, spec, b)) < TOL[torch.bfloat16], ("graph", M)


# ---- the paired-fp16 GEMV and dequantize-then-cuBLAS, configuration by configuration ------------------------
def _run_cfg(layer, x, cfg):
    from quantlinear_triton import fp_kernels as fk

    m = layer.meta
    xq = fk.quantize_activations(x, m.act, m.act_block, layer.fp_act_scale)
    return fk.launch(xq, layer.fp_qweight, layer.fp_scales, layer.fp_row_scales, layer.bias, m.elem, m.scale, m.block, cfg)


GEMV16 = {"kernel": "gemv16", "BM": 1, "BN": 64, "split_k": 4, "warps": 4}
DQMM = {"kernel": "dqmm", "BN": 64, "warps": 4}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,weight_only", [("MXFP4", False), ("MXFP4", True), ("NVFP4", False), ("MXINT4", False),
                                              ("MXFP8", False), ("FPW8A16", True)])
def test_gemv16_and_dqmm_on_gpu(name, dtype, weight_only):
    """gemv16 (fp16: PTX fp16x2 decode; bf16: the fp32 GEMV) at M = 1, 3 and dqmm at M = 1, 300 against the reference,
    also with activations up to ~1e3 (no fp16 product may overflow)."""
    layer, w, b, spec = layer_for(name, dtype, weight_only=weight_only)
    for M, cfg in [(1, GEMV16), (3, dict(GEMV16, split_k=1)), (1, dict(GEMV16, psum=1)), (1, DQMM), (300, DQMM)]:
        for amp in (1.5, 1e3 if dtype == torch.float16 else 1.5):
            x = (torch.randn(M, K, device="cuda") * amp).to(dtype)
            err = rel_err(_run_cfg(layer, x, cfg), float_reference(x, w, spec, b))
            assert err < TOL[dtype], (name, dtype, M, cfg["kernel"], amp, err)


def test_defaults_gemv16_and_dqmm(monkeypatch):
    from quantlinear_cuda import device as _device
    from quantlinear_cuda.fp_ops import SPACE

    layer, _, _, _ = layer_for("MXFP4", torch.float16)
    props = _device.device_props(torch.device("cuda"))
    assert SPACE.default_config(layer.problem, 1, props)["kernel"] == "mmv"  # the layer has mmv_sigma (sm_80+)
    assert SPACE.default_config(layer.problem, 1, props, mmv=False)["kernel"] == "gemv16"  # a layer without it
    assert SPACE.default_config(layer.problem, 4096, props)["kernel"] == "dqmm"
    monkeypatch.setenv("QUANTLINEAR_CUDA_DQMM", "0")
    assert SPACE.default_config(layer.problem, 4096, props)["kernel"] == "dot"


# ---- the folded gemv16 (4-bit activations: block scales folded into the weight's, PTX decode without rescaling) ----
FOLD_CFGS = [(1, dict(GEMV16, fold=1)), (3, dict(GEMV16, split_k=1, fold=1)),
             (1, dict(GEMV16, BN=128, split_k=2, warps=8, fold=1))]


@pytest.mark.parametrize("name", ["MXFP4", "MXFP4_RCEIL", "NVFP4", "MXINT4"])
def test_gemv16_fold_on_gpu(name):
    """quantize_activations_split bit-exact (values x scales == fpquant's fp32 qdq) and the folded gemv16 (PTX)
    against the fp32 reference within 1e-3, also with activations up to ~1e3; the layer's M = 1 call
    (run_fp_gemm takes the folded path) against float_reference."""
    from quantlinear_triton import fp_kernels as fk

    layer, w, b, spec = layer_for(name, torch.float16)
    m = layer.meta
    assert fk.fold_fits(m.elem, m.scale, m.block, m.act, m.act_block, torch.float16)
    for M, cfg in FOLD_CFGS:
        for amp in (1.5, 1e3):
            x = (torch.randn(M, K, device="cuda") * amp).to(torch.float16)
            x32 = fpquant.act_qdq(x.float().cpu(), spec.scheme, weights_to(w, torch.device("cpu"))).cuda()
            pairs, xs = fk.quantize_activations_split(x, m.act, m.act_block, layer.fp_act_scale)
            v = fk.unpack_pairs(pairs, m.act_block, K).float()
            assert torch.equal((v.view(M, -1, m.act_block) * xs[:, :, None]).view(M, K), x32), (name, M)
            y = fk.launch(pairs, layer.fp_qweight, layer.fp_scales, layer.fp_row_scales, layer.bias, m.elem, m.scale, m.block,
                          cfg, x_scales=xs)
            ref = x32 @ w.dequantize().cuda().float().t() + b.float().cuda()
            err = rel_err(y, ref)
            assert err < TOL[torch.float16], (name, M, cfg, amp, err)
    x = (torch.randn(1, K, device="cuda") * 1.5).to(torch.float16)
    assert rel_err(layer(x), float_reference(x, w, spec, b)) < TOL[torch.float16], name
