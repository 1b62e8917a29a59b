"""Eager launch plans on a real GPU (``quantlinear_triton.ops.run_gemm``'s ``plans``, :class:`quantlinear_triton.launch.Replay`):
after its first calls at an M a layer relaunches the recorded kernel with only the activations and the output swapped,
and must give exactly what the normal path gives, for every kernel it replays (the paired GEMV, ``mmv``, ``wg``, the
dot kernels), with split-K, zeros and bias, unaligned activations (the replay declines) and inside CUDA graphs."""

import pytest
import torch

from cuda_testutil import GPU, capture_graph
from test_cuda_gpu import build

pytestmark = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


def _normal(layer, x):
    """The same call without the layer's plans: the configuration lookup and kernels.launch."""
    m, b = layer.meta, layer._buffers
    return layer.ops_module.run_gemm(x, b["w_slab"], b["w_scales"], b["w_zeros"], b.get("bias"), m.bits, m.group_size,
                                     m.in_features, m.slab, layer.zero_point, layer.problem)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sym,bias", [(True, False), (False, True)])
def test_replayed_calls_equal_the_normal_path(dtype, sym, bias):
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear
    from quantlinear_triton import launch as fl

    layer, _, _ = build(TritonWNA16Linear, 4, 128, sym, K=4096, N=1024, bias=bias, dtype=dtype)
    g = torch.Generator(device="cuda").manual_seed(3)
    replayed = set()
    for M in (1, 2, 16, 64, 256):
        for i in range(4):  # compile / verify, record, then replays with fresh activations
            x = torch.randn(M, 4096, device="cuda", dtype=dtype, generator=g)
            y = layer(x)
            assert torch.equal(y, _normal(layer, x)), (M, i)
        p = layer._plans.get((M, x.get_device(), dtype))
        if fl.enabled():
            assert p is not None, M
            if p.replay is not None:
                replayed.add(M)
        # activations 16-byte misaligned (a view 4 elements in): the replay declines, the normal path answers
        buf = torch.randn(M * 4096 + 4, device="cuda", dtype=dtype, generator=g)
        xu = buf[4:].view(M, 4096)
        assert torch.equal(layer(xu), _normal(layer, xu))
    if fl.enabled():
        assert {1, 2, 16} <= replayed, replayed  # the decode kernels always; wg / dot where the GPU runs them
        if torch.cuda.get_device_capability()[0] == 9:
            assert {64, 256} <= replayed, replayed


def test_a_graph_captures_the_replayed_launch():
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    layer, _, _ = build(TritonWNA16Linear, 4, 128, False, K=2048, N=512, bias=True)
    for M in (1, 64):
        x = torch.randn(M, 2048, device="cuda", dtype=torch.float16)
        for _ in range(3):
            layer(x)  # planned (and replayed) before the capture
        g, y = capture_graph(layer, x)
        x.copy_(torch.randn_like(x))
        y.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, _normal(layer, x)), M


def test_moving_the_layer_replans():
    """Other weight tensors (``layer.to``, ``load_state_dict`` with assign): planned again, never the old buffers."""
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    a, _, _ = build(TritonWNA16Linear, 4, 128, True, K=1024, N=256, seed=1)
    b, _, _ = build(TritonWNA16Linear, 4, 128, True, K=1024, N=256, seed=2)
    x = torch.randn(1, 1024, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a(x)
    a.w_slab, a.w_scales = b.w_slab, b.w_scales  # what assigning new buffers does
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("scheme", ["MXFP4", "NVFP4", "MXFP8"])
def test_float_layers_replay_the_activation_kernel_and_the_gemv(scheme):
    """Two launches a call (the activations' quantization into a temporary, then the GEMV): replayed in order with a
    fresh temporary, equal to the normal path."""
    from quantlinear import LayerSpec
    from quantlinear.scheme import PRESETS
    from quantlinear.testing import Case
    from quantlinear.testing_fp import build_float_layer, format_for
    from quantlinear_cuda.kernels.triton_fp import TritonFPLinear
    from quantlinear_triton import launch as fl
    from quantlinear_triton.fp_layers import run_float

    sc = PRESETS[scheme]
    spec = LayerSpec(sc, format_for(TritonFPLinear, sc), 2048, 512, dtype=torch.float16, device=torch.device("cuda"), name="r")
    layer = build_float_layer(Case(TritonFPLinear, spec))[0]
    b = layer._buffers
    g = torch.Generator(device="cuda").manual_seed(5)
    steps = []
    for M in (1, 2, 16, 64):  # (M = 64: the activation kernel and the float tc kernel)
        for i in range(4):
            x = torch.randn(M, 2048, device="cuda", dtype=torch.float16, generator=g)
            y = layer(x)
            want = run_float(layer.ops_module, x, layer.meta, layer.problem, b["fp_qweight"], b["fp_scales"],
                             b["fp_row_scales"], b.get("bias"), b["fp_act_scale"], b["fp_mmv_sigma"])
            assert torch.equal(y, want), (scheme, M, i)
        p = layer._plans.get((M, x.get_device(), torch.float16))
        if p is not None and p.replay is not None:  # (the folded GEMV's split activations are not replayed)
            steps.append(len(p.replay.steps))
    if fl.enabled():
        assert steps and set(steps) == {2}, (scheme, steps, fl.replay_refusal())


def test_fp8_small_m_replays():
    from test_cuda_scaled_mm_gpu import fp8_layer
    from quantlinear_triton import launch as fl
    from quantlinear_triton.fp_layers import run_float
    from quantlinear_cuda import fp_ops

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs an FP8 GPU")
    layer, fw, _, _ = fp8_layer(4096, 2048, torch.float16, -1, True)
    b = layer._buffers
    for M in (1, 8):
        for i in range(4):
            x = torch.randn(M, 4096, device="cuda", dtype=torch.float16)
            want = run_float(fp_ops, x, layer.meta, layer.problem, b["w_fp8"].view(torch.int32), None,
                             b["gemv_row_scales"], b.get("bias"), b["input_scale"])
            assert torch.equal(layer(x), want), (M, i)
        p = layer._plans.get((M, 0, torch.float16))
        if fl.enabled() and layer.small_m >= M and p.cfg["kernel"] in ("gemv", "gemv16", "dot"):  # (not dqmm / tc)
            assert p.replay is not None and len(p.replay.steps) == 2, fl.replay_refusal()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_tc_prefill_kernel_replays(dtype):
    """The tensor-core prefill kernel of the GPUs without ``wg`` (forced here through a tuner that settles on it)."""
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear
    from quantlinear_triton import kernels_tc
    from quantlinear_triton import launch as fl
    from quantlinear_triton import ops as tops

    layer, _, _ = build(TritonWNA16Linear, 4, 128, False, K=2048, N=1024, bias=True, dtype=dtype)
    m, b = layer.meta, layer._buffers
    plans = tops.PlanCache()
    for M in (96, 300):
        cfg = dict(kernels_tc.default_config(M, 1024, dtype), kernel="tc")

        class Tuner:
            def settled(self, problem, x):
                return cfg

        for i in range(4):
            x = torch.randn(M, 2048, device="cuda", dtype=dtype)
            y = tops.run_gemm(Tuner(), x, b["w_slab"], b["w_scales"], b["w_zeros"], b["bias"], 4, 128, 2048, m.slab,
                              layer.zero_point, layer.problem, plans)
            want = kernels_tc.launch_tc(x, b["w_slab"], b["w_scales"], b["w_zeros"], b["bias"], 4, m.slab, 128, 2048,
                                        layer.zero_point, cfg)
            assert torch.equal(y, want), (M, i)
        if fl.enabled():
            assert plans[(M, 0, dtype)].replay is not None, fl.replay_refusal()
