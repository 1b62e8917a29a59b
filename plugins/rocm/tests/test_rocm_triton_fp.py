"""``rocm.triton_fp`` (issue #6): the shared float kernels on simulated AMD devices, FP8 as e4m3fnuz on gfx942.

CPU tensors play the device (fake_rocm.simulate_rocm plus the plugin's CPU stand-in switch) and
the kernels run in Triton's interpreter, fp16/fp32 (the interpreter mis-loads bf16).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from quantlinear import LayerSpec, Registry, select_kernel
from quantlinear.scheme import PRESETS
from quantlinear.select import clear_cache
from quantlinear.testing import Case
from quantlinear.testing_fp import build_float_layer, float_reference, format_for
from quantlinear_rocm import device as rocm_device
from quantlinear_rocm import fp_ops
from quantlinear_rocm.device import RocmProps
from quantlinear_rocm.kernels.triton_fp import RocmTritonFPLinear
from quantlinear_triton import fp_packing as P
from quantlinear_triton.fp_tune import FPProblem, dot_shared_bytes

from fake_rocm import DEVICES, simulate_rocm
from rocm_testutil import needs_interpreter, rel_err

TOL = {torch.float16: 1e-2, torch.float32: 1e-4}


@contextlib.contextmanager
def on(arch):
    with simulate_rocm(arch), pytest.MonkeyPatch.context() as mp:
        mp.setattr(rocm_device, "CPU_STANDS_IN", True)
        fp_ops.TUNER.clear()  # configurations are per (device, problem): another arch may have run on "cpu"
        yield
    fp_ops.TUNER.clear()


def fp_spec(name, dtype=torch.float32, K=160, N=40, bias=False):
    sc = PRESETS[name]
    return LayerSpec(sc, format_for(RocmTritonFPLinear, sc), K, N, bias=bias, dtype=dtype, device=torch.device("cpu"), name="t")


@needs_interpreter
@pytest.mark.parametrize("name", ["FPW8A16", "FP8_STATIC", "MXFP8"])
def test_gfx942_fp8_as_e4m3fnuz(name):
    """gfx942: the weight bytes become e4m3fnuz (-0 -> +0) and decode natively; results equal the e4m3fn reference."""
    with on("gfx942"):
        s = fp_spec(name, bias=True)
        layer, w, bias = build_float_layer(Case(RocmTritonFPLinear, s))
        assert layer.meta.elem == P.E4M3_B8
        x = torch.randn(3, 160, generator=torch.Generator().manual_seed(1))
        assert rel_err(layer(x), float_reference(x, w, s, bias)) < TOL[torch.float32]
        # a checkpoint's -0 bytes (0x80, NaN in e4m3fnuz) are converted, every other byte is kept
        w.codes[:, :5] = 0x80
        layer2 = RocmTritonFPLinear.from_weights(s, w, bias)
        stored = P.unpack_slabs(layer2.fp_qweight, 8, layer2.meta.slab, 160)
        assert not bool((stored == 0x80).any()) and torch.equal(stored[:, 5:], w.codes[:, 5:])
        assert rel_err(layer2(x), float_reference(x, w, s, bias)) < TOL[torch.float32]


@pytest.mark.parametrize("arch,elem", [("gfx942", P.E4M3_B8), ("gfx950", P.E4M3_NV), ("gfx1201", P.E4M3_NV),
                                       ("gfx90a", P.E4M3), ("gfx1100", P.E4M3)])
def test_fp8_decode_per_arch(arch, elem):
    with on(arch):
        layer = RocmTritonFPLinear(fp_spec("FPW8A16"))
        assert layer.fp8_decode()[0] == elem


@needs_interpreter
@pytest.mark.parametrize("name,dtype", [("MXFP4", torch.float16), ("NVFP4", torch.float32), ("MXINT4", torch.float32)])
def test_numerics_with_gfx942_defaults(name, dtype):
    with on("gfx942"):
        s = fp_spec(name, dtype, K=256, N=40)
        layer, w, _ = build_float_layer(Case(RocmTritonFPLinear, s))
        for M in (1, 5):  # GEMV and the skinny dot tile of the gfx942 table
            x = torch.randn(M, 256, generator=torch.Generator().manual_seed(M)).to(dtype)
            assert rel_err(layer(x), float_reference(x, w, s, None)) < TOL[dtype], M


def test_selection_and_reasons():
    clear_cache()
    import quantlinear_rocm.plugin as rocm_plugin

    reg = Registry(entry_points=False)
    reg.register(rocm_plugin, "rocm")
    cuda_spec = LayerSpec(PRESETS["MXFP4"], "mxfp4", 4096, 4096, dtype=torch.bfloat16, device=torch.device("cuda"))
    with simulate_rocm("gfx942", cpu_is_rocm=False):
        assert select_kernel(cuda_spec, registry=reg).kernel is RocmTritonFPLinear
    with simulate_rocm("gfx906", cpu_is_rocm=False):
        v = RocmTritonFPLinear.can_implement(cuda_spec)
        assert not v and "gfx906" in v.reason and "matrix cores" in v.reason
    with simulate_rocm("gfx942", cpu_is_rocm=False), pytest.MonkeyPatch.context() as mp:
        mp.setattr(rocm_device, "triton_available", lambda: False)
        v = RocmTritonFPLinear.can_implement(cuda_spec)
        assert not v and "Triton is not installed" in v.reason
    with on("gfx942"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(rocm_device, "interpreting", lambda: False)
        v = RocmTritonFPLinear.can_implement(fp_spec("MXFP4"))
        assert not v and "TRITON_INTERPRET" in v.reason
    clear_cache()


@pytest.mark.parametrize("arch", ["gfx942", "gfx90a", "gfx950", "gfx1100"])
def test_default_tiles_fit_lds(arch):
    d = DEVICES[arch]
    props = RocmProps(d.name, d.gcnArchName, d.warp_size, d.shared_memory_per_block, d.multi_processor_count, d.total_memory)
    for dtype in ("float16", "float32"):
        p = FPProblem(P.E2M1, P.S_E8M0, 32, 4, dtype, 4096, 4096)
        cfg = fp_ops.SPACE.default_config(p, 4096, props)
        assert dot_shared_bytes(p, cfg["BM"], cfg["BN"]) <= props.info.lds, (arch, dtype, cfg)
        assert cfg["warps"] * props.warp_size == 256 and cfg["stages"] == 2
        assert fp_ops.SPACE.default_config(p, 1, props)["warps"] * props.warp_size == 128
