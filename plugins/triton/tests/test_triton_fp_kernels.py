"""The float-scheme Triton kernels on their own: decode exactness, GEMV/dot paths, activation quantization.

Without a GPU they run in Triton's interpreter (the root conftest sets TRITON_INTERPRET=1) on CPU
tensors, in fp16/fp32 (the interpreter mis-loads bf16); with a GPU the same tests run compiled.
Shapes are small and odd on purpose: N not a multiple of the row block, K not a multiple of a tile.
"""

from dataclasses import replace

import pytest
import torch

from quantlinear import fpcodes, fpquant
from quantlinear.formats import FloatWeights
from quantlinear.scheme import PRESETS
from quantlinear_triton import fp_packing as P
from quantlinear_triton import fp_tune
from quantlinear_triton import tune as int_tune

GPU = torch.cuda.is_available()
DEV = torch.device("cuda") if GPU else torch.device("cpu")
TOL = {torch.float16: 2e-3, torch.float32: 1e-5, torch.bfloat16: 1.6e-2}


def fk():
    from quantlinear_triton import fp_kernels

    return fp_kernels


def weights(name: str, K: int, N: int, seed: int = 0) -> FloatWeights:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * 0.05
    w[:, ::7] *= 4.0
    return fpquant.quantize_float(w.to(torch.bfloat16), replace(PRESETS[name], act_bits=16), act_amax=3.0)


def packed(w: FloatWeights, fp8_elem: int = P.E4M3):
    meta, t = P.prepare_float(w, None, fp8_elem=fp8_elem)
    return meta, {k: (v.to(DEV) if v is not None else None) for k, v in t.items()}


def dequant(meta, t):
    return fk().dequantize(t["qweight"], t["scales"], t["row_scales"], meta.elem, meta.scale, meta.block, meta.in_features)


def rel_err(y, ref):
    y = y.float()
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ---- layout ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits,slab,K", [(4, 32, 352), (4, 16, 48), (8, 32, 200)])
def test_pack_round_trip(bits, slab, K):
    codes = torch.randint(0, 1 << bits, (9, K), generator=torch.Generator().manual_seed(K), dtype=torch.int32).to(torch.uint8)
    words = P.pack_slabs(codes, bits, slab)
    T = slab * 32 // bits
    kw = -(-K // T) * slab
    # 4-bit codes: whole 32-word units (16-word slabs in pairs) in 16-row groups, tile-major; 8-bit codes row-major
    assert words.dtype == torch.int32 and words.shape == (9, -(-kw // P.UNIT) * P.UNIT if bits == 4 else kw)
    assert torch.equal(P.unpack_slabs(words, bits, slab, K), codes)
    # word p of tile 0 holds channel j*slab + p at bit j*bits: one shift gives consecutive channels
    rm = P.row_major_slabs(words, bits)
    assert int(rm[0, 1]) & ((1 << bits) - 1) == int(codes[0, 1])
    assert (int(rm[0, 0]) >> bits) & ((1 << bits) - 1) == int(codes[0, slab])
    if bits == 4 and words.shape[1] > P.UNIT:  # 4-bit: rows in groups of 16 (here one short group of 9), each
        # tile-major by 32-word units: row 2's unit 1 starts at (1 * 9 + 2) * 32 of the flat words
        assert int(words.reshape(-1)[11 * P.UNIT]) == int(rm[2, P.UNIT])


def test_full_groups_are_in_load_order():
    """4-bit codes of a full group of 16 rows: each 32-word unit in the decode kernel's load order (row r's word p at
    256 (r // 8) + 16 (r % 8) + 128 (p // 16) + p % 16 of the group's unit run), NVFP4's 16-word slab pairs too."""
    for slab in (32, 16):
        codes = torch.randint(0, 16, (16, 512), generator=torch.Generator().manual_seed(slab), dtype=torch.int32).to(torch.uint8)
        words = P.pack_slabs(codes, 4, slab)
        rm = P.row_major_slabs(words, 4)
        flat = words.reshape(-1)
        for r, u, p in [(0, 0, 0), (3, 1, 17), (8, 0, 5), (15, 1, 31), (9, 0, 16)]:
            at = u * 16 * P.UNIT + 256 * (r // 8) + 16 * (r % 8) + 128 * (p // 16) + p % 16
            assert int(flat[at]) == int(rm[r, u * P.UNIT + p])


def test_prepare_keeps_encodings():
    w = weights("MXFP4", 256, 8)
    meta, t = P.prepare_float(w, None)
    assert (meta.elem, meta.scale, meta.block, meta.slab, meta.bits) == (P.E2M1, P.S_E8M0, 32, 32, 4)
    assert t["scales"].dtype == torch.uint8 and torch.equal(t["scales"], w.raw_scales.t())
    assert t["row_scales"] is None and t["qweight"].numel() * 4 == 256 * 8 // 2
    nv = weights("NVFP4", 64, 8)
    meta, t = P.prepare_float(nv, None)
    assert torch.equal(t["scales"], nv.raw_scales.view(torch.uint8).t())
    assert torch.equal(t["row_scales"], (1.0 / nv.global_scale).expand(8))
    fp8 = fpquant.quantize_float(torch.randn(8, 64), PRESETS["FP8_STATIC"], act_amax=3.0)
    meta, t = P.prepare_float(fp8, fpquant.act_quant_kind(PRESETS["FP8_STATIC"]))
    assert meta.act == P.A_FP8 and t["act_scale"].dtype == fp8.input_scale.dtype
    assert torch.equal(t["row_scales"], fp8.scales.reshape(8) * fp8.input_scale.float())  # input scale folded in


# ---- decoding: every code, every element kind, bit-exact with FloatWeights.dequantize -------------------
def _all_codes(element: str) -> torch.Tensor:
    if element in ("e2m1", "e0m4"):
        return torch.arange(16, dtype=torch.uint8)
    vals = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    return vals[torch.isfinite(fpcodes.decode_elements(vals, element))]  # checkpoints hold no NaN/inf bytes


@pytest.mark.filterwarnings("ignore:overflow encountered")  # 6 * 2**127 is inf, in the reference too
@pytest.mark.parametrize("element", ["e2m1", "e0m4", "e4m3", "e5m2"])
def test_decode_every_code_exact(element):
    codes = _all_codes(element)
    K = 64
    n = -(-codes.numel() // K)
    c = codes.repeat(n * K // codes.numel() + 1)[: n * K].view(n, K)
    c = torch.cat([c, c.flip(1)])  # every code at several positions of a word
    if element in ("e2m1", "e0m4"):  # MX: extreme E8M0 scales included (2**-127 subnormal, 2**127)
        e8 = torch.tensor([[0, 127], [1, 254], [100, 140]], dtype=torch.uint8)[torch.arange(c.shape[0]) % 3]
        w = FloatWeights(c, element, fpcodes.decode_e8m0(e8), 32, "e8m0", e8)
    else:  # per-row float scales
        s = torch.tensor([0.0078125, 3.0, 1.2e-3])[torch.arange(c.shape[0]) % 3].to(torch.bfloat16).float()
        w = FloatWeights(c, element, s.reshape(-1, 1), K, "float", s.clone())
    for mode in [P.E4M3, P.E4M3_NV] if element == "e4m3" else [P.E4M3]:
        meta, t = packed(w, mode)
        assert torch.equal(dequant(meta, t).cpu(), w.dequantize()), (element, mode)


@pytest.mark.skipif(GPU, reason="fp8e4b8 (e4m3fnuz) exists on ROCm gfx942 only; CUDA GPUs cannot compile it")
def test_decode_e4m3fnuz_bytes():
    """gfx942's native path: e4m3fn bytes converted to e4m3fnuz (-0 -> +0) decode to the e4m3fn values."""
    codes = _all_codes("e4m3")
    c = codes.repeat(2)[:256].view(2, 128)
    fnuz = torch.where(c == 0x80, torch.zeros_like(c), c)  # quantlinear_rocm.fp8.e4m3fn_to_e4m3fnuz on finite bytes
    s = torch.tensor([0.5, 0.01171875]).reshape(2, 1)
    ref = FloatWeights(c, "e4m3", s, 128, "float", s.reshape(2)).dequantize()
    meta, t = packed(FloatWeights(fnuz, "e4m3", s, 128, "float", s.reshape(2)), P.E4M3_B8)
    assert meta.elem == P.E4M3_B8 and torch.equal(dequant(meta, t).cpu(), ref)


def test_decode_nvfp4_in_reference_order():
    w = weights("NVFP4", 96, 24, seed=3)
    meta, t = packed(w)
    assert torch.equal(dequant(meta, t).cpu(), w.dequantize())  # (value / global_scale) * block_scale


# ---- GEMM paths ----------------------------------------------------------------------------------------
GEMV = {"kernel": "gemv", "BM": 1, "BN": 16, "split_k": 1, "warps": 4}
GEMV_SPLIT = {"kernel": "gemv", "BM": 1, "BN": 32, "split_k": 3, "warps": 4}
GEMV_ROWS = {"kernel": "gemv", "BM": 4, "BN": 16, "split_k": 2, "warps": 4}
DOT_SWAP = {"kernel": "dot", "BM": 16, "BN": 16, "split_k": 1, "swap": True, "warps": 4}
DOT_SPLIT = {"kernel": "dot", "BM": 16, "BN": 32, "split_k": 2, "swap": False, "warps": 4}
PATHS = [(1, GEMV), (1, GEMV_SPLIT), (3, GEMV_ROWS), (5, DOT_SWAP), (17, DOT_SPLIT)]
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if GPU else [])
# (preset, K, N): K leaves a partial last tile (padding, masked x); N not a multiple of BN
SHAPES = {"MXFP4": (352, 40), "MXINT4": (288, 24), "MXFP8": (160, 40), "NVFP4": (208, 40), "FPW8A16": (200, 24)}


def run(meta, t, x, cfg, bias=None):
    out = torch.full((x.shape[0], meta.out_features), float("nan"), dtype=x.dtype, device=x.device)  # poisoned
    return fk().launch(x, t["qweight"], t["scales"], t["row_scales"], bias, meta.elem, meta.scale, meta.block, cfg, out=out)


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_path_fp32(name):
    K, N = SHAPES[name]
    w = weights(name, K, N, seed=K)
    meta, t = packed(w)
    W = w.dequantize().to(DEV)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(1)).to(DEV)
    for M, cfg in PATHS:
        x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(DEV)
        b = bias if cfg is GEMV_ROWS or cfg is DOT_SPLIT else None
        ref = x @ W.t() + (b if b is not None else 0)
        assert rel_err(run(meta, t, x, cfg, b), ref) < TOL[torch.float32], (name, cfg)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.float32])
@pytest.mark.parametrize("name,fp8_elem", [("MXFP4", P.E4M3), ("NVFP4", P.E4M3), ("MXFP8", P.E4M3_NV), ("FPW8A16", P.E4M3)])
def test_half_paths(dtype, name, fp8_elem):
    K, N = SHAPES[name]
    w = weights(name, K, N, seed=1)
    meta, t = packed(w, fp8_elem)
    W = w.dequantize().to(DEV)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(2)).to(dtype).to(DEV)
    for M, cfg in [(1, GEMV_SPLIT), (5, DOT_SWAP), (17, DOT_SPLIT)]:
        x = torch.randn(M, K, generator=torch.Generator().manual_seed(M)).to(dtype).to(DEV)
        ref = x.float() @ W.t() + bias.float()
        assert rel_err(run(meta, t, x, cfg, bias), ref) < TOL[dtype], (name, cfg)


def test_split_k_counters_reset():
    from quantlinear_triton.kernels import counters

    K = 7 * 256  # 7 K tiles of 4-bit codes: splits that do not divide them
    w = weights("MXFP4", K, 32, seed=5)
    meta, t = packed(w)
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(0)).to(DEV)
    ref = x @ w.dequantize().to(DEV).t()
    for split in (8, 3, 1):
        for cfg in (dict(GEMV_SPLIT, split_k=split), dict(DOT_SPLIT, split_k=split)):
            assert rel_err(run(meta, t, x, cfg), ref) < TOL[torch.float32], cfg
            assert int(counters(x.device)[:64].abs().sum()) == 0, cfg


# ---- activation quantization: bit-exact with fpquant -----------------------------------------------------
def act_inputs(dtype, M=6, K=160):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(M, K, generator=g) * torch.exp(torch.randn(M, K, generator=g) * 2)  # wide dynamic range
    x[0, :32] = 0.0  # an all-zero block
    x[1, 32:48] = torch.tensor([2.0**k for k in range(-8, 8)])  # exact powers of two (exponent edges)
    x[2, 40:44] = 6.5e4 if dtype == torch.float16 else 1e6
    if dtype == torch.float32:
        x[3, 64:72] = 1e-41  # fp32 subnormals
    return x.to(dtype).to(DEV)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # fp16 outputs past 65504 are inf, as the reference's
@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.bfloat16])
def test_act_quant_mx_bit_exact(dtype):
    for K, block in ((176, 32), (72, 16)):  # a partial last block (zero-padded by the reference)
        x = act_inputs(dtype, K=K)
        for element, rceil in (("e2m1", False), ("e4m3", False), ("e2m1", True), ("e4m3", True)):
            code = (P.A_MX_E2M1 if element == "e2m1" else P.A_MX_E4M3) + (P.A_RCEIL if rceil else 0)
            y = fk().quantize_activations(x, code, block, None)
            ref = fpquant.mx_qdq(x.cpu(), element, block, rceil)
            assert y.dtype == dtype and torch.equal(y.cpu(), ref), (K, element, rceil, block)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.bfloat16])
def test_act_quant_nvfp4_bit_exact(dtype):
    x = act_inputs(dtype)
    for amax in (3.0, 1e-3, 4e4):
        gs = fpquant.nvfp4_global_scale(torch.tensor(amax))
        y = fk().quantize_activations(x, P.A_NVFP4, 16, gs.to(DEV))
        assert torch.equal(y.cpu(), fpquant.nvfp4_qdq(x.cpu(), gs, 16)), amax


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.bfloat16])
def test_act_quant_fp8_static_bit_exact(dtype):
    x = act_inputs(dtype)
    for sdt in (torch.bfloat16, torch.float16, torch.float32):  # the division runs in promote_types(x, scale)
        for amax in (3.0, 0.05):
            s = fpquant.fp8_scale(torch.tensor(amax)).reshape(1).to(sdt)
            y = fk().quantize_activations(x, P.A_FP8, 0, s.to(DEV))
            assert torch.equal(y.cpu(), fpquant.fp8_static_quantize_input(x.cpu(), s).to(dtype)), (sdt, amax)


# ---- launch configurations ----------------------------------------------------------------------------
class _Props:
    name, simulated, arch, sm_count = "toy", False, "sm90", 132


def test_default_table_and_keys(monkeypatch):
    space = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: p.sm_count)
    p = fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "float16", 4096, 4096)
    c1, c16, c4k = (space.default_config(p, m, _Props()) for m in (1, 16, 4096))
    assert c1["kernel"] == "gemv" and c1["BM"] == 1 and c1["split_k"] >= 1
    assert c16["kernel"] == "dot" and c16["swap"] and c16["BM"] == 16
    assert c4k["kernel"] == "dot" and (c4k["BM"], c4k["BN"]) == (128, 128)
    small = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: p.sm_count, max_shared=lambda p: 64 * 1024)
    assert fp_tune.dot_shared_bytes(p, small.default_config(p, 4096, _Props())["BM"], 128) <= 64 * 1024
    # keys never collide with the int kernels' in a shared cache file
    assert p.key(16).startswith("fp|e2m1|e8m0|s32|float16") and not int_tune.Problem(4, 32, 32, False, "float16", 4096, 4096).key(16).startswith("fp|")
    assert {c["kernel"] for c in space.candidates(p, 4, _Props())} == {"gemv", "dot"}
    assert not space.tuning_enabled()  # nothing measured yet: off unless asked
    monkeypatch.setenv("QUANTLINEAR_TOY_FP_TUNE", "1")
    assert space.tuning_enabled() and str(space.shipped_path("sm90")).endswith("fp-sm90.json")


# ---- paired-fp16 GEMV and dequantize-then-matmul -----------------------------------------------------------
GEMV16 = {"kernel": "gemv16", "BM": 1, "BN": 16, "split_k": 1, "warps": 4}
GEMV16_SPLIT = {"kernel": "gemv16", "BM": 1, "BN": 32, "split_k": 3, "warps": 4}
GEMV16_P1 = {"kernel": "gemv16", "BM": 1, "BN": 16, "split_k": 2, "warps": 4, "psum": 1}
DQMM = {"kernel": "dqmm", "BN": 32, "warps": 4}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32] + ([torch.bfloat16] if GPU else []))
@pytest.mark.parametrize("name,fp8_elem", [("MXFP4", P.E4M3), ("NVFP4", P.E4M3), ("MXINT4", P.E4M3), ("MXFP8", P.E4M3_NV),
                                           ("FPW8A16", P.E4M3_NV), ("FPW8A16", P.E4M3)])
def test_gemv16_and_dqmm(dtype, name, fp8_elem):
    """gemv16 (fp16: the paired decode; its fp32 fallback in the interpreter; other dtypes: the plain GEMV) and dqmm."""
    K, N = SHAPES[name]
    w = weights(name, K, N, seed=4)
    meta, t = packed(w, fp8_elem)
    W = w.dequantize().to(DEV)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(3)).to(dtype).to(DEV)
    for M, cfg, b in [(1, GEMV16, None), (1, GEMV16_SPLIT, bias), (3, GEMV16_SPLIT, None), (2, GEMV16_P1, bias), (1, DQMM, None),
                      (37, DQMM, bias)]:
        x = (torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * 3).to(dtype).to(DEV)
        ref = x.float() @ W.t() + (b.float() if b is not None else 0)
        assert rel_err(run(meta, t, x, cfg, b), ref) < TOL[dtype], (name, cfg)
        if cfg is DQMM:  # also with a fresh output (F.linear)
            y = fk().launch(x, t["qweight"], t["scales"], t["row_scales"], b, meta.elem, meta.scale, meta.block, cfg)
            assert rel_err(y, ref) < TOL[dtype], (name, cfg)
    assert fk().launch(x[:0], t["qweight"], t["scales"], t["row_scales"], None, meta.elem, meta.scale, meta.block, DQMM).shape == (0, N)


TC = {"kernel": "tc", "BN": 32, "BM": 16, "BK": 64, "warps": 4, "stages": 2, "split_k": 1}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32] + ([torch.bfloat16] if GPU else []))
@pytest.mark.parametrize("name,fp8_elem", [("MXFP4", P.E4M3), ("NVFP4", P.E4M3), ("MXINT4", P.E4M3), ("MXFP8", P.E4M3_NV),
                                           ("FPW8A16", P.E4M3)])
def test_tc_kernel(dtype, name, fp8_elem):
    """The large-M tensor-core kernel: odd N and M, K with a partial last tile, k-steps of 2..8 planes, split-K (the
    last split shorter), no prefetch, bias and row scales; the counters are left at zero."""
    from quantlinear_triton.kernels import counters

    K, N = SHAPES[name]
    w = weights(name, K, N, seed=5)
    meta, t = packed(w, fp8_elem)
    W = w.dequantize().to(DEV)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(4)).to(dtype).to(DEV)
    for M, over, b in [(19, {}, None), (5, {"BK": 256, "split_k": 3}, bias), (33, {"BK": 32, "prefetch": 0, "BM": 32}, bias),
                       (16, {"split_k": 2, "BN": 16}, None)]:
        x = (torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * 3).to(dtype).to(DEV)
        ref = x.float() @ W.t() + (b.float() if b is not None else 0)
        assert rel_err(run(meta, t, x, dict(TC, **over), b), ref) < TOL[dtype], (name, over)
        assert int(counters(x.device)[:64].abs().sum()) == 0
    assert fk().launch(x[:0], t["qweight"], t["scales"], t["row_scales"], None, meta.elem, meta.scale, meta.block, TC).shape == (0, N)


def test_tc_planes_per_step():
    from quantlinear_triton.kernels_tc import planes_per_step

    assert [planes_per_step(4, 32, bk) for bk in (32, 64, 128, 256, 512)] == [2, 2, 4, 8, 8]
    assert [planes_per_step(8, 32, bk) for bk in (64, 128, 256)] == [2, 4, 4]
    assert planes_per_step(4, 16, 128) == 8


def test_tc_is_the_hopper_default_for_65_to_512_rows():
    class Hopper(_Props):
        capability = (9, 0)

    class Ampere(_Props):
        capability, arch = (8, 0), "sm80"

    space = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: Hopper(), units=lambda p: p.sm_count, dqmm=True,
                            tc=lambda props: props.capability[0] == 9)
    mx = fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "float16", 4096, 4096)
    nv = fp_tune.FPProblem(P.E2M1, P.S_E4M3, 16, 4, "bfloat16", 4096, 4096)
    assert [space.default_config(mx, m, Hopper())["kernel"] for m in (1, 2, 16, 33, 64, 128, 512, 1024)] == \
        ["gemv", "tc", "tc", "tc", "tc", "tc", "tc", "dqmm"]
    c16, c64 = space.default_config(mx, 16, Hopper()), space.default_config(mx, 40, Hopper())
    c128, c256 = space.default_config(mx, 100, Hopper()), space.default_config(nv, 256, Hopper())
    assert (c16["BN"], c16["BM"], c64["BN"], c64["BM"]) == (128, 16, 128, 64)
    # split-K fills ~2.5 waves of 128-row programs up to 64 rows, ~1.2 beyond: 32 output tiles (N = 4096) -> 8, 4
    assert (c16["split_k"], c64["split_k"], c128["split_k"], c256["split_k"]) == (8, 8, 4, 4)
    wide = replace(mx, N=14336, K=4096)  # 112 tiles: 2 up to 64 rows, none beyond
    assert [space.default_config(wide, m, Hopper())["split_k"] for m in (16, 64, 128, 256)] == [2, 2, 1, 1]
    assert (space.default_config(nv, 3, Hopper())["BN"], space.default_config(nv, 3, Hopper())["BM"]) == (64, 16)
    assert (c128["BN"], c128["BM"], c128["BK"]) == (128, 128, 256)
    assert (c256["BN"], c256["BM"], c256["BK"]) == (128, 256, 128)
    assert space.default_config(nv, 128, Hopper())["BN"] == 64  # 16-channel blocks: 64 rows a program
    assert space.default_config(replace(mx, dtype="float32"), 256, Hopper())["kernel"] == "dqmm"
    assert space.default_config(mx, 256, Ampere())["kernel"] == "dqmm"  # measured on Hopper only
    assert space.default_config(mx, 16, Ampere())["kernel"] == "dot"
    assert "tc" in {c["kernel"] for c in space.candidates(mx, 256, Hopper())}
    assert "tc" in {c["kernel"] for c in space.candidates(mx, 4, Hopper())} and c16 in space.candidates(mx, 16, Hopper())
    assert "tc" not in {c["kernel"] for c in space.candidates(mx, 256, Ampere())}


def test_gemv16_split_k_counters_reset():
    from quantlinear_triton.kernels import counters

    K = 7 * 256
    w = weights("MXFP4", K, 32, seed=6)
    meta, t = packed(w)
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(0)).to(torch.float16).to(DEV)
    ref = x.float() @ w.dequantize().to(DEV).t()
    for split in (8, 3, 1):
        for psum in (4, 1):
            assert rel_err(run(meta, t, x, dict(GEMV16_SPLIT, split_k=split, psum=psum)), ref) < TOL[torch.float16], split
            assert int(counters(x.device)[:64].abs().sum()) == 0, split


def test_paired_fp16_error_model():
    """The PTX paths' arithmetic, simulated in torch: the weight as fp16 ``value / 8`` (psum 1) or ``value / 32``
    (psum 4; FP8: / 512, / 2048), fp16 products with fp16 activations (psum 4: summed in fp16 over 4 consecutive
    channels of a block), then fp32 with the block scales: within 1e-3 of the fp64 reference and finite for
    activations up to 1e3 with a 6e4 outlier."""
    for name in ("MXFP4", "NVFP4", "MXINT4", "MXFP8", "FPW8A16"):
        K, N = 4096, 64
        w = weights(name, K, N, seed=9)
        s = w.scales.float().repeat_interleave(w.block_size, dim=1)[:, :K]
        if w.global_scale is not None:
            s = s / w.global_scale.float()
        for psum in (1, 4):
            div = (512.0 if w.element == "e4m3" else 8.0) * (4 if psum == 4 else 1)
            v = (w.values() / div).half()  # exact: every value / div fits fp16
            assert torch.equal(v.float() * div, w.values())
            for amp in (1.0, 30.0, 1e3):
                x = (torch.randn(1, K, generator=torch.Generator().manual_seed(2)) * amp).half()
                x[0, 5] = 6.0e4  # an outlier activation
                prod = v * x  # the f16x2 multiply, rounded to fp16
                if psum == 4:  # fp16 sums of 4 consecutive channels (one block), as the fma.rn.f16x2 chain
                    q = prod.reshape(N, K // 4, 4)
                    part = ((q[..., 0] + q[..., 1]) + q[..., 2]) + q[..., 3]
                    assert torch.isfinite(part).all(), name
                    y = (part.float() * s[:, ::4]).sum(-1, dtype=torch.float64) * div
                else:
                    assert torch.isfinite(prod).all(), name
                    y = (prod.float() * s).sum(-1, dtype=torch.float64) * div
                ref = x.double() @ w.dequantize().double().t()
                assert float((y - ref).abs().max() / ref.abs().max()) < 1e-3, (name, psum, amp)


# ---- 4-bit activations folded into the paired-fp16 GEMV ---------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_act_quant_split_exact(dtype):
    """quantize_activations_split: values (fp16 pairs, the weight layout's planes i, i + 4) times block scales
    == fpquant's fp32 qdq exactly; K with a partial last tile (zero pairs past K)."""
    for K, block in ((416, 32), (176, 16)):
        x = act_inputs(dtype, K=K)
        cases = [(P.A_MX_E2M1, None, lambda v: fpquant.mx_qdq(v, "e2m1", block, False)),
                 (P.A_MX_E2M1 + P.A_RCEIL, None, lambda v: fpquant.mx_qdq(v, "e2m1", block, True))]
        if block == 16:
            gs = fpquant.nvfp4_global_scale(torch.tensor(3.0))
            cases.append((P.A_NVFP4, gs.to(DEV), lambda v: fpquant.nvfp4_qdq(v, gs, 16)))
        for act, a_scale, ref_fn in cases:
            pairs, xs = fk().quantize_activations_split(x, act, block, a_scale)
            T = 8 * block
            assert pairs.dtype == torch.int32 and pairs.shape == (x.shape[0], -(-K // T) * T // 2)
            assert xs.dtype == torch.float32 and xs.shape == (x.shape[0], K // block)
            v = fk().unpack_pairs(pairs.cpu(), block, -(-K // T) * T).float()
            assert torch.equal(v[:, K:], torch.zeros_like(v[:, K:]))
            prod = (v[:, :K].reshape(x.shape[0], -1, block) * xs.cpu()[:, :, None]).reshape(x.shape[0], K)
            assert torch.equal(prod, ref_fn(x.cpu().float())), (K, act)
            assert float(v.abs().max()) <= 6.0


FOLD_CFGS = [(1, dict(GEMV16, fold=1)), (1, dict(GEMV16_SPLIT, fold=1)), (3, dict(GEMV16_SPLIT, fold=1)),
             (2, dict(GEMV16, fold=1, split_k=2)),
             (1, dict(GEMV16, fold=1, BN=8))]  # N a multiple of BN: the scale bytes read without a row clamp


@pytest.mark.parametrize("name", ["MXFP4", "NVFP4", "MXINT4", "MXFP4_RCEIL"])
def test_gemv16_fold(name):
    """The folded gemv16 (both lane arrangements, split-K, bias, a partial last tile) against the fp32 product
    of fpquant's fp32 qdq activations and the dequantized weight."""
    K, N = SHAPES.get(name, SHAPES["MXFP4"])
    sc = PRESETS[name]
    g = torch.Generator().manual_seed(11)
    w = fpquant.quantize_float((torch.randn(N, K, generator=g) * 0.05).to(torch.bfloat16), sc, act_amax=3.0)
    kind = fpquant.act_quant_kind(sc)
    meta, t = P.prepare_float(w, kind)
    t = {k: (v.to(DEV) if v is not None else None) for k, v in t.items()}
    assert fk().fold_fits(meta.elem, meta.scale, meta.block, meta.act, meta.act_block, torch.float16)
    assert fk().fold_fits(meta.elem, meta.scale, meta.block, meta.act, meta.act_block, torch.bfloat16)
    assert not fk().fold_fits(meta.elem, meta.scale, meta.block, meta.act, meta.act_block, torch.float32)
    W = w.dequantize().to(DEV)
    bias = torch.randn(N, generator=g).to(torch.float16).to(DEV)
    for M, cfg in FOLD_CFGS:
        for amp in (1.0, 1e3):
            x = (torch.randn(M, K, generator=torch.Generator().manual_seed(M)) * amp).to(torch.float16).to(DEV)
            b = bias if cfg["split_k"] > 1 else None
            ref = fpquant.act_qdq(x.float().cpu(), sc, w).to(DEV) @ W.t() + (b.float() if b is not None else 0)
            pairs, xs = fk().quantize_activations_split(x, meta.act, meta.act_block, t["act_scale"])
            y = fk().launch(pairs, t["qweight"], t["scales"], t["row_scales"], b, meta.elem, meta.scale, meta.block, cfg,
                            x_scales=xs)
            assert y.dtype == torch.float16 and y.shape == (M, N)
            assert rel_err(y, ref) < TOL[torch.float16], (name, M, cfg, amp)
            # a bf16 layer: the same E2M1 pairs and fp16-pair arithmetic, the output stored in bf16
            yb = fk().launch(pairs, t["qweight"], t["scales"], t["row_scales"], b, meta.elem, meta.scale, meta.block, cfg,
                             out=torch.empty((M, N), dtype=torch.bfloat16, device=DEV), x_scales=xs)
            assert yb.dtype == torch.bfloat16 and rel_err(yb, ref) < TOL[torch.bfloat16], (name, M, cfg, amp)
    with pytest.raises(ValueError):
        fk().launch(pairs, t["qweight"], t["scales"], t["row_scales"], None, meta.elem, meta.scale, meta.block,
                    dict(GEMV16, psum=1), x_scales=xs)


def test_gemv16_default_tiles():
    """M = 1 gemv16 for 4-bit codes: 128-row program tiles with 256 lanes, split-K to ~8 programs per unit; FP8 unchanged."""
    space = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: p.sm_count, paired_fp16=True)
    mx = space.default_config(fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "float16", 14336, 4096), 1, _Props())
    assert (mx["kernel"], mx["BN"], mx["warps"], mx["split_k"]) == ("gemv16", 128, 8, 8)
    nv = space.default_config(fp_tune.FPProblem(P.E2M1, P.S_E4M3, 16, 4, "float16", 28672, 8192), 1, _Props())
    assert (nv["kernel"], nv["BN"], nv["warps"], nv["split_k"]) == ("gemv16", 128, 8, 8)
    f8 = space.default_config(fp_tune.FPProblem(P.E4M3_NV, P.S_NONE, 32, 8, "float16", 14336, 4096), 1, _Props())
    assert (f8["kernel"], f8["BN"], f8["warps"], f8["split_k"]) == ("gemv16", 64, 4, 4)
    bf = space.default_config(fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "bfloat16", 14336, 4096), 1, _Props())
    assert bf["kernel"] == "gemv" and bf["BN"] == 64
