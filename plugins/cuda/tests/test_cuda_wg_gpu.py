"""The Hopper prefill kernel (``wg``) on a real sm_90 GPU: every configuration class directly, the layer's default from
M = 128, CUDA graphs and torch.compile."""

import pytest
import torch

from cuda_testutil import GPU, TOL, graph_replay_fresh, rel_err
from test_cuda_gpu import build, ref

pytestmark = pytest.mark.skipif(not (GPU and torch.cuda.get_device_capability()[0] == 9), reason="needs an sm_90 GPU")


@pytest.fixture
def no_tuning(monkeypatch):
    from quantlinear_cuda import tune

    monkeypatch.setenv(tune.ENV_TUNE, "0")
    monkeypatch.setattr(tune, "TUNER", tune.Tuner())


def _launch(layer, x, cfg, K):
    from quantlinear_triton import kernels as tk

    return tk.launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, 4, layer.meta.slab, layer.meta.group_size,
                     K, layer.zero_point, dict(kernel="wg", **cfg))


@pytest.mark.parametrize("cfg", [dict(BM=256, planes=1, stages=4, split_k=1), dict(BM=128, planes=2, stages=4, split_k=1),
                                 dict(BM=128, planes=1, stages=6, split_k=3), dict(BM=64, planes=2, stages=4, split_k=2),
                                 dict(BM=256, planes=2, stages=4, split_k=2), dict(BM=256, warps=4, planes=1, stages=3),
                                 dict(BM=64, planes=2, maxnreg=128, split_k=2), dict(BM=128, planes=2, split_k=5)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group,sym,K,N,bias", [(128, True, 2048, 512, False), (128, False, 1536, 1040, True),
                                                 (-1, True, 1000, 392, True), (512, False, 4096, 256, False)])
def test_every_configuration(cfg, dtype, group, sym, K, N, bias):
    """Ragged M, N and K (K = 1000: the last tile's far half past K), asymmetric zeros, bias, bf16, split-K."""
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, group, sym, K=K, N=N, bias=bias, dtype=dtype)
    g = torch.Generator(device="cuda").manual_seed(K + N)
    for M in (1, 77, 256, 300):
        x = torch.randn(M, K, device="cuda", dtype=dtype, generator=g)
        tol = 1e-3 if dtype == torch.float16 else TOL[dtype]
        assert rel_err(_launch(layer, x, cfg, K), ref(x, W, b)) < tol, (M, cfg)


def test_it_runs_wg_and_matches_tc(no_tuning):
    """Same dequantized weights, same fp32 sums (in another order): wg and tc agree to the output's rounding."""
    from quantlinear_triton import kernels_tc
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 128, False, K=4096, N=1024, bias=True)
    x = torch.randn(256, 4096, device="cuda", dtype=torch.float16)
    y = _launch(layer, x, dict(BM=256), 4096)
    yt = kernels_tc.launch_tc(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, 4, 32, 128, 4096, layer.zero_point)
    assert rel_err(y, ref(x, W, b)) < 1e-3 and rel_err(y, yt.float()) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layer_takes_wg_from_m33(no_tuning, monkeypatch, dtype):
    from quantlinear_triton import kernels_wg
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    calls = []
    launch = kernels_wg.launch_wg
    monkeypatch.setattr(kernels_wg, "launch_wg", lambda *a, **k: calls.append(a[0].shape[0]) or launch(*a, **k))
    layer, W, b = build(TritonWNA16Linear, 4, 128, True, K=2048, N=1536, bias=True, dtype=dtype)
    for M in (128, 200, 512, 40, 16):
        x = torch.randn(M, 2048, device="cuda", dtype=dtype)
        assert rel_err(layer(x), ref(x, W, b)) < (1e-3 if dtype == torch.float16 else TOL[dtype]), M
    assert calls == [128, 200, 512, 40]  # M = 16 is mmv's


def test_cuda_graph_and_compile(no_tuning):
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, W, b = build(TritonWNA16Linear, 4, 128, False, K=1024, N=512, bias=True)
    x = torch.randn(256, 1024, device="cuda", dtype=torch.float16)
    y = graph_replay_fresh(layer, x)
    assert rel_err(y, ref(x, W, b)) < 1e-3
    f = torch.compile(lambda x: layer(x) * 0.5, fullgraph=True)
    for M in (256, 256, 384):
        x = torch.randn(M, 1024, device="cuda", dtype=torch.float16)
        assert rel_err(f(x), ref(x, W, b) * 0.5) < 1e-3


@pytest.mark.parametrize("dtype,sym,bias", [(torch.float16, True, False), (torch.bfloat16, False, True)])
def test_a_small_last_wave_runs_in_halves(dtype, sym, bias):
    """1000 x 2048 x 5000: 160 tiles of 256 x 128 on 132 multiprocessors, the last 28 in two halves of K (the schedule
    is asserted, so the test cannot pass on whole tiles alone); equal to the same launch without the split up to the
    order of two fp32 sums, and bit-equal on the whole tiles."""
    from quantlinear_triton import kernels_wg as kw
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    K, N, M = 2048, 5000, 1000
    tiles = -(-M // 256) * -(-N // 128)
    slots = torch.cuda.get_device_properties(0).multi_processor_count * kw.resident(256, 1, 4, 8, 0)
    full, rest, split, tps = kw.split_schedule(tiles, K // 256, 1, slots, True)
    assert rest > 0 and split == 2 and full + rest == tiles, (tiles, slots, full, rest)
    layer, W, b = build(TritonWNA16Linear, 4, 128, sym, K=K, N=N, bias=bias, dtype=dtype)
    x = torch.randn(M, K, device="cuda", dtype=dtype)
    y = _launch(layer, x, dict(BM=256), K)
    y0 = _launch(layer, x, dict(BM=256, tail=0), K)
    tol = 1e-3 if dtype == torch.float16 else TOL[dtype]
    assert rel_err(y, ref(x, W, b)) < tol and rel_err(y, y0.float()) < tol
    # 4 token blocks (fewer than group_m): tile i is token block i % 4 of weight block i // 4
    assert full % 4 == 0 and torch.equal(y[:, :128 * (full // 4)], y0[:, :128 * (full // 4)])
    for _ in range(3):  # the tile counters are reset for the next launch
        assert torch.equal(_launch(layer, x, dict(BM=256), K), y)
