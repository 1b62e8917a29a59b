"""The Hopper prefill kernel (``wg``, Gluon) without a GPU: where it applies, what runs where it cannot, and its sm_90a
machine code (cross-compiled; Triton ships ptxas).  Its numerics are tested on an H100 (test_cuda_wg_gpu.py)."""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from quantlinear_triton import kernels_wg as kw

from cuda_testutil import GPU, compile_in_subprocess, rel_err
from test_cuda_kernels import make_layer, rand_x, reference, run_cfg


def test_fits_4bit_slabs_with_128_multiple_groups():
    f16, bf16 = torch.float16, torch.bfloat16
    if not kw.HAS_WG:
        pytest.skip("needs Triton's Gluon with its Hopper module")
    assert kw.fits(4, 32, 128, 4096, f16) and kw.fits(4, 32, 256, 4096, bf16) and kw.fits(4, 32, 4096, 4096, f16)
    assert kw.fits(4, 32, 128, 1000, f16)  # a ragged last tile: TMA fills the channels past K with zeros
    assert not kw.fits(4, 32, 64, 4096, f16)  # a pair's halves are 128 channels apart: one group per half-tile
    assert not kw.fits(4, 32, 384, 4608, f16)  # 3 x 128: no power of two
    assert not kw.fits(4, 32, 128, 4100, f16)  # x's row stride must be a multiple of 16 bytes for TMA
    assert not kw.fits(8, 32, 128, 4096, f16) and not kw.fits(2, 32, 128, 4096, f16)
    assert not kw.fits(4, 16, 128, 4096, f16) and not kw.fits(4, 32, 128, 4096, torch.float32)


def test_cpu_tensors_do_not_run_it():
    x = torch.zeros(256, 512, dtype=torch.float16)
    assert not kw.runs(x, torch.zeros(4, 8, dtype=torch.float16))


@pytest.mark.skipif(GPU, reason="the fallback path is the CPU / interpreter one")
@pytest.mark.parametrize("sym,bias,dtype", [(True, False, torch.float16), (False, True, torch.float16)])
def test_a_wg_configuration_runs_tc_where_it_cannot(sym, bias, dtype):
    """Off Hopper (here: the interpreter) a stored ``wg`` configuration still computes the layer, with the tc kernel."""
    from quantlinear_triton import kernels_tc

    layer, W, b = make_layer(4, 128, sym, 512, 96, dtype, bias=bias)
    for M in (1, 70):
        x = rand_x(M, 512, dtype, seed=M)
        y = run_cfg(layer, x, {"kernel": "wg", "BM": 256, "warps": 8, "stages": 4, "planes": 1, "split_k": 2})
        assert rel_err(y, reference(x, W, b)) < 2e-3
        tc = dict(kernels_tc.default_config(M, 96, dtype), kernel="tc")
        assert torch.equal(y, run_cfg(layer, x, tc))


def test_bad_configurations_are_refused():
    if not kw.HAS_WG:
        pytest.skip("needs Triton's Gluon with its Hopper module")
    x = torch.zeros(256, 512, dtype=torch.float16)
    w = torch.zeros(64, 64, dtype=torch.int32)
    s = torch.zeros(4, 64, dtype=torch.float16)
    for cfg in ({"BM": 512}, {"planes": 4}, {"warps": 2}, {"tail": 2}):
        with pytest.raises(ValueError, match="kernels_wg: no configuration"):
            kw.launch_wg(x, w, s, None, None, 128, 8.0, cfg)


#: (constexprs, warps) the compile check builds for sm_90a
COMPILE_JOBS = [(dict(BM=256, STAGES=4, P=1, HAS_ZEROS=False, HAS_BIAS=False, SPLIT=1, BF16=False), 8),
                (dict(BM=128, STAGES=4, P=2, HAS_ZEROS=True, HAS_BIAS=True, SPLIT=2, BF16=False), 8),
                (dict(BM=256, STAGES=3, P=2, HAS_ZEROS=True, HAS_BIAS=True, SPLIT=3, BF16=True), 8),
                (dict(BM=64, STAGES=4, P=1, HAS_ZEROS=False, HAS_BIAS=True, SPLIT=1, BF16=True), 8),
                (dict(BM=256, STAGES=3, P=1, HAS_ZEROS=False, HAS_BIAS=False, SPLIT=2, BF16=False), 4)]


def compile_wg(consts: dict, warps: int) -> dict:
    """Compile ``_wg_kernel`` for sm_90a as :func:`kernels_wg.launch_wg` would launch it, and assemble it with ptxas."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    dt = torch.bfloat16 if consts["BF16"] else torch.float16
    x = torch.empty(512, 4096, dtype=dt)
    box = [consts["BM"], 32 * consts["P"]]
    desc = kw.TensorDescriptor(x, list(x.shape), list(x.stride()), box, kw._box_layout(consts["BM"], consts["P"], consts["BF16"]))
    act = "*bf16" if consts["BF16"] else "*fp16"
    types = dict(x_desc=mangle_type(desc), w_ptr="*i32", s_ptr="*fp16", z_ptr="*u8", b_ptr=act, y_ptr=act, ws_ptr="*fp32",
                 cnt_ptr="*i32")
    sig, attrs = {}, {}
    for i, n in enumerate(kw._wg_kernel.arg_names):
        if n in consts or n == "GROUP_M":
            sig[n] = "constexpr"
        elif n in types:
            sig[n] = types[n]
            if types[n].startswith("*"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[n] = "i32"
            if n in ("N", "K", "KW"):  # (as the launch specializes them for every benchmark shape: multiples of 16)
                attrs[(i,)] = [["tt.divisibility", 16]]
    c = triton.compile(GluonASTSource(kw._wg_kernel, sig, constexprs=dict(consts, GROUP_M=8), attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
    ptx = c.asm["ptx"]
    out = {"wgmma": ptx.count("wgmma.mma_async"), "tma": ptx.count("cp.async.bulk.tensor"), "local": ".local" in ptx,
           "ldmatrix": ptx.count("ldmatrix"), "lop3": len(re.findall(r"lop3\.b32 t, t, 0x000F000F", ptx)),
           "cubin": len(c.asm.get("cubin", b""))}
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90) if get_ptxas.__code__.co_argcount else get_ptxas()
    ptxas = getattr(ptxas, "path", ptxas)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "k.ptx").write_text(ptx)
        r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", str(Path(d, "k.ptx")), "-o", str(Path(d, "k.cubin"))],
                           capture_output=True, text=True, timeout=300)
    info = r.stdout + r.stderr
    out["ptxas_rc"] = r.returncode
    out["spills"] = [int(v) for v in re.findall(r"(\d+) bytes spill stores", info)]
    out["serialized"] = "serialized" in info
    out["regs"] = [int(v) for v in re.findall(r"Used (\d+) registers", info)]
    return out


def test_wg_cross_compiles_for_sm90a():
    """Per 256-channel slab tile: 16 wgmma (4 planes x 2 halves x 2 k16) with the dequantized weights as register A
    operands (no ldmatrix: they never touch shared memory), one mask-or per word and plane, TMA for the activations;
    no spills and no wgmma serialization (ptxas C7513) at up to 255 registers."""
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    pytest.importorskip("triton.backends.nvidia.compiler")
    res = compile_in_subprocess(str(Path(__file__)), "compile-wg", timeout=900)
    assert len(res) == len(COMPILE_JOBS)
    for (consts, warps), got in zip(COMPILE_JOBS, res):
        assert got["cubin"] > 0 and not got["local"] and got["ldmatrix"] == 0, (consts, got)
        assert got["wgmma"] == 16 and got["tma"] >= 2, (consts, got)
        assert got["lop3"] == 64, (consts, got)  # one per word and plane: 16 words a lane (2 rows x 8), 4 planes
        assert got["ptxas_rc"] == 0 and got["spills"] == [0] and not got["serialized"], (consts, got)


if __name__ == "__main__":  # the compile check's subprocess
    if sys.argv[1:] == ["compile-wg"]:
        for consts, warps in COMPILE_JOBS:
            print(json.dumps(compile_wg(consts, warps)), flush=True)


@pytest.mark.parametrize("zeros,bias,dtype,split", [(False, False, torch.float16, 1), (True, True, torch.bfloat16, 3)])
def test_every_wg_launch_can_take_the_direct_launcher(monkeypatch, zeros, bias, dtype, split):
    """Runtime arguments (the TMA descriptor keyed like its tensor) then every constexpr: an eager prefill call skips
    ``JITFunction.run``'s 25-45 us of binding and specialization."""
    if not kw.HAS_WG:
        pytest.skip("needs Triton's Gluon with its Hopper module")
    from quantlinear_triton import launch as fl

    seen = []
    monkeypatch.setattr(kw._fast, "launch", lambda fn, grid, tensors, ints, floats, consts, skey, opts, out: seen.append(
        (fn, grid, tensors, ints, floats, consts, skey)))
    N, K = 256, 2048
    x = torch.zeros(300, K, dtype=dtype)
    s = torch.ones(K // 128, N, dtype=torch.float16)
    z = torch.zeros(K // 128, N, dtype=torch.uint8) if zeros else None
    b = torch.zeros(N, dtype=dtype) if bias else None
    kw.launch_wg(x, torch.zeros(N, K // 8, dtype=torch.int32), s, z, b, 128, 8.0, {"BM": 128, "planes": 2, "split_k": split})
    (fn, grid, tensors, ints, floats, consts, skey), = seen
    assert fl._check_order(fn, tensors, ints, floats, consts), sorted(consts)
    assert grid == (3 * 2 * split, ) and tensors[0].dtype == dtype and tensors[0].block_shape == [128, 64]
    assert consts["SPLIT"] == split and consts["HAS_ZEROS"] == zeros and consts["BF16"] == (dtype == torch.bfloat16)



def test_a_small_last_wave_is_split_in_two_along_k():
    """Whole waves run whole tiles; the tiles of a last wave at most half full run in two halves of K."""
    # 4096 x 14336 at M = 1024: 448 tiles of 256 x 128 on 132 slots -> 396 whole, the last 52 in halves of 8 slab tiles
    assert kw.split_schedule(448, 16, 1, 132, True) == (396, 52, 2, 8)
    # a last wave of 104 (more than half): halves would take two rounds, no faster than whole tiles
    assert kw.split_schedule(896, 32, 1, 132, True) == (896, 0, 1, 32)
    # a short K (fewer than TAIL_MIN_TILES slab tiles), one wave or less, whole waves only, or the tail turned off
    assert kw.split_schedule(160, 6, 1, 132, True) == (160, 0, 1, 6)
    assert kw.split_schedule(100, 16, 1, 132, True) == (100, 0, 1, 16)
    assert kw.split_schedule(264, 16, 1, 132, True) == (264, 0, 1, 16)
    assert kw.split_schedule(448, 16, 1, 132, False) == (448, 0, 1, 16)
    # an odd K range: halves of 9 and 8 slab tiles
    assert kw.split_schedule(140, 17, 1, 132, True) == (132, 8, 2, 9)


def test_split_k_splits_every_tile_without_empty_splits():
    assert kw.split_schedule(64, 16, 2, 132, True) == (0, 64, 2, 8)
    assert kw.split_schedule(64, 5, 4, 132, True) == (0, 64, 3, 2)  # 5 slab tiles in 4: 2 + 2 + 1, three splits
    assert kw.split_schedule(64, 1, 4, 132, True) == (64, 0, 1, 1)


def test_resident_programs_follow_shared_memory_and_registers():
    assert kw.resident(256, 1, 4, 8, 0) == 1  # 128 KB of activation stages, up to 255 registers
    assert kw.resident(64, 2, 4, 8, 128) == 2  # 64 KB, a 128-register cap: two a multiprocessor
