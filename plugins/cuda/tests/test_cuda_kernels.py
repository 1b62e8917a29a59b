"""Every Triton kernel path against the reference dequantization.

Without a GPU this runs under TRITON_INTERPRET=1 on CPU tensors (see conftest.py), with
small shapes; on a CUDA machine the same cases run compiled on the GPU (bf16 too).
"""

import re

import pytest
import torch

from quantlinear import LayerSpec, Scheme
from quantlinear.benchutil import random_int_weights
from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

from cuda_testutil import DEV, GPU, TOL, rel_err

DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if GPU else [])

GEMV = {"kernel": "gemv", "BM": 4, "BN": 32, "split_k": 1, "warps": 4, "stages": 2}
GEMV_SPLIT = {"kernel": "gemv", "BM": 1, "BN": 16, "split_k": 4, "warps": 4, "stages": 2}
DOT_SWAP = {"kernel": "dot", "BM": 16, "BN": 32, "split_k": 1, "swap": True, "scale_w": False, "warps": 4, "stages": 2}
DOT_SPLIT = {"kernel": "dot", "BM": 32, "BN": 16, "split_k": 2, "swap": False, "scale_w": False, "warps": 4, "stages": 2}
DOT_SCALE_W = {"kernel": "dot", "BM": 16, "BN": 32, "split_k": 1, "swap": False, "scale_w": True, "warps": 4, "stages": 2}
DQMM = {"kernel": "dqmm", "BN": 32, "tpp": 2}
GEMV1 = {"kernel": "gemv", "BM": 1, "BN": 32, "split_k": 1, "warps": 4, "stages": 2}
DOT_SWAP_SCALE_W_SPLIT = {"kernel": "dot", "BM": 16, "BN": 64, "split_k": 2, "swap": True, "scale_w": True, "warps": 4, "stages": 2}


def make_layer(bits, group, sym, K, N, dtype, bias=False, seed=0, fmt="gptq_v2"):
    sc = Scheme(bits=bits, group_size=group, sym=sym)
    w = random_int_weights(K, N, sc, seed=seed)
    spec = LayerSpec(sc, fmt, K, N, bias=bias, dtype=dtype, device=DEV)
    b = (torch.randn(N, generator=torch.Generator().manual_seed(seed)) * 0.1).to(dtype) if bias else None
    layer = TritonWNA16Linear.from_weights(spec, w, b)
    W = w.dequantize(spec.group_size).to(DEV)
    return layer, W, (b.float().to(DEV) if bias else None)


def run_cfg(layer, x, cfg, poison=True):
    from quantlinear_triton.kernels import launch

    m = layer.meta
    out = None
    if poison:
        out = torch.full((x.shape[0], layer.out_features), float("nan"), dtype=x.dtype, device=x.device)
    return launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, m.bits, m.slab, m.group_size, m.in_features,
                  layer.zero_point, cfg, out=out)


def reference(x, W, b):
    y = x.float() @ W.t()
    return y + b if b is not None else y


def rand_x(M, K, dtype, seed=1):
    return torch.randn(M, K, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEV)


# (bits, group, sym, K, N): K not a multiple of the tile in some cases (padding), N not a
# multiple of the block in others (masking).
CASES = [
    (4, 128, True, 256, 64),
    (4, 32, False, 256, 96),
    (4, -1, False, 224, 64),
    (4, 64, True, 192, 64),
    (8, 128, False, 256, 64),
    (8, -1, True, 128, 96),
    (3, 64, True, 320, 64),
    (3, 128, False, 256, 96),
    (2, 32, False, 224, 64),
    (2, -1, True, 256, 64),
    (4, 128, True, 256, 72),  # N not a multiple of 16: the word layout's last row group is short (.packing)
    (8, 128, False, 256, 40),
]


@pytest.mark.parametrize("bits,group,sym,K,N", CASES)
def test_all_paths_fp16(bits, group, sym, K, N):
    layer, W, b = make_layer(bits, group, sym, K, N, torch.float16, bias=(bits == 4 and sym) or bits == 3, seed=bits + K)
    for M, cfg in [(1, GEMV_SPLIT), (2, GEMV1), (3, GEMV), (3, DOT_SWAP), (33, DOT_SPLIT), (33, DOT_SCALE_W),
                   (3, DOT_SWAP_SCALE_W_SPLIT), (5, DQMM)]:
        x = rand_x(M, K, torch.float16, seed=M)
        err = rel_err(run_cfg(layer, x, cfg), reference(x, W, b))
        assert err < TOL[torch.float16], (cfg, M, err)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float16])
@pytest.mark.parametrize("bits,group,sym", [(4, 128, False), (8, -1, True), (3, 32, True)])
def test_other_dtypes(dtype, bits, group, sym):
    K, N = 256, 64
    layer, W, b = make_layer(bits, group, sym, K, N, dtype, bias=True, seed=7)
    for M, cfg in [(1, GEMV), (1, GEMV_SPLIT), (5, DOT_SWAP), (17, DOT_SPLIT), (17, DOT_SCALE_W), (4, DQMM)]:
        x = rand_x(M, K, dtype, seed=M)
        err = rel_err(run_cfg(layer, x, cfg), reference(x, W, b))
        assert err < TOL[dtype], (cfg, M, err)


def test_layer_forward_default_dispatch():
    """The layer picks a config per M itself (deterministic defaults with tuning off)."""
    layer, W, b = make_layer(4, 64, False, 256, 64, torch.float16, bias=True, seed=11)
    for M in (1, 3, 33):
        x = rand_x(M, 256, torch.float16, seed=M)
        y = layer(x)
        assert y.shape == (M, 64) and y.dtype == torch.float16
        assert rel_err(y, reference(x, W, b)) < TOL[torch.float16]
    # leading dims and a dtype cast go through the base class
    x3 = rand_x(6, 256, torch.float32, seed=3).view(2, 3, 256)
    y3 = layer(x3)
    assert y3.shape == (2, 3, 64) and y3.dtype == torch.float32
    assert rel_err(y3.view(6, 64), reference(x3.view(6, 256).half(), W, b)) < TOL[torch.float16]


def test_split_k_counters_survive_changing_splits():
    """Split-K tile counters go back to zero after every launch, whatever the split: any
    sequence of splits (including ones that do not divide the K tiles) must stay correct."""
    from quantlinear_triton.kernels import counters

    K = 7 * 256  # 7 K tiles of 4-bit codes: split 8 becomes 7 splits of one tile, split 4 becomes 4
    layer, W, _ = make_layer(4, 32, True, K, 64, torch.float16, seed=13)
    x = rand_x(2, K, torch.float16)
    ref = reference(x, W, None)
    for split in (8, 4, 2, 1, 8, 3, 4):
        cfg = dict(GEMV_SPLIT, split_k=split, BM=2)
        assert rel_err(run_cfg(layer, x, cfg), ref) < TOL[torch.float16], split
        cfg = dict(DOT_SPLIT, split_k=split)
        assert rel_err(run_cfg(layer, x, cfg), ref) < TOL[torch.float16], split
        assert int(counters(x.device)[:64].abs().sum()) == 0, split


def test_act_order_layer():
    """Act-order (g_idx) layers: the base class permutes inputs; groups become contiguous."""
    K, N, g = 256, 64, 64
    sc = Scheme(bits=4, group_size=g, sym=False)
    w = random_int_weights(K, N, sc, seed=17)
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(1))
    w.g_idx = (perm // g).to(torch.int32)
    spec = LayerSpec(sc, "gptq", K, N, dtype=torch.float16, device=DEV, act_order=True)
    layer = TritonWNA16Linear.from_weights(spec, w)
    W = w.dequantize(g).to(DEV)
    x = rand_x(3, K, torch.float16)
    assert rel_err(layer(x), reference(x, W, None)) < TOL[torch.float16]


def test_prepare_keeps_no_float_weight():
    layer, _, _ = make_layer(4, 128, True, 256, 64, torch.float16)
    floats = [n for n, t in layer.named_buffers() if t is not None and t.is_floating_point() and t.numel() >= 256 * 64 // 8]
    assert floats == []
    assert layer.w_zeros is None and layer.zero_point == 8.0
    assert layer.w_slab.dtype == torch.int32 and layer.w_slab.numel() * 4 == 256 * 64 // 2
    assert layer.packed_bytes() == 256 * 64 // 2 + 2 * 64 * 2


@pytest.mark.parametrize("bits,group,sym,K", [(4, 128, False, 256), (3, 32, True, 224), (8, -1, False, 128)])
def test_dequantize_kernel(bits, group, sym, K):
    from quantlinear_triton.kernels import dequantize

    layer, W, _ = make_layer(bits, group, sym, K, 64, torch.float16, seed=bits)
    m = layer.meta
    got = dequantize(layer.w_slab, layer.w_scales, layer.w_zeros, m.bits, m.slab, m.group_size, m.in_features, layer.zero_point,
                     torch.float32, BN=16, tpp=1)
    assert torch.equal(got, W)


GEMV16 = {"kernel": "gemv16", "BN": 32, "split_k": 1, "warps": 4, "stages": 2}


@pytest.mark.parametrize("bits,group,sym,K,N,bias", [(4, 128, True, 512, 64, True), (4, 128, False, 384, 96, False), (4, -1, False, 224, 64, True),
                                                      (4, 256, True, 512, 80, False), (4, 64, False, 256, 64, True), (8, 128, True, 256, 64, True),
                                                      (8, 64, False, 192, 64, False), (2, -1, False, 576, 64, True), (3, 128, True, 320, 64, False),
                                                      (8, 32, True, 256, 64, False)])
def test_gemv16_paired_fp16(bits, group, sym, K, N, bias):
    """The paired-fp16 GEMV: 2/4/8-bit, fp16, runs of VPW/2 slabs in one group (others fall back to the general GEMV)."""
    from quantlinear_triton.kernels import gemv16_fits

    layer, W, b = make_layer(bits, group, sym, K, N, torch.float16, bias=bias, seed=K + N)
    m = layer.meta
    assert gemv16_fits(bits, m.slab, m.group_size, K, torch.float16) == ((bits, group) not in ((4, 64), (3, 128), (8, 32)))
    for M, cfg in [(1, GEMV16), (1, dict(GEMV16, split_k=2, BN=16)), (3, dict(GEMV16, split_k=3))]:
        x = rand_x(M, K, torch.float16, seed=M)
        err = rel_err(run_cfg(layer, x, cfg), reference(x, W, b))
        assert err < TOL[torch.float16], (cfg, M, err)


DOT16 = {"kernel": "dot16", "BM": 16, "BN": 32, "split_k": 1, "swap": True, "warps": 4, "stages": 2}


@pytest.mark.parametrize("group,sym,K,N,bias", [(128, True, 512, 64, True), (128, False, 384, 96, False), (-1, False, 224, 64, True),
                                                 (64, False, 256, 64, True)])
def test_dot16_paired_fp16(group, sym, K, N, bias):
    """The paired-fp16 tensor-core kernel (scaled fp16 weights); group 64 falls back to ``dot``."""
    layer, W, b = make_layer(4, group, sym, K, N, torch.float16, bias=bias, seed=K + N + 1)
    for M, cfg in [(3, DOT16), (33, dict(DOT16, swap=False, BM=32, BN=16, split_k=2)), (17, dict(DOT16, split_k=3))]:
        x = rand_x(M, K, torch.float16, seed=M)
        err = rel_err(run_cfg(layer, x, cfg), reference(x, W, b))
        assert err < TOL[torch.float16], (cfg, M, err)


OLD_GEMV16_ROWS = {"kernel": "gemv16", "BM": 4, "BN": 16, "split_k": 1, "warps": 4, "stages": 2}


def test_gemv16_rows_config_falls_back_to_gemv():
    """gemv16 runs one row of x per program: a configuration with BM > 1 (e.g. from an old tuning cache) runs
    the general GEMV with the same tiles; BM = 1 keeps the single-row kernel and its static key."""
    from quantlinear_triton.kernels import _static_args

    one = _static_args(dict(OLD_GEMV16_ROWS, BM=1), 4, 32, 128, 512, False, False, False, torch.float16)
    assert one[1] == "gemv16" and "BM" not in one[-1] and one[9] is None
    for dtype in (torch.float16, torch.float32):
        fb = _static_args(OLD_GEMV16_ROWS, 4, 32, 128, 512, False, False, dtype == torch.float32, dtype)[9]
        assert fb == dict(OLD_GEMV16_ROWS, kernel="gemv", BM=4)


@pytest.mark.parametrize("bits,group,sym,K,N,bias", [(4, 128, True, 512, 64, True), (4, -1, False, 224, 80, False), (8, 128, True, 256, 64, False)])
def test_gemv16_rows_config_runs(bits, group, sym, K, N, bias):
    """An old gemv16 configuration with BM > 1 still computes the right product (through ``gemv``)."""
    layer, W, b = make_layer(bits, group, sym, K, N, torch.float16, bias=bias, seed=K + N + 2)
    for M, cfg in [(2, OLD_GEMV16_ROWS), (5, dict(OLD_GEMV16_ROWS, split_k=2)), (3, dict(OLD_GEMV16_ROWS, BM=8))]:
        x = rand_x(M, K, torch.float16, seed=M)
        err = rel_err(run_cfg(layer, x, cfg), reference(x, W, b))
        assert err < TOL[torch.float16], (cfg, M, err)


def test_split_k_workspace_is_persistent(monkeypatch):
    """Split-K partials go to one persistent buffer per device (no allocation per call), grown when needed; the
    buffers it replaced stay alive (a CUDA graph captured earlier may still use them)."""
    from quantlinear_triton import kernels as K

    layer, W, b = make_layer(4, 128, True, 512, 64, torch.float16, seed=3)
    # (after the layer: on a GPU its constructor reserves the device's workspace at the real minimum size)
    monkeypatch.setattr(K._WS, "current", {})
    monkeypatch.setattr(K._WS, "retired", [])
    monkeypatch.setattr(K, "WORKSPACE_MIN", 64)
    x = rand_x(1, 512, torch.float16)
    di = x.get_device()
    cfg = dict(GEMV16, split_k=2, BN=16)
    assert rel_err(run_cfg(layer, x, cfg), reference(x, W, b)) < TOL[torch.float16]
    buf = K._WS.current[di]
    assert buf.numel() == 128 and buf.dtype == torch.float32  # 2 splits x 1 row x 64 outputs, rounded up
    run_cfg(layer, x, cfg)
    assert K._WS.current[di] is buf and not K._WS.retired
    x5 = rand_x(5, 512, torch.float16)
    for c in (dict(GEMV, BN=16, split_k=2), dict(DOT16, split_k=2)):  # 2 x 5 x 64 = 640 elements: grows to 1024
        assert rel_err(run_cfg(layer, x5, c), reference(x5, W, b)) < TOL[torch.float16], c
    assert K._WS.current[di].numel() == 1024 and K._WS.retired == [buf]


# ---- bf16 activations in the paired GEMV ---------------------------------------------------------------------
@pytest.mark.parametrize("bits,group,sym,K,N,bias", [(4, 128, True, 512, 64, True), (4, 128, False, 384, 96, False),
                                                      (4, -1, False, 224, 64, True), (2, -1, False, 576, 64, True),
                                                      (2, 256, True, 512, 80, False), (4, 64, True, 256, 64, False),
                                                      (8, 128, True, 256, 64, False)])
def test_gemv16_bf16(bits, group, sym, K, N, bias):
    """gemv16 with bf16 activations (2/4-bit codes; 8-bit and groups shorter than VPW/2 slabs fall back to ``gemv``):
    the sums against an fp32 output are within 1e-4 of the fp32 reference (compiled: bf16x2 decode, fp32 products;
    interpreter: the same schedule in fp32), the bf16 output within the bf16 tolerance."""
    from quantlinear_triton.kernels import _static_args, gemv16_fits, launch

    layer, W, b = make_layer(bits, group, sym, K, N, torch.bfloat16, bias=bias, seed=K + N + 5)
    m = layer.meta
    fits = gemv16_fits(bits, m.slab, m.group_size, K, torch.bfloat16)
    assert fits == ((bits, group) not in ((4, 64), (8, 128)))
    for M, cfg in [(1, GEMV16), (1, dict(GEMV16, split_k=2, BN=16)), (3, dict(GEMV16, split_k=3)), (1, dict(GEMV16, pair=False))]:
        st = _static_args(cfg, bits, m.slab, m.group_size, K, layer.w_zeros is not None, bias, False, torch.bfloat16)
        assert (st[9] is None) == fits and st[1] == "gemv16" and (st[-1].get("BF16") or not fits)
        x = rand_x(M, K, torch.bfloat16, seed=M + 7)
        y32 = torch.full((M, N), float("nan"), device=DEV)
        launch(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, m.bits, m.slab, m.group_size, K, layer.zero_point, cfg, out=y32)
        ref = reference(x, W, b)
        assert rel_err(y32, ref) < 1e-4, (cfg, M, rel_err(y32, ref))
        assert rel_err(run_cfg(layer, x, cfg), ref) < TOL[torch.bfloat16], (cfg, M)


def test_gemv16_fits_and_dot16_by_dtype():
    from quantlinear_triton.kernels import _bf2_magic, dot16_fits, gemv16_fits

    for bits in (2, 4, 8):
        assert gemv16_fits(bits, 32, 256, 4096, torch.float16)
        assert gemv16_fits(bits, 32, 256, 4096, torch.bfloat16) == (bits != 8)
        assert not gemv16_fits(bits, 32, 256, 4096, torch.float32)
    assert dot16_fits(4, 32, 128, 4096, torch.float16) and not dot16_fits(4, 32, 128, 4096, torch.bfloat16)
    # the bf16 pair -(128 + z): 0xC308 for the 4-bit symmetric zero 8 (both halves), 0xC300 for 0
    assert _bf2_magic(8.0) & 0xFFFFFFFF == 0xC308C308 and _bf2_magic(0.0) & 0xFFFFFFFF == 0xC300C300
    assert _bf2_magic(2.0) & 0xFFFFFFFF == 0xC302C302 and _bf2_magic(0.5) is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv16_launch_names_every_constexpr(dtype):
    """The direct launcher (quantlinear_triton.launch) passes the constexprs by parameter position: a launch must name
    every one of the kernel's constexprs (a defaulted one left out fails there, not under the interpreter)."""
    from quantlinear_triton import kernels as tk

    log = []
    saved = tk._fast.launch
    tk._fast.launch = lambda fn, grid, tensors, ints, floats, consts, key, opts, out=None: log.append(
        (fn, len(tensors) + len(ints) + len(floats), consts))
    try:
        for cfg in (GEMV16, dict(GEMV16, split_k=2), dict(GEMV16, pair=False)):
            tk.launch(torch.zeros(1, 512, dtype=dtype), torch.zeros(64, 64, dtype=torch.int32), torch.ones(4, 64, dtype=torch.float16), None,
                      None, 4, 32, 128, 512, 8.0, cfg, out=torch.empty(1, 64, dtype=dtype))
    finally:
        tk._fast.launch = saved
    for fn, n_runtime, consts in log:
        assert fn is tk._gemv16_kernel and set(consts) == set(fn.arg_names[n_runtime:]), (sorted(consts), fn.arg_names[n_runtime:])
        assert consts["BF16"] == (dtype == torch.bfloat16)


def compile_gemv16(bits: int, dtype: torch.dtype, has_zeros: bool, cap: int, cfg: dict | None = None) -> dict:
    """Compile gemv16 (ASM on) for ``sm<cap>`` the way ``launch`` would launch it; run with TRITON_INTERPRET off."""
    import triton
    from triton.backends.compiler import GPUTarget

    from quantlinear_triton import aot
    from quantlinear_triton import kernels as tk

    cfg = cfg or dict(GEMV16, split_k=2)
    K, N = 4096, 256
    g = 128 if bits >= 4 else 256  # runs of VPW/2 slabs in one group
    KW = K // (32 // bits)
    q = torch.zeros(N, KW, dtype=torch.int32)
    s = torch.ones(K // g, N, dtype=torch.float16)
    z = torch.zeros(K // g, N, dtype=torch.uint8) if has_zeros else None
    log = []
    saved = tk._fast.launch
    tk._fast.launch = lambda fn, grid, tensors, ints, floats, consts, key, opts, out=None: log.append((fn, tensors, ints, floats, consts, opts))
    try:
        tk.launch(torch.zeros(1, K, dtype=dtype), q, s, z, None, bits, 32, g, K, 0.0 if has_zeros else float(1 << (bits - 1)), cfg,
                  out=torch.empty(1, N, dtype=dtype))
    finally:
        tk._fast.launch = saved
    (fn, tensors, ints, floats, consts, opts), = log
    consts = dict(consts, ASM=True)
    consts.setdefault("BF16", False)
    # (aot.source gives pointers and ints divisible by 16 the hints the JIT's specialization gives them, KW included)
    src, opts = aot.source(fn, (*tensors, *ints, *floats), {**consts, **opts}, tuple(opts))
    c = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=opts)
    ptx = c.asm["ptx"]
    return {"bits": bits, "dtype": str(dtype), "cap": cap, "zeros": has_zeros, "bf16x2_fma": ptx.count("fma.rn.bf16x2"),
            "f16x2_fma": ptx.count("fma.rn.f16x2"), "cubin": len(c.asm.get("cubin", b"")), "bf16": consts.get("BF16", False),
            "v4": len(re.findall(r"ld\.global[^\n]*\.v4", ptx))}


BF16_COMPILE_JOBS = [(4, "bfloat16", False, 90), (4, "bfloat16", True, 90), (2, "bfloat16", False, 80), (4, "bfloat16", True, 80),
                     (4, "float16", False, 90)]


def test_gemv16_bf16_compiles_for_sm80_and_sm90():
    """The bf16x2 inline assembly of gemv16 assembles (ptxas) for sm_80 and sm_90; fp16 keeps its fp16x2 path; the
    weight words come in 16-byte loads (the grouped layout's address math keeps their alignment known)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "QUANTLINEAR_CUDA_CPU_INTERPRET")}
    r = subprocess.run([sys.executable, str(Path(__file__)), "compile-gemv16"], env=env, capture_output=True, text=True, timeout=300,
                       cwd=str(Path(__file__).parent))
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(res) == len(BF16_COMPILE_JOBS)
    for (bits, dt, zeros, cap), got in zip(BF16_COMPILE_JOBS, res):
        assert got["cubin"] > 0 and got["v4"] > 0, got
        if dt == "bfloat16":
            assert got["bf16"] and got["bf16x2_fma"] > 0 and got["f16x2_fma"] == 0, got
        else:
            assert got["f16x2_fma"] > 0 and got["bf16x2_fma"] == 0, got


if __name__ == "__main__":  # the compile check's subprocess (TRITON_INTERPRET off)
    import json
    import sys

    if sys.argv[1:] == ["compile-gemv16"]:
        for bits, dt, zeros, cap in BF16_COMPILE_JOBS:
            print(json.dumps(compile_gemv16(bits, getattr(torch, dt), zeros, cap)), flush=True)
