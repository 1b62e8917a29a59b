"""``cuda.triton_gguf`` on a real GPU (skipped without one): numerics of every type and path, graphs, compile, tuning.

The reference is llama.cpp's dequantization in fp32 (:func:`quantlinear.gguf_quants.dequantize_rows`,
bit-identical to ``gguf.quants``; no ``gguf`` package needed) times the activations, in fp32.
Error: ``||y - ref|| / ||ref||`` (Frobenius).  fp16 and fp32 must be within 1e-3 / 1e-5.  bf16
cannot be within 1e-3 of an fp32 reference whatever the kernel: rounding the *output* to bf16
alone costs ~1.7e-3 (8-bit significand), and the tensor-core path also rounds the weight to bf16
(~2.4e-3 in all, measured on random data); bf16 is held to 3e-3.
"""

import pytest
import torch

from quantlinear import LayerSpec
from quantlinear.formats.gguf import gguf_scheme
from quantlinear.gguf_quants import dequantize_rows
from quantlinear.gguf_random import random_gguf_weights

from cuda_testutil import GPU, graph_replay_fresh

pytestmark = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
FRO = {torch.float16: 1e-3, torch.bfloat16: 3e-3, torch.float32: 1e-5}
PATHS = {  # kernel, M; the compiles are what this file costs (~1 s each), so paths are shared across tests
    "gemv": ({"kernel": "gemv", "BN": 64, "split_k": 4, "warps": 4}, 1),
    "gemv16": ({"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 4}, 1),  # bf16: runs gemv (same tiles)
    "gemv16_rows": ({"kernel": "gemv16", "BN": 32, "split_k": 2, "warps": 4, "MR": 4}, 6),
    "dot": ({"kernel": "dot", "BM": 16, "BN": 128, "split_k": 4, "warps": 4, "stages": 3}, 16),
    "dot_large": ({"kernel": "dot", "BM": 128, "BN": 128, "split_k": 2, "warps": 8, "stages": 3}, 300),
    "dqmm": ({"kernel": "dqmm", "BN": 64, "spp": 8}, 520),
}
BF16_PATHS = ("gemv", "gemv16", "dot")


def fro(y: torch.Tensor, ref: torch.Tensor) -> float:
    y = y.float()
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).norm() / ref.norm())


def build(qtype, K=2048, N=1000, dtype=torch.float16, bias=False, seed=0):
    from quantlinear_cuda.kernels.triton_gguf import TritonGGUFLinear

    w = random_gguf_weights(qtype, K, N, seed=seed)
    spec = LayerSpec(gguf_scheme(qtype), "gguf_" + qtype.lower(), K, N, bias=bias, dtype=dtype, device=torch.device("cuda"))
    b = (torch.randn(N, generator=torch.Generator().manual_seed(seed)) * 0.1).to(dtype) if bias else None
    layer = TritonGGUFLinear.from_weights(spec, w, b)
    W = dequantize_rows(qtype, w.data.cuda())
    return layer, W, (b.float().cuda() if bias else None)


def ref(x, W, b):
    y = x.float() @ W.t()
    return y if b is None else y + b


def launch(layer, x, cfg):
    from quantlinear_triton.gguf_kernels import launch as _launch

    out = None if cfg["kernel"] == "dqmm" else torch.full((x.shape[0], layer.out_features), float("nan"), dtype=x.dtype, device="cuda")
    return _launch(x, layer.gguf_qs, layer.gguf_qh, layer.gguf_sm, layer.gguf_bm, layer.bias, layer.qtype, cfg, out=out)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_type_every_path(qtype, dtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    layer, W, b = build(qtype, dtype=dtype, bias=True)
    errs = {}
    for name, (cfg, M) in PATHS.items():
        if dtype == torch.bfloat16 and name not in BF16_PATHS:
            continue
        x = torch.randn(M, layer.in_features, device="cuda").to(dtype)
        errs[name] = fro(launch(layer, x, cfg), ref(x, W, b))
    assert all(e < FRO[dtype] for e in errs.values()), errs


@pytest.mark.parametrize("qtype", ["Q4_K"])
def test_fp32_activations(qtype):
    torch.backends.cuda.matmul.allow_tf32 = False
    layer, W, b = build(qtype, dtype=torch.float32, K=1024, N=520)
    for M in (1, 16, 300):  # default configurations: gemv, dot, large dot (IEEE fp32 dot, no dqmm)
        x = torch.randn(M, 1024, device="cuda")
        assert fro(layer(x), ref(x, W, b)) < FRO[torch.float32], M


def test_dequantize_kernel_bit_exact():
    from quantlinear_triton.gguf_kernels import dequantize

    for qtype in ("Q4_K", "Q6_K", "Q5_0"):  # the dot path's dequantization is the same code for every type
        layer, W, _ = build(qtype, K=1024, N=300, dtype=torch.float32)
        Wk = dequantize(layer.gguf_qs, layer.gguf_qh, layer.gguf_sm, layer.gguf_bm, qtype, 1024, torch.float32)
        assert torch.equal(Wk.view(torch.int32), W.view(torch.int32)), qtype


def test_default_dispatch_through_the_layer():
    layer, W, b = build("Q4_K", K=4096, N=1536, bias=True)
    for M in (1, 2, 16, 64, 256, 1024):
        x = torch.randn(M, 4096, device="cuda", dtype=torch.float16)
        assert fro(layer(x), ref(x, W, b)) < FRO[torch.float16], M


def test_cuda_graph_capture():
    layer, W, b = build("Q5_K", K=2048, N=1536, bias=True)
    for M in (1, 4, 16, 300):  # gemv with split-K, dot with split-K, large dot
        x = torch.randn(M, 2048, device="cuda", dtype=torch.float16)
        layer(x)  # warm (compile) outside the capture
        y = graph_replay_fresh(layer, x)
        assert fro(y, ref(x, W, b)) < FRO[torch.float16], M


def test_compile_reduce_overhead():
    layer, W, b = build("Q6_K", K=1024, N=512, dtype=torch.bfloat16, bias=True)
    f = torch.compile(lambda x: layer(x) * 0.5, fullgraph=True, mode="reduce-overhead")
    for M in (1, 1, 1, 24, 24, 24):
        x = torch.randn(M, 1024, device="cuda", dtype=torch.bfloat16)
        y = f(x).clone()
        assert fro(y, ref(x, W, b) * 0.5) < FRO[torch.bfloat16], M


def test_every_tuning_candidate_is_correct():
    """Tuning keeps the fastest candidate, so every candidate must be right (Q4_K, decode and M=16)."""
    from quantlinear_cuda import device, gguf_ops

    layer, W, b = build("Q4_K", K=2048, N=1000, bias=True)
    props = device.device_props(torch.device("cuda"))
    for M in (1, 16):
        x = torch.randn(M, 2048, device="cuda", dtype=torch.float16)
        r = ref(x, W, b)
        for cfg in gguf_ops.SPACE.candidates(layer.problem, M, props):
            assert fro(launch(layer, x, cfg), r) < FRO[torch.float16], (M, cfg)


def test_tuning_writes_cache(monkeypatch, tmp_path):
    from quantlinear_cuda import device, gguf_ops

    cache = tmp_path / "tune.json"
    monkeypatch.setenv(gguf_ops.SPACE.env_tune, "1")
    monkeypatch.setenv(gguf_ops.SPACE.env_cache, str(cache))
    monkeypatch.setattr(gguf_ops, "TUNER", gguf_ops.make_tuner(gguf_ops.SPACE))
    layer, W, _ = build("Q4_K", K=2048, N=1000)  # its decode candidates are compiled by the test above
    x = torch.randn(1, 2048, device="cuda", dtype=torch.float16)
    assert fro(layer(x), ref(x, W, None)) < FRO[torch.float16]
    assert cache.is_file() and layer.problem.key(1) in cache.read_text()
    cfg, src = gguf_ops.make_tuner(gguf_ops.SPACE).lookup(device.device_props(x.device), layer.problem, 1)
    assert src == "cache" and cfg is not None


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0", "Q5_1"])
def test_gemv16_variants(qtype):
    """The paired-fp16 GEMV's options: both dim orders, fp16 word sums, several x rows (partial last block), split-K;
    and large activations (the x / 16 products of Q6_K / Q8_0 keep the fp16 sums finite)."""
    from quantlinear_triton.gguf_kernels import SR_DEFAULT

    layer, W, b = build(qtype, K=2048, N=1000, bias=True, seed=5)
    base = {"kernel": "gemv16", "BN": 64, "split_k": 2, "warps": 4}
    errs = {}
    for name, cfg, M in (("other_order", dict(base, sr=not SR_DEFAULT), 1), ("hsum", dict(base, hsum=True), 1),
                         ("rows8", {"kernel": "gemv16", "BN": 16, "split_k": 1, "warps": 4, "MR": 8}, 13)):
        x = torch.randn(M, 2048, device="cuda").half()
        errs[name] = fro(launch(layer, x, cfg), ref(x, W, b))
    x = (torch.randn(1, 2048, device="cuda") * 100).half()  # |x| up to ~450: |u - C| * |x| alone nears fp16 max for Q8_0
    errs["large_x"] = fro(launch(layer, x, base), ref(x, W, b))
    assert all(e < FRO[torch.float16] for e in errs.values()), errs


@pytest.mark.parametrize("outlier", [3000.0, 20000.0])
@pytest.mark.parametrize("qtype", TYPES)
def test_gemv16_large_activations(qtype, outlier):
    """The paired-fp16 GEMV with activation outliers (every 97th channel at +-outlier; a block of 32 at 2000, whose sum
    alone passes 65504) and with tiny activations (1e-3): finite and within the fp16 tolerance of the fp32 reference, in
    both fp16 summation orders (``hsum``).  Before the codes were scaled by ``2**-KSH``, |x| = 20000 gave inf on seven
    of the eight types."""
    layer, W, _ = build(qtype, seed=5)
    g = torch.Generator(device="cuda").manual_seed(3)
    base, _ = PATHS["gemv16"]
    for cfg in (base, dict(base, hsum=True)):
        for scale, out in ((1.0, outlier), (1e-3, 0.0), (1.0, -2000.0)):
            x = torch.randn(1, 2048, device="cuda", generator=g) * scale
            if out > 0:
                x[0, ::97] = out * torch.sign(torch.randn(x[0, ::97].shape, device="cuda", generator=g))
            elif out < 0:
                x[0, 64:96] = -out
            x = x.to(torch.float16)
            y = launch(layer, x, cfg)
            assert fro(y, ref(x, W, None)) < FRO[torch.float16], (qtype, cfg, scale, out, fro(y, ref(x, W, None)))
