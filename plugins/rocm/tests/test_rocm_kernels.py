"""The shared Triton kernels with the ROCm launch configurations, in Triton's interpreter on CPU tensors.

For every CDNA architecture (gfx90a, gfx942, gfx950) the deterministic configuration of each M
bucket that picks a different kernel or tile (GEMV, skinny matrix-core tile, large tile) runs
W2/W3/W4/W8, symmetric and asymmetric, groups 32/128/per-channel, fp16, and is compared with
``IntWeights.dequantize``.  The AMD compile options the configurations carry are ignored by the
interpreter; tests/test_rocm_compile.py compiles the same configurations for the real targets.
"""

import pytest
import torch

from quantlinear_rocm import tune
from quantlinear_rocm.device import device_props
from quantlinear_rocm.kernels.triton_wna16 import RocmTritonLinear

from fake_rocm import simulate_rocm
from rocm_testutil import CDNA, RDNA, TOL, make_layer, needs_interpreter, rand_x, reference, rel_err

pytestmark = needs_interpreter

#: M values whose buckets get the three different default shapes (GEMV / skinny dot / large dot)
MS = (1, 5, 130)


def launch_cfg(layer, x, cfg):
    from quantlinear_triton.kernels import launch

    m = layer.meta
    out = torch.full((x.shape[0], layer.out_features), float("nan"), dtype=x.dtype)  # poisoned: every element must be written
    return launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, m.bits, m.slab, m.group_size, m.in_features,
                  layer.zero_point, cfg, out=out)


def interpreted_shape(cfg):
    """What the interpreter executes differently (compile options such as waves_per_eu change nothing there)."""
    return tuple(sorted((k, v) for k, v in cfg.items() if k not in ("waves_per_eu", "matrix_instr_nonkdim", "kpack", "warps", "stages")))


def arch_configs(archs, layer, Ms=MS):
    """{interpreted shape: (cfg, M, [archs using it])} over the default configurations of ``archs``."""
    seen = {}
    for arch in archs:
        with simulate_rocm(arch):
            props = device_props("cpu")
            for M in Ms:
                cfg = tune.SPACE.default_config(layer.problem, M, props)
                entry = seen.setdefault(interpreted_shape(cfg), (cfg, M, []))
                entry[2].append(arch)
    return seen


@pytest.mark.parametrize("group", [32, 128, -1])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_cdna_configs_fp16(bits, sym, group):
    K, N = 320, 96  # K: 2-bit tiles (512) are padded; N: not a multiple of the 64-row blocks
    with simulate_rocm("gfx942"):
        layer, W, b = make_layer(RocmTritonLinear, bits, group, sym, K, N, torch.float16, bias=(bits == 3), seed=bits * 7 + group)
    configs = arch_configs(CDNA, layer)
    assert {a for _, _, archs in configs.values() for a in archs} == set(CDNA)
    kinds = {cfg["kernel"] for cfg, _, _ in configs.values()}
    assert kinds == {"gemv", "dot"}  # simulated devices never take the dequantize+BLAS path
    for cfg, M, archs in configs.values():
        x = rand_x(M, K, torch.float16, seed=M)
        err = rel_err(launch_cfg(layer, x, cfg), reference(x, W, b))
        assert err < TOL[torch.float16], (archs, cfg, M, err)


@pytest.mark.parametrize("arch", CDNA + RDNA)
def test_layer_forward_uses_the_arch_table(arch):
    """A layer on the simulated device runs through the op and the ROCm tuner: the arch's defaults."""
    K, N = 256, 64
    with simulate_rocm(arch):
        layer, W, b = make_layer(RocmTritonLinear, 4, 64, False, K, N, torch.float16, bias=True, seed=11)
        for M in (1, 3, 70):
            x = rand_x(M, K, torch.float16, seed=M)
            y = layer(x)
            assert y.shape == (M, N) and y.dtype == torch.float16
            assert rel_err(y, reference(x, W, b)) < TOL[torch.float16]
            cfg = tune.TUNER.get(torch.device("cpu"), layer.problem, M)
            assert cfg == tune.SPACE.default_config(layer.problem, M, device_props("cpu"))
        # fp32 activations (IEEE dot) and leading dims go through the base class
        x3 = rand_x(6, K, torch.float32, seed=3).view(2, 3, K)
        assert layer(x3).shape == (2, 3, N)


@pytest.mark.parametrize("bits,group,sym", [(4, 128, False), (8, -1, True), (2, 32, True)])
def test_rdna_configs_fp16(bits, group, sym):
    K, N = 256, 64
    with simulate_rocm("gfx1100"):
        layer, W, b = make_layer(RocmTritonLinear, bits, group, sym, K, N, torch.float16, seed=5)
    for cfg, M, archs in arch_configs(RDNA, layer).values():
        x = rand_x(M, K, torch.float16, seed=M)
        assert rel_err(launch_cfg(layer, x, cfg), reference(x, W, b)) < TOL[torch.float16], (archs, cfg)


def test_act_order_and_formats():
    """Act-order and the AWQ layout go through the base class and the shared packing unchanged."""
    from quantlinear import LayerSpec, Scheme
    from quantlinear.benchutil import random_int_weights

    K, N, g = 256, 64, 64
    sc = Scheme(bits=4, group_size=g, sym=False)
    w = random_int_weights(K, N, sc, seed=17)
    w.g_idx = (torch.randperm(K, generator=torch.Generator().manual_seed(1)) // g).to(torch.int32)
    with simulate_rocm("gfx950"):
        layer = RocmTritonLinear.from_weights(LayerSpec(sc, "gptq", K, N, dtype=torch.float16, device=torch.device("cpu"), act_order=True), w)
        x = rand_x(3, K, torch.float16)
        assert rel_err(layer(x), reference(x, w.dequantize(g), None)) < TOL[torch.float16]
        layer, W, _ = make_layer(RocmTritonLinear, 4, 128, False, K, N, torch.float16, fmt="awq")
        assert rel_err(layer(x), reference(x, W, None)) < TOL[torch.float16]
