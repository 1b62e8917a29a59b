"""The tensor-core decode kernel (``mmv``) on a real GPU: every shape class it takes, through the layer and directly."""

import pytest
import torch

from cuda_testutil import GPU, TOL, graph_replay_fresh, rel_err
from test_cuda_gpu import build, ref

pytestmark = pytest.mark.skipif(not (GPU and torch.cuda.get_device_capability()[0] >= 8), reason="needs an sm_80+ CUDA GPU")


@pytest.fixture
def no_tuning(monkeypatch):
    from quantlinear_cuda import tune

    monkeypatch.setenv(tune.ENV_TUNE, "0")
    monkeypatch.setattr(tune, "TUNER", tune.Tuner())


@pytest.mark.parametrize("cfg", [dict(warps=4, split_k=1), dict(warps=8, split_k=1), dict(warps=4, split_k=2),
                                 dict(warps=8, split_k=1, xh=True, maxnreg=128),
                                 # the next step's words a step ahead (the last step re-reads a tile of its split)
                                 dict(warps=8, split_k=1, pf=True), dict(warps=4, split_k=2, pf=True, xh=True)])
@pytest.mark.parametrize("sym", [True, False])
def test_ks_without_masks(cfg, sym):
    """K = 2048 (8 whole steps): every warp's steps inside its split, so ``ks`` loads without masks and its token
    columns past M read row M - 1; M = 1..8 against the reference (9 and 16 take the row split)."""
    from quantlinear_triton import kernels as tk
    from quantlinear_triton import kernels_mmv as km
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 128, sym, K=2048, N=528, bias=True)
    c = dict(dict(kernel="mmv", R=1, pf=False, ks=True), **cfg)
    split = cfg["split_k"]
    assert km.ks_unmasked(2048, 8, 8 // split, split, cfg["warps"])
    g = torch.Generator(device="cuda").manual_seed(11)
    for M in (1, 2, 3, 5, 8, 9):
        x = torch.randn(M, 2048, device="cuda", dtype=torch.float16, generator=g)
        y = tk.launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, 4, layer.meta.slab, 128, 2048,
                      layer.zero_point, c)
        assert rel_err(y, ref(x, W, b)) < 1e-3, (M, c)


@pytest.mark.parametrize("group,sym,K,N,bias", [(128, True, 1024, 512, False), (128, False, 1024, 512, True),
                                                 (256, False, 1536, 1040, True), (-1, True, 2048, 768, False),
                                                 (128, True, 1152, 784, True), (128, False, 4224, 200, False),
                                                 (512, True, 2560, 256, True)])
def test_layer_takes_mmv_from_m2_to_m8(no_tuning, group, sym, K, N, bias):
    from quantlinear_triton import launch as fl
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, group, sym, K=K, N=N, bias=bias)
    g = torch.Generator(device="cuda").manual_seed(K + N)
    before = fl.stats().get("_mmv_kernel", (0, 0))
    for M in (2, 3, 5, 8):
        x = torch.randn(M, K, device="cuda", dtype=torch.float16, generator=g)
        assert rel_err(layer(x), ref(x, W, b)) < 1e-3, M
    after = fl.stats().get("_mmv_kernel", (0, 0))
    assert sum(after) - sum(before) >= 4  # (one launch per call; the first direct launch is also checked by a normal one)


@pytest.mark.parametrize("cfg", [dict(R=r, warps=w, pf=pf, split_k=sp) for r, w, pf, sp in
                                 ((1, 8, True, 1), (1, 8, True, 4), (2, 4, False, 2), (1, 4, True, 8), (4, 4, True, 3),
                                  (1, 2, True, 4), (2, 1, False, 2))]
                         # the warps splitting K (M <= 8; M = 9 and 16 run the row split instead)
                         + [dict(R=r, warps=w, pf=False, split_k=sp, ks=True) for r, w, sp in ((1, 4, 1), (2, 8, 3), (1, 16, 2))]
                         # ... with the step's activation loads first, under a register budget
                         + [dict(R=1, warps=8, pf=False, split_k=1, ks=True, xh=True, maxnreg=128),
                            dict(R=2, warps=4, pf=False, split_k=3, ks=True, xh=True, maxnreg=96),
                            dict(R=1, warps=4, pf=False, split_k=1, ks=True, xh=True)]
                         # ... with the next step's words a step ahead (masked: 9 steps over 8 warps, a ragged split)
                         + [dict(R=1, warps=8, pf=True, split_k=1, ks=True), dict(R=2, warps=4, pf=True, split_k=3, ks=True),
                            dict(R=1, warps=8, pf=True, split_k=1, ks=True, xh=True, maxnreg=128)]
                         # evict_first weight loads at two token tiles too (M = 9 and 16)
                         + [dict(R=1, warps=4, pf=False, split_k=2, ef=True), dict(R=2, warps=4, pf=True, split_k=4, ef=True)]
                         # the weights started on before the grid-dependency wait: 1 loaded (each next step's after the
                         # step's arithmetic), 2 prefetched into L2
                         + [dict(R=1, warps=4, pf=False, split_k=1, ks=True, early=1),
                            dict(R=1, warps=8, pf=False, split_k=1, ks=True, xh=True, maxnreg=128, early=1),
                            dict(R=1, warps=8, pf=True, split_k=1, ks=True, xh=True, maxnreg=128, early=1),
                            dict(R=1, warps=4, pf=False, split_k=2, ef=True, early=1), dict(R=2, warps=4, pf=True, split_k=3, early=1),
                            dict(R=1, warps=4, pf=True, split_k=8, early=2), dict(R=2, warps=8, pf=False, split_k=3, ks=True, early=2)])
@pytest.mark.parametrize("sym", [True, False])
def test_every_configuration_and_m_up_to_16(cfg, sym):
    from quantlinear_triton import kernels as tk
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 128, sym, K=2304, N=528, bias=True)
    g = torch.Generator(device="cuda").manual_seed(7)
    for M in (1, 4, 9, 16):
        x = torch.randn(M, 2304, device="cuda", dtype=torch.float16, generator=g)
        y = tk.launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, 4, layer.meta.slab, 128, 2304,
                      layer.zero_point, dict(kernel="mmv", **cfg))
        assert rel_err(y, ref(x, W, b)) < 1e-3, (M, cfg)


@pytest.mark.parametrize("group,sym,K,N,bias", [(128, True, 1024, 512, False), (128, False, 1536, 1040, True),
                                                 (-1, True, 2048, 768, True), (256, False, 2560, 256, True),
                                                 (128, True, 3840, 200, False), (512, False, 4096, 784, True)])
def test_8bit_layers_take_mmv(no_tuning, group, sym, K, N, bias):
    """8-bit codes (fp16): two 128-channel slabs a step, each code pair a byte permute; M = 1..16 through the layer
    (M = 2..16 take mmv by default) and every configuration class directly."""
    from quantlinear_triton import kernels as tk
    from quantlinear_triton import launch as fl
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 8, group, sym, K=K, N=N, bias=bias)
    g = torch.Generator(device="cuda").manual_seed(K + N)
    before = sum(fl.stats().get("_mmv_kernel", (0, 0)))
    for M in (1, 2, 3, 8, 9, 16):
        x = torch.randn(M, K, device="cuda", dtype=torch.float16, generator=g)
        assert rel_err(layer(x), ref(x, W, b)) < 1e-3, M
    assert sum(fl.stats().get("_mmv_kernel", (0, 0))) - before >= 5
    for cfg in (dict(R=1, warps=4, pf=True, split_k=1), dict(R=2, warps=4, pf=False, split_k=3),
                dict(R=1, warps=8, pf=True, split_k=2), dict(R=4, warps=4, pf=True, split_k=1),
                dict(R=1, warps=4, pf=True, split_k=2, early=2), dict(R=2, warps=4, pf=False, split_k=3, early=1)):
        for M in (1, 5, 16):
            x = torch.randn(M, K, device="cuda", dtype=torch.float16, generator=g)
            y = tk.launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, 8, layer.meta.slab, layer.meta.group_size,
                          K, layer.zero_point, dict(kernel="mmv", **cfg))
            assert rel_err(y, ref(x, W, b)) < 1e-3, (M, cfg)


def test_large_and_tiny_activations():
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 128, False, K=1024, N=512)
    x = torch.randn(4, 1024, device="cuda")
    x[:, ::97] = 30000.0
    for scale in (1.0, 1e-3):
        xs = (x * scale).half()
        assert rel_err(layer(xs), ref(xs, W, b)) < 1e-3, scale


def test_graph_capture_and_compile(no_tuning):
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 128, True, K=1024, N=512, bias=True)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.float16)
    layer(x)
    assert rel_err(graph_replay_fresh(layer, x), ref(x, W, b)) < TOL[torch.float16]
    f = torch.compile(lambda t: layer(t) * 0.5, fullgraph=True)
    for M in (3, 6):
        xm = torch.randn(M, 1024, device="cuda", dtype=torch.float16)
        assert rel_err(f(xm), ref(xm, W, b) * 0.5) < TOL[torch.float16]


@pytest.mark.parametrize("sym,group", [(True, 128), (False, 128), (False, -1)])
def test_bf16_layers_take_it(no_tuning, sym, group):
    """bf16 activations: the bf16 MMA, weights (q - z) * s rounded once to bf16 (the scale first rounded to bf16)."""
    from quantlinear_triton import launch as fl
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, group, sym, K=1152, N=528, dtype=torch.bfloat16, bias=True)
    before = sum(fl.stats().get("_mmv_kernel", (0, 0)))
    for M in (2, 7, 16):
        x = torch.randn(M, 1152, device="cuda", dtype=torch.bfloat16)
        assert rel_err(layer(x), ref(x, W, b)) < 1e-2, M
    assert sum(fl.stats().get("_mmv_kernel", (0, 0))) - before >= 3


# ---- MXFP4 layers (E2M1 codes, E8M0 scales per 32): fp16 activations, M = 1..16 -------------------------------------
@pytest.mark.parametrize("weight_only", [False, True])
@pytest.mark.parametrize("K,N,bias", [(1024, 520, True), (1056, 784, False), (4096, 256, True)])
def test_mxfp4_layers_take_mmv_up_to_16_rows(weight_only, K, N, bias, monkeypatch):
    """W4A4 (the activations through the scheme's quantization first) and W4A16, ragged K (a partial 256-channel
    tile) and N, against the fp32 reference of the quantized activations times the dequantized weight."""
    import test_cuda_fp_gpu as fpg
    from quantlinear.testing_fp import float_reference
    from quantlinear_triton import launch as fl

    monkeypatch.setattr(fpg, "K", K)
    monkeypatch.setattr(fpg, "N", N)
    layer, w, b, spec = fpg.layer_for("MXFP4", torch.float16, bias=bias, weight_only=weight_only)
    assert layer.fp_mmv_sigma is not None and layer.meta.mmv_mul > 0
    g = torch.Generator(device="cuda").manual_seed(K + N)
    before = fl.stats().get("_mmv_kernel", (0, 0))
    for M in (1, 2, 5, 8, 9, 16):
        x = (torch.randn(M, K, device="cuda", generator=g) * 1.5).half()
        assert rel_err(layer(x), float_reference(x, w, spec, b)) < 1e-3, M
    assert sum(fl.stats().get("_mmv_kernel", (0, 0))) - sum(before) >= 6


@pytest.mark.parametrize("name,weight_only", [("MXFP4", False), ("MXFP4", True), ("NVFP4", False), ("NVFP4", True)])
@pytest.mark.parametrize("warps,split,xh,pf,early", [(4, 1, False, False, 0), (8, 1, False, False, 0), (4, 3, False, False, 0),
                                                   (8, 1, True, False, 0), (8, 1, True, True, 0), (4, 3, False, True, 0),
                                                   (8, 1, True, False, 1), (4, 3, False, False, 2)])
def test_float_layers_with_the_warps_splitting_k(name, weight_only, warps, split, xh, pf, early, monkeypatch):
    """``ks`` forced on MXFP4 / NVFP4 layers: MXFP4 K = 1184 (a partial last step), NVFP4 K = 1280 (its ``mmv`` takes
    whole 256-channel steps only), ragged N, bias, a split over programs too; M = 1..8 (9 runs the row split), against
    the fp32 reference (W4A4: of the quantized activations)."""
    import test_cuda_fp_gpu as fpg
    from quantlinear.testing_fp import float_reference
    from quantlinear_cuda import fp_ops
    from quantlinear_triton import launch as fl

    K = 1184 if name == "MXFP4" else 1280
    monkeypatch.setattr(fpg, "K", K)
    monkeypatch.setattr(fpg, "N", 784)
    layer, w, b, spec = fpg.layer_for(name, torch.float16, bias=True, weight_only=weight_only)
    assert layer.fp_mmv_sigma is not None
    cfg = {"kernel": "mmv", "R": 1, "warps": warps, "pf": pf, "split_k": split, "ks": True, "early": early}
    if xh:
        cfg.update(xh=True, maxnreg=128)
    monkeypatch.setattr(fp_ops.TUNER, "settled", lambda *a, **k: None)
    monkeypatch.setattr(fp_ops.TUNER, "get", lambda *a, **k: dict(cfg))
    g = torch.Generator(device="cuda").manual_seed(warps + split)
    before = sum(fl.stats().get("_mmv_kernel", (0, 0)))
    for M in (1, 2, 5, 8, 9):
        x = (torch.randn(M, K, device="cuda", generator=g) * 1.5).half()
        assert rel_err(layer(x), float_reference(x, w, spec, b)) < 1e-3, (M, cfg)
    assert sum(fl.stats().get("_mmv_kernel", (0, 0))) - before >= 5


@pytest.mark.parametrize("sv", [True, False])
@pytest.mark.parametrize("cfg", [dict(R=1, warps=4, pf=True, split_k=2), dict(R=2, warps=4, pf=False, split_k=1),
                                 dict(R=1, warps=4, pf=False, split_k=1, ks=True),
                                 dict(R=1, warps=8, pf=True, split_k=1, ks=True, xh=True, maxnreg=128, early=2)])
def test_nvfp4_layers_read_their_grouped_scales_with_either_load(sv, cfg, monkeypatch):
    """NVFP4's scales are stored in groups of 16 rows (``fp_packing.nv_sigma``; the last group of N = 520 half
    padding) and read per row and step with one 16-byte load (``sv``) or four 4-byte ones: both, at one and two row
    groups a warp, the row split and ks, M = 1..16, against the fp32 reference."""
    import test_cuda_fp_gpu as fpg
    from quantlinear.testing_fp import float_reference
    from quantlinear_cuda import fp_ops
    from quantlinear_triton import launch as fl

    monkeypatch.setattr(fpg, "K", 1280)
    monkeypatch.setattr(fpg, "N", 520)
    layer, w, b, spec = fpg.layer_for("NVFP4", torch.float16, bias=True)
    assert layer.fp_mmv_sigma.shape == (33, 5 * 64)  # ceil(520 / 16) groups, five 256-channel steps
    conf = dict(cfg, kernel="mmv", sv=sv)
    monkeypatch.setattr(fp_ops.TUNER, "settled", lambda *a, **k: None)
    monkeypatch.setattr(fp_ops.TUNER, "get", lambda *a, **k: dict(conf))
    g = torch.Generator(device="cuda").manual_seed(int(sv) + cfg["warps"])
    before = sum(fl.stats().get("_mmv_kernel", (0, 0)))
    for M in (1, 2, 5, 9, 16):
        x = (torch.randn(M, 1280, device="cuda", generator=g) * 1.5).half()
        assert rel_err(layer(x), float_reference(x, w, spec, b)) < 1e-3, (M, conf)
    assert sum(fl.stats().get("_mmv_kernel", (0, 0))) - before >= 5


@pytest.mark.parametrize("name", ["MXFP4", "NVFP4"])
def test_ks_float_layers_read_their_activations_as_pairs_and_replay(name, monkeypatch):
    """W4A4 with the warps splitting K (``ks``): the activation kernel writes the quantized activations in ``mmv``'s
    B-register order (``fp_kernels.quantize_activations_pairs``) and ``mmv`` reads them with two 16-byte loads a code
    pair -- bit for bit what it computes from the plain quantized activations, against the fp32 reference, K with a
    partial last step (MXFP4) -- and warm eager calls replay both launches."""
    import test_cuda_fp_gpu as fpg
    from quantlinear.testing_fp import float_reference
    from quantlinear_cuda import fp_ops
    from quantlinear_triton import fp_kernels as fk
    from quantlinear_triton import kernels_mmv as km
    from quantlinear_triton import launch as fl

    K = 1184 if name == "MXFP4" else 1280
    monkeypatch.setattr(fpg, "K", K)
    monkeypatch.setattr(fpg, "N", 784)
    layer, w, b, spec = fpg.layer_for(name, torch.float16, bias=True)
    cfg = {"kernel": "mmv", "R": 1, "warps": 8, "pf": True, "split_k": 1, "ks": True, "xh": True, "maxnreg": 128,
           "px": True}
    monkeypatch.setattr(fp_ops.TUNER, "settled", lambda *a, **k: cfg)  # (settled: eager calls go through the plans)
    monkeypatch.setattr(fp_ops.TUNER, "get", lambda *a, **k: cfg)
    m, buf = layer.meta, layer._buffers
    nv = name == "NVFP4"
    g = torch.Generator(device="cuda").manual_seed(3)
    for M in (1, 3, 8):
        for i in range(3):
            x = (torch.randn(M, K, device="cuda", generator=g) * 1.5).half()
            y = layer(x)
            xq = fk.quantize_activations(x, m.act, m.act_block, buf["fp_act_scale"])
            plain = km.launch_mmv_fp(xq, buf["fp_qweight"], buf["fp_mmv_sigma"], buf["fp_row_scales"], buf.get("bias"),
                                     m.mmv_mul, cfg, nv=nv)
            assert torch.equal(y, plain), (M, i)
            assert rel_err(y, float_reference(x, w, spec, b)) < 1e-3, (M, i)
        p = layer._plans.get((M, x.get_device(), torch.float16))
        if fl.enabled():
            assert p is not None and p.replay is not None and len(p.replay.steps) == 2, (M, fl.replay_refusal())
    assert km.reads_pairs(cfg, 8) and not km.reads_pairs(cfg, 9) and not km.reads_pairs(dict(cfg, ks=False), 1)
    assert not km.reads_pairs(dict(cfg, px=False), 1)
    w16, w, b, spec = fpg.layer_for(name, torch.float16, bias=True, weight_only=True)  # W4A16: px is the plain launch
    x = torch.randn(1, K, device="cuda").half()
    assert rel_err(w16(x), float_reference(x, w, spec, b)) < 1e-3


def test_mxfp4_graph_capture_and_compile():
    import test_cuda_fp_gpu as fpg
    from quantlinear.testing_fp import float_reference

    layer, w, b, spec = fpg.layer_for("MXFP4", torch.float16)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    for M in (1, 4, 16):
        x = torch.randn(M, fpg.K, device="cuda").half()
        assert rel_err(compiled(x), float_reference(x, w, spec, b)) < 1e-3, ("compile", M)
        layer(x)
        y = graph_replay_fresh(layer, x)  # (x refilled: the reference is of the new x)
        assert rel_err(y, float_reference(x, w, spec, b)) < 1e-3, ("graph", M)


# ---- host cost: eager calls launch through the direct launcher ------------------------------------------------------
def _normal_launches(fl):
    return {k: n for k, (d, n) in fl.stats().items()}


@pytest.mark.parametrize("layer_kind", ["int-fp16", "int-bf16", "MXFP4", "NVFP4", "FP8_STATIC"])
def test_warm_eager_calls_never_take_the_jit_launch_path(no_tuning, layer_kind):
    """After the first calls of a shape, every kernel a layer launches goes through the cached launcher
    (``quantlinear_triton.launch``), at every M the layer dispatches differently: ``kernel[grid]`` costs 25-45 us of
    host time per launch, more than a decode call takes on the GPU.  (The int ``mmv`` launch once missed it for
    every call, unnoticed: the tests counted launches, not which path they took.)"""
    from quantlinear_triton import launch as fl

    if not fl.enabled():
        pytest.skip(fl.status())
    if layer_kind.startswith("int"):
        from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

        dt = torch.bfloat16 if "bf16" in layer_kind else torch.float16
        layer, _, _ = build(TritonWNA16Linear, 4, 128, False, K=1024, N=512, dtype=dt, bias=True)
        K = 1024
    else:
        import test_cuda_fp_gpu as fpg

        dt = torch.float16
        layer = fpg.layer_for(layer_kind, dt)[0]
        K = fpg.K
    for M in (1, 2, 9, 16, 64, 300):
        x = torch.randn(M, K, device="cuda", dtype=dt)
        for _ in range(3):
            layer(x)
        before = _normal_launches(fl)
        for _ in range(3):
            layer(x)
        torch.cuda.synchronize()
        after = _normal_launches(fl)
        assert after == before, (layer_kind, M, {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)},
                                 fl.status())


@pytest.mark.skipif(not (GPU and torch.cuda.get_device_capability()[0] >= 9), reason="programmatic dependent launch: sm_90+")
@pytest.mark.parametrize("M,cfg", [(1, dict(kernel="gemv16", BM=1, BN=64, split_k=4, warps=4, stages=3)),
                                   (2, dict(kernel="mmv", R=1, warps=4, pf=True, split_k=1)),
                                   (2, dict(kernel="mmv", R=2, warps=4, pf=False, split_k=4)),
                                   (16, dict(kernel="mmv", R=1, warps=8, pf=True, split_k=4)),
                                   # weights started on before the wait (loaded / prefetched): the inputs never are
                                   (1, dict(kernel="mmv", R=1, warps=8, pf=False, split_k=1, ks=True, xh=True, maxnreg=128,
                                            early=1)),
                                   (1, dict(kernel="mmv", R=1, warps=4, pf=False, split_k=1, ks=True, early=2)),
                                   (16, dict(kernel="mmv", R=1, warps=4, pf=False, split_k=2, ef=True, early=1)),
                                   (8, dict(kernel="mmv", R=1, warps=4, pf=True, split_k=4, early=2))])
def test_chained_layers_with_pdl_give_the_plain_launches_results(monkeypatch, M, cfg):
    """Decode kernels launched with PDL wait for the previous kernel before their first load and release the next one
    after their main loop: a chain of layers, each reading the output the previous one has just written, gives
    bit for bit what plain launches give, eagerly and replayed in a CUDA graph."""
    from quantlinear_triton import kernels as tk
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, _, _ = build(TritonWNA16Linear, 4, 128, True, K=1024, N=1024, bias=True)
    x = torch.randn(M, 1024, device="cuda", dtype=torch.float16)

    def chain(x):
        h = x * 1.0  # (a kernel writes the first layer's input just before it)
        for _ in range(6):
            h = tk.launch(h, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, 4, layer.meta.slab, 128, 1024,
                          layer.zero_point, cfg)
        return h

    if not tk.pdl_ok(x):
        pytest.skip("this Triton or device does not take PDL")
    with_pdl = chain(x)
    idx = x.get_device()
    monkeypatch.setitem(tk._pdl_dev, idx, False)
    plain = chain(x)
    monkeypatch.setitem(tk._pdl_dev, idx, True)
    assert torch.isfinite(plain).all() and torch.equal(with_pdl, plain)
    xs = torch.zeros_like(x)
    chain(xs)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(xs)
    for seed in range(5):
        xs.copy_(torch.randn(x.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed)))
        graph.replay()
        monkeypatch.setitem(tk._pdl_dev, idx, False)
        expected = chain(xs.clone())
        monkeypatch.setitem(tk._pdl_dev, idx, True)
        assert torch.equal(out, expected), seed


# ---- split-K as thread-block clusters (sm_90+): the partials summed in rank 0's shared memory ------------------------
def _clusters():
    from quantlinear_triton import launch as fl

    return GPU and torch.cuda.get_device_capability()[0] >= 9 and fl.clusters_ok(torch.empty(1, device="cuda"))


CLUSTER_CFGS = [dict(R=1, warps=4, pf=False, split_k=2), dict(R=2, warps=4, pf=True, split_k=3),
                dict(R=1, warps=8, pf=True, split_k=4), dict(R=1, warps=4, pf=False, split_k=8, ef=True, early=1),
                dict(R=1, warps=4, pf=False, split_k=16, early=2),  # (16 programs: past the portable 8)
                dict(R=1, warps=4, pf=False, split_k=2, ks=True, early=2),
                dict(R=1, warps=8, pf=True, split_k=3, ks=True, xh=True, maxnreg=128)]


@pytest.mark.skipif(not _clusters(), reason="thread-block clusters: sm_90+ and a launcher that takes them")
@pytest.mark.parametrize("cfg", CLUSTER_CFGS)
@pytest.mark.parametrize("dtype,bits", [(torch.float16, 4), (torch.bfloat16, 4), (torch.float16, 8)])
@pytest.mark.parametrize("sym", [True, False])
def test_cluster_splits_sum_like_the_workspace(cfg, dtype, bits, sym):
    """``cl``: the splits of a row block are one cluster and rank 0 adds the others' D registers from its shared
    memory, in rank order -- the workspace split's order, so the outputs are bit-equal to it, eagerly and replayed in
    a CUDA graph; M = 1..16 (``ks`` up to 8, the row split above), K = 4096 (16 steps: 16 splits of one)."""
    from quantlinear_triton import kernels_mmv as km
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    if bits == 8 and cfg.get("ks"):
        pytest.skip("ks takes 4-bit codes")
    layer, W, b = build(TritonWNA16Linear, bits, 128, sym, K=4096, N=784, dtype=dtype, bias=True)
    c = dict(kernel="mmv", **cfg)
    g = torch.Generator(device="cuda").manual_seed(cfg["split_k"])

    def run(x, cl, out=None):
        return km.launch_mmv(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, 128, layer.zero_point,
                             dict(c, cl=cl), out=out, bits=bits)

    for M in (1, 3, 8, 9, 16):
        x = torch.randn(M, 4096, device="cuda", dtype=dtype, generator=g)
        y = run(x, True)
        assert torch.equal(y, run(x, False)), (M, c)
        assert rel_err(y, ref(x, W, b)) < (1e-2 if dtype == torch.bfloat16 else 1e-3), (M, c)
        out = torch.empty_like(y)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run(x, True, out)
        graph.replay()
        assert torch.equal(out, y), (M, c)


@pytest.mark.skipif(not _clusters(), reason="thread-block clusters: sm_90+ and a launcher that takes them")
def test_layers_with_cluster_splits_replay_compile_and_chain(no_tuning, monkeypatch):
    """A layer whose configuration takes ``cl`` (forced here; the shipped tables take it on some M = 2..16 cells):
    warm eager calls (replayed launches), ``torch.compile(fullgraph=True)``, a CUDA graph and a PDL chain of layers,
    each reading what the last one wrote, all give the workspace split's output bit for bit."""
    from quantlinear_triton import kernels_mmv as km
    from quantlinear_cuda import tune
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 128, True, K=2048, N=2048, bias=True)
    cfg = {"kernel": "mmv", "R": 1, "warps": 4, "pf": False, "split_k": 2, "ef": True, "early": 1}
    monkeypatch.setattr(tune.TUNER, "settled", lambda *a, **k: None)
    monkeypatch.setattr(tune.TUNER, "get", lambda *a, **k: dict(cfg, cl=True))

    def plain(x):  # the workspace split, launched directly
        return km.launch_mmv(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, 128, layer.zero_point, cfg)

    def chain(h, f):
        for _ in range(4):
            h = f(h) * 0.05
        return h

    torch._dynamo.reset()
    compiled = torch.compile(lambda t: layer(t) * 0.5, fullgraph=True)
    for M in (2, 16):
        x = torch.randn(M, 2048, device="cuda", dtype=torch.float16)
        want = plain(x)
        assert rel_err(want, ref(x, W, b)) < 1e-3, M
        assert all(torch.equal(layer(x), want) for _ in range(4)), M  # (the later calls replayed)
        assert torch.equal(compiled(x), want * 0.5), M
        assert torch.equal(chain(x, layer), chain(x, plain)), M
        x2 = x.clone()
        assert torch.equal(graph_replay_fresh(layer, x2), plain(x2)), M  # (x2 refilled before the replay)


@pytest.mark.skipif(not _clusters(), reason="thread-block clusters: sm_90+ and a launcher that takes them")
@pytest.mark.parametrize("name", ["MXFP4", "NVFP4"])
@pytest.mark.parametrize("cfg", [dict(R=1, warps=4, pf=False, split_k=3), dict(R=1, warps=4, pf=True, split_k=4, early=2),
                                 dict(R=1, warps=4, pf=False, split_k=2, ks=True)])
def test_float_layers_with_cluster_splits(name, cfg, monkeypatch):
    """MXFP4 / NVFP4 layers whose split is a cluster: the workspace split's output bit for bit, M = 1..16."""
    import test_cuda_fp_gpu as fpg
    from quantlinear.testing_fp import float_reference
    from quantlinear_cuda import fp_ops

    monkeypatch.setattr(fpg, "K", 1280)
    monkeypatch.setattr(fpg, "N", 784)
    layer, w, b, spec = fpg.layer_for(name, torch.float16, bias=True)
    pick = {"cfg": None}
    monkeypatch.setattr(fp_ops.TUNER, "settled", lambda *a, **k: None)
    monkeypatch.setattr(fp_ops.TUNER, "get", lambda *a, **k: dict(pick["cfg"]))
    g = torch.Generator(device="cuda").manual_seed(3)
    for M in (1, 5, 9, 16):
        x = (torch.randn(M, 1280, device="cuda", generator=g) * 1.5).half()
        pick["cfg"] = dict(kernel="mmv", cl=True, **cfg)
        y = layer(x)
        pick["cfg"] = dict(kernel="mmv", **cfg)
        assert torch.equal(y, layer(x)), (M, cfg)
        assert rel_err(y, float_reference(x, w, spec, b)) < 1e-3, (M, cfg)
