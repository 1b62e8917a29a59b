"""Real-hardware tests: skipped without a CUDA GPU."""

import pytest
import torch

from quantlinear import LayerSpec, Scheme
from quantlinear.benchutil import BenchOptions, random_int_weights

from cuda_testutil import GPU, TOL, capture_graph, graph_replay_fresh, rel_err

pytestmark = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


def build(kernel, bits=4, group=128, sym=True, K=512, N=256, dtype=torch.float16, bias=False, seed=0):
    sc = Scheme(bits=bits, group_size=group, sym=sym)
    w = random_int_weights(K, N, sc, seed=seed)
    spec = LayerSpec(sc, "gptq", K, N, bias=bias, dtype=dtype, device=torch.device("cuda"))
    b = (torch.randn(N) * 0.1).to(dtype) if bias else None
    layer = kernel.from_weights(spec, w, b)
    W = w.dequantize(spec.group_size).cuda()
    return layer, W, (b.float().cuda() if bias else None)


def ref(x, W, b):
    y = x.float() @ W.t()
    return y if b is None else y + b


@pytest.mark.parametrize("bits,group,sym", [(4, 128, True), (4, 32, False), (3, 128, True), (2, -1, False)])
def test_tinygemm(bits, group, sym):
    from quantlinear_cuda.kernels.tinygemm import TinyGemmLinear

    layer, W, b = build(TinyGemmLinear, bits, group, sym, dtype=torch.bfloat16, bias=True)
    # tinygemm stores the zero as the bf16 float (8 - z) * s: for 2-bit codes that term is up to ~5x the
    # largest |q - z| * s, so its bf16 rounding (2^-9 relative) weighs up to ~5x more than for 4-bit codes.
    tol = TOL[torch.bfloat16] * (2 if bits == 2 else 1)
    g = torch.Generator(device="cuda").manual_seed(bits * 1000 + group)
    for M in (1, 7, 64):
        x = torch.randn(M, 512, device="cuda", dtype=torch.bfloat16, generator=g)
        assert rel_err(layer(x), ref(x, W, b)) < tol


def test_cuda_graph_capture():
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 128, False, K=1024, N=512, bias=True)
    outs = {}
    for M in (1, 4, 16, 300):  # gemv, split-K and tensor-core configs
        x = torch.randn(M, 1024, device="cuda", dtype=torch.float16)
        layer(x)  # warm (compile) outside the capture
        y = graph_replay_fresh(layer, x)
        outs[M] = rel_err(y, ref(x, W, b))
    assert all(e < TOL[torch.float16] for e in outs.values()), outs


def test_compile_reduce_overhead():
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 64, True, K=512, N=256, bias=True, dtype=torch.bfloat16)
    f = torch.compile(lambda x: layer(x) * 0.5, fullgraph=True, mode="reduce-overhead")
    for M in (1, 1, 1, 24, 24, 24):
        x = torch.randn(M, 512, device="cuda", dtype=torch.bfloat16)
        y = f(x).clone()
        assert rel_err(y, ref(x, W, b) * 0.5) < TOL[torch.bfloat16]


def test_tuning_writes_cache(monkeypatch, tmp_path):
    from quantlinear_cuda import tune
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    cache = tmp_path / "tune.json"
    monkeypatch.setenv(tune.ENV_TUNE, "1")
    monkeypatch.setenv(tune.ENV_CACHE, str(cache))
    monkeypatch.setattr(tune, "TUNER", tune.Tuner())
    layer, W, _ = build(TritonWNA16Linear, 4, 128, True, K=1024, N=1024)
    x = torch.randn(2, 1024, device="cuda", dtype=torch.float16)
    assert rel_err(layer(x), ref(x, W, None)) < TOL[torch.float16]
    assert cache.is_file() and layer.problem.key(2) in cache.read_text()
    # a new process (fresh tuner) reuses it without tuning
    t = tune.Tuner()
    cfg, src = t.lookup(__import__("quantlinear_cuda.device", fromlist=["x"]).device_props(x.device), layer.problem, 2)
    assert src == "cache" and cfg is not None


def test_benchmark_runner_small():
    from quantlinear_cuda.bench import run

    opts = BenchOptions(device="cuda", scheme="W4A16", dtype=torch.float16, shapes=((1024, 512),), ms=(1, 32), iters=5,
                        progress=False, kernels=("cuda.*", "peer.cublas"))
    rows = run(opts)
    names = {r.kernel for r in rows}
    assert {"cuda.triton", "peer.cublas"} <= names
    for r in rows:
        assert r.device_us and r.device_us > 0 and r.eager_us > 0 and r.floor_us > 0, r
        assert r.max_rel_err is not None and r.max_rel_err < 1e-2, r


def test_fast_launch_matches_the_jit_path_and_captures():
    """The direct launcher (quantlinear_triton.launch) gives bit-identical outputs to ``kernel[grid]``, in a graph too."""
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear
    from quantlinear_triton import kernels as tk
    from quantlinear_triton import launch as fl

    layer, W, _ = build(TritonWNA16Linear, 4, 128, True, K=1024, N=512)
    m = layer.meta
    cfgs = [(1, {"kernel": "gemv16", "BN": 32, "split_k": 2, "warps": 4, "stages": 3}),
            (1, {"kernel": "gemv", "BM": 1, "BN": 32, "split_k": 1, "warps": 4, "stages": 2}),
            (16, {"kernel": "dot16", "BM": 16, "BN": 64, "split_k": 2, "warps": 4, "stages": 3, "swap": True}),
            (5, {"kernel": "gemv16", "BM": 4, "BN": 32, "split_k": 1, "warps": 4, "stages": 2}),  # BM > 1: runs gemv
            (64, {"kernel": "dot", "BM": 64, "BN": 64, "split_k": 1, "warps": 4, "stages": 3, "swap": True}),
            (300, {"kernel": "dqmm", "BN": 64, "tpp": 4})]
    for M, cfg in cfgs:
        x = torch.randn(M, 1024, device="cuda", dtype=torch.float16)

        def run(out=None):
            return tk.launch(x, layer.w_slab, layer.w_scales, None, None, 4, m.slab, m.group_size, 1024, layer.zero_point, cfg, out=out)

        saved = fl._state.get("ok")
        fl._state["ok"] = False
        y0 = run()
        fl._state.pop("ok")
        if saved is False:
            fl._state["ok"] = False
        run()
        y1 = run()  # a cached launcher when the fast path is available (fl.status() says why not otherwise)
        yg = torch.full_like(y0, float("nan"))
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            run(yg)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        yg.fill_(float("nan"))
        with torch.cuda.graph(g):
            run(yg)
        g.replay()
        torch.cuda.synchronize()
        if cfg["kernel"] == "dqmm":  # cuBLAS may pick different algorithms
            assert rel_err(y1, y0.float()) < 1e-3 and rel_err(yg, y0.float()) < 1e-3, fl.status()
        else:
            assert torch.equal(y0, y1) and torch.equal(y0, yg), (cfg, fl.status())
        assert rel_err(y1, ref(x, W, None)) < TOL[torch.float16], cfg
    assert fl._state.get("verified", True) is not False, fl.status()
    if fl.enabled():  # every kernel above took the direct path at least once (launch.stats: direct, normal)
        st = fl.stats()
        for name in ("_gemv16_kernel", "_dot16_kernel", "_gemv_kernel", "_dot_kernel", "_dequant_kernel"):
            assert st.get(name, (0, 0))[0] > 0, (name, fl.stats_line())


@pytest.mark.parametrize("bits,group,sym,K,N", [(4, 128, True, 4096, 1536), (4, 128, False, 4096, 1024), (4, -1, True, 3072, 512),
                                                 (2, 256, False, 2048, 512)])
def test_gemv16_bf16_on_gpu(bits, group, sym, K, N):
    """gemv16 with bf16 activations (bf16x2 decode, fp32 products; and ``pair: False``, the exact fp32 decode) against an
    fp32 matmul of the dequantized weight: within 1e-3 of max |ref| with an fp32 output, the bf16 tolerance with bf16 out;
    fast launch == normal launch and a CUDA-graph replay, bit for bit."""
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear
    from quantlinear_triton import kernels as tk

    layer, W, _ = build(TritonWNA16Linear, bits, group, sym, K=K, N=N, dtype=torch.bfloat16, seed=K + N)
    m = layer.meta
    assert tk.gemv16_fits(bits, m.slab, m.group_size, K, torch.bfloat16) and tk._bf2_ok(torch.empty(1, device="cuda"))
    g = torch.Generator(device="cuda").manual_seed(bits + K)
    for M, cfg in [(1, {"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 4, "stages": 3}),
                   (1, {"kernel": "gemv16", "BN": 128, "split_k": 1, "warps": 8, "stages": 3}),
                   (1, {"kernel": "gemv16", "BN": 32, "split_k": 2, "warps": 4, "stages": 2, "pair": False}),
                   (3, {"kernel": "gemv16", "BN": 16, "split_k": 2, "warps": 4, "stages": 2})]:
        x = (torch.randn(M, K, device="cuda", generator=g) * 2).to(torch.bfloat16)

        def run(out=None):
            return tk.launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, None, bits, m.slab, m.group_size, K, layer.zero_point, cfg,
                             out=out)

        r = ref(x, W, None)
        y32 = run(torch.full((M, N), float("nan"), device="cuda"))
        assert rel_err(y32, r) < 1e-3, (cfg, rel_err(y32, r))
        y = run()
        assert y.dtype == torch.bfloat16 and rel_err(y, r) < TOL[torch.bfloat16], cfg
        yg = torch.full_like(y, float("nan"))
        gr, _ = capture_graph(run, yg)
        yg.fill_(float("nan"))
        gr.replay()
        torch.cuda.synchronize()
        assert torch.equal(yg, run()), cfg


@pytest.mark.parametrize("bits,group,sym", [(4, 128, True), (4, 128, False), (8, 128, True), (8, 64, False), (2, 256, False)])
def test_gemv16_fp16_large_activations_do_not_overflow(bits, group, sym):
    """The paired-fp16 GEMV sums ``VPW / 2`` products in fp16: with the codes scaled by ``2**-k`` no product or partial sum
    overflows for any finite fp16 activation (unscaled, W8 overflowed from |x| ~ 256 and W4 from ~2048).  Activations with
    outliers up to 30000 and tiny ones (1e-3) against an fp32 matmul of the dequantized weight."""
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear
    from quantlinear_triton import kernels as tk

    K, N = 2048, 512
    layer, W, _ = build(TritonWNA16Linear, bits, group, sym, K=K, N=N, seed=7 * bits)
    m = layer.meta
    assert tk.gemv16_fits(bits, m.slab, m.group_size, K, torch.float16)
    g = torch.Generator(device="cuda").manual_seed(bits)
    cfg = {"kernel": "gemv16", "BN": 32, "split_k": 2, "warps": 4, "stages": 2}
    for scale, outlier in ((1.0, 30000.0), (1.0, 3000.0), (1e-3, 0.0), (40.0, 500.0)):
        x = torch.randn(1, K, device="cuda", generator=g) * scale
        if outlier:
            x[0, ::97] = outlier * torch.sign(torch.randn(x[0, ::97].shape, device="cuda", generator=g))
        x = x.to(torch.float16)
        y = tk.launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, None, bits, m.slab, m.group_size, K, layer.zero_point, cfg,
                      out=torch.empty((1, N), device="cuda"))  # fp32 output: the kernel's error alone
        r = ref(x, W, None)
        assert torch.isfinite(y).all(), (bits, scale, outlier)
        assert rel_err(y, r) < 1e-3, (bits, scale, outlier, rel_err(y, r))
