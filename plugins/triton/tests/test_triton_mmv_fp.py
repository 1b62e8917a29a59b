"""``mmv`` for MXFP4 layers, the parts that need no GPU: its scale bytes (:func:`fp_packing.mx_sigma`) and the exactness
of the fp16 arithmetic they feed, the E2M1 pair decode its PTX performs, the configurations the float space gives it,
and what runs where it cannot (the interpreter).  Its numerics and speed are measured on a GPU
(plugins/cuda/tests/test_cuda_mmv_gpu.py, benchmarks/mmv_fp_check.py)."""

import re

import pytest
import torch

from quantlinear_triton import fp_packing as P
from quantlinear_triton import fp_tune

E2M1 = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def mx_layer(N=24, K=544, lo=116, hi=127, seed=0):
    """Random E2M1 codes and E8M0 scale bytes ``[N, K / 32]`` (K: two 256-channel tiles and a ragged one)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (N, K), generator=g).to(torch.uint8)
    sb = torch.randint(lo, hi + 1, (N, K // 32), generator=g).to(torch.uint8)
    return codes, sb


def sigma_bytes(sigma, N):
    """Back from the kernel's order (planes 0 4 1 5 2 6 3 7 per tile) to ``[N, tiles * 8]`` in plane order."""
    b = sigma.view(torch.uint8).view(N, -1, 8)
    return b[:, :, [0, 2, 4, 6, 1, 3, 5, 7]].reshape(N, -1)


def test_sigma_is_the_scale_exponent_relative_to_the_largest():
    codes, sb = mx_layer()
    sigma, omul = P.mx_sigma(codes, sb)
    N, G = sb.shape
    assert sigma.dtype == torch.int32 and sigma.shape == (N, 2 * -(-G // 8))  # two registers per 256-channel tile
    smax = int(sb.max())
    assert omul == 2.0 ** (smax - 128)
    b = sigma_bytes(sigma, N)
    assert torch.equal(b[:, :G].to(torch.int32), (sb.to(torch.int32) - smax + 30) * 4)  # 4 * fp16 exponent field
    assert not b[:, G:].any()  # the ragged tile's missing planes: sigma 0


def test_mmv_fp16_arithmetic_is_exact():
    """What the kernel computes per weight -- the code as fp16 ``value * 2**-14`` times the fp16 sigma, one fp16 product
    -- times ``omul`` is the dequantized weight exactly, for every code and every scale within 2**24 of the largest."""
    codes, sb = mx_layer(lo=127 - 24, hi=127, N=64)
    sigma, omul = P.mx_sigma(codes, sb)
    N, K = codes.shape
    e = sigma_bytes(sigma, N)[:, : K // 32].to(torch.int32) // 4  # fp16 exponent fields
    sig = torch.where(e > 0, torch.exp2(e.float() - 15), torch.zeros(())).half()
    a = (E2M1[codes.long()] * 2.0**-14).half()
    assert torch.equal(a.float(), E2M1[codes.long()] * 2.0**-14)  # the decode is exact, subnormal 0.5 * 2**-14 too
    prod = a * sig.repeat_interleave(32, dim=1)  # fp16 x fp16 -> fp16, as mul.rn.f16x2
    w = E2M1[codes.long()] * torch.exp2(sb.float() - 127).repeat_interleave(32, dim=1)
    assert torch.equal(prod.float() * omul, w)


def test_nvfp4_sigma_order_and_exact_fp16_products():
    """NVFP4: the E4M3 scale bytes reordered per pair of 128-channel tiles; every product of an E2M1 value * 2**-14 and
    an E4M3 scale (both exact in fp16) is exact as one fp16 product, subnormal scales included."""
    g = torch.Generator().manual_seed(1)
    sb = torch.randint(0, 0x7F, (6, 32), generator=g).to(torch.uint8)  # K = 512: two pairs of tiles
    sigma, omul = P.nv_sigma(sb)
    assert sigma.shape == (1, 2 * 64) and omul == 2.0**14  # one group of 16 rows (10 of them padding), two steps
    rows = sigma.view(1, 2, 16, 4)[0].permute(1, 0, 2).reshape(16, 8)  # [row, step * 4 + register]
    assert torch.equal(rows[:6].contiguous().view(torch.uint8).view(6, 4, 8)[:, :, [0, 2, 4, 6, 1, 3, 5, 7]].reshape(6, 32),
                       sb)
    assert not rows[6:].any()
    assert P.nv_sigma(sb[:, :24]) is None  # three tiles
    scales = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # every finite scale >= 0
    a = (E2M1 * 2.0**-14).half()
    prod = a[:, None] * scales.half()[None, :]
    assert torch.equal(prod.float() * omul, E2M1[:, None] * scales[None, :])


def test_nvfp4_sigma_is_read_where_the_kernel_addresses_it():
    """``mmv`` reads register ``k`` of row ``r``'s scales of step ``t`` at int32 ``(r // 16) * 2 KW + 64 t + 4 (r % 16)
    + k`` (``KW = K / 8`` words a row): a group of 16 rows' scales of a step are one 256-byte run, so a warp's load of
    a step (8 rows) reads one line.  Here on 37 rows (a ragged last group) and 4 steps."""
    g = torch.Generator().manual_seed(2)
    N, K = 37, 1024
    sb = torch.randint(0, 0x7F, (N, K // 16), generator=g).to(torch.uint8)
    sigma, _ = P.nv_sigma(sb)
    flat = sigma.view(-1)
    order = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
    KW = K // 8
    for r in (0, 7, 15, 16, 31, 36):
        for t in range(K // 256):
            regs = torch.stack([flat[(r // 16) * 2 * KW + 64 * t + 4 * (r % 16) + k] for k in range(4)])
            want = sb[r, 16 * t: 16 * t + 16].view(2, 8)[:, order].reshape(16).contiguous().view(torch.int32)
            assert torch.equal(regs, want), (r, t)


def test_blocks_too_small_for_fp16_are_zero_only_when_their_codes_are():
    codes, sb = mx_layer()
    sb[3, 2] = 0  # 2**-127: an all-zero block as a quantizer writes it
    codes[3, 64:96] = torch.tensor([0, 8] * 16, dtype=torch.uint8)  # +0 and -0
    sigma, _ = P.mx_sigma(codes, sb)
    assert sigma_bytes(sigma, 24)[3, 2] == 0
    codes[3, 70] = 1  # one nonzero code: 2**-128 would not survive fp16
    assert P.mx_sigma(codes, sb) is None
    sb[3, 2] = 255  # a NaN scale
    assert P.mx_sigma(codes, sb) is None


def test_sigma_rejects_wrong_tensors_by_name():
    from quantlinear import QuantLinearError

    codes, sb = mx_layer()
    with pytest.raises(QuantLinearError, match=r"MXFP4 scale bytes .*torch.float32"):
        P.mx_sigma(codes, sb.float())
    with pytest.raises(QuantLinearError, match=r"MXFP4 codes must be uint8 \[24, 544\].*\(24, 512\)"):
        P.mx_sigma(codes[:, :512], sb)
    with pytest.raises(QuantLinearError, match=r"NVFP4 scale bytes .*\(32,\)"):
        P.nv_sigma(sb.view(-1)[:32])


@pytest.mark.parametrize("j", range(4))
def test_e2m1_pair_decode_bits(j):
    """The PTX of :func:`kernels_mmv._dq_e2m1` (its shifts and masks, read from the generated string) maps every pair of
    codes at bits 4j / 16 + 4j to the fp16 pair ``value * 2**-14``."""
    km = pytest.importorskip("quantlinear_triton.kernels_mmv")
    if not km.HAS_GLUON:
        pytest.skip("no Gluon")
    asm = km._e2m1_asm.fn(j) if hasattr(km._e2m1_asm, "fn") else km._e2m1_asm(j)
    xs = re.search(r"(shl|shr)\.(?:b32|u32) x, \$1, (\d+);", asm)
    ys = re.search(r"shl\.b32 y, \$1, (\d+);", asm)
    sx = int(xs.group(2)) * (1 if xs.group(1) == "shl" else -1)
    sy = int(ys.group(1)) if ys else 0
    assert "and.b32 x, x, 0x0E000E00" in asm and "and.b32 y, y, 0x80008000" in asm and "mul.rn.f16x2 $0, x, $2" in asm
    want = (E2M1 * 2.0**-14).half().view(torch.int16).to(torch.int32) & 0xFFFF
    for lo in range(16):
        for hi in range(16):
            w = ((hi << (16 + 4 * j)) | (lo << (4 * j)) | 0x5A5A5A5A & ~((0xF << (16 + 4 * j)) | (0xF << (4 * j)))) & 0xFFFFFFFF
            x = (w << sx if sx >= 0 else w >> -sx) & 0xFFFFFFFF
            y = (w << sy) & 0xFFFFFFFF
            r = (x & 0x0E000E00) | (y & 0x80008000)
            assert (r & 0xFFFF, r >> 16) == (int(want[lo]), int(want[hi])), (j, lo, hi)


class _Props:
    name, simulated, arch, sm_count = "toy", False, "sm90", 132


def test_float_space_offers_mmv_for_mxfp4_fp16_up_to_16_rows():
    space = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: p.sm_count, paired_fp16=True,
                            mmv=lambda props: not props.simulated)
    mx = fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "float16", 8192, 28672)  # 128 blocks of 64 rows
    for M, split in ((1, 8), (8, 8), (16, 4)):  # ~4 programs per SM up to one token tile, ~2 beyond
        cfg = space.default_config(mx, M, _Props())
        assert cfg == {"kernel": "mmv", "R": 1, "warps": 4, "pf": M > 1, "split_k": split}, (M, cfg)
    assert space.default_config(mx, 1, _Props(), mmv=False)["kernel"] == "gemv16"  # a layer without mmv_sigma
    assert space.default_config(mx, 32, _Props())["kernel"] != "mmv"
    assert "mmv" in {c["kernel"] for c in space.candidates(mx, 4, _Props())}
    nv = fp_tune.FPProblem(P.E2M1, P.S_E4M3, 16, 4, "float16", 8192, 28672)  # NVFP4: split counted in 256-channel steps
    assert space.default_config(nv, 1, _Props()) == space.default_config(mx, 1, _Props())
    for other in (fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "bfloat16", 4096, 4096),
                  fp_tune.FPProblem(P.E0M4, P.S_E8M0, 32, 4, "float16", 4096, 4096)):  # MXINT4
        assert space.default_config(other, 1, _Props())["kernel"] != "mmv", other
    plain = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: p.sm_count)
    assert plain.default_config(mx, 4, _Props())["kernel"] != "mmv"  # a space without the predicate


def test_float_codes_take_warps_splitting_k_at_one_row_only():
    """``ks`` (the warps of a program split K) is a candidate for MXFP4 and NVFP4 at M = 1, not beyond one row: 4 and 8
    warps, 8 also with the next step's words a step ahead (alone and with ``xh``); its launch plan drops the split over
    programs and prefetches only where asked (and is refused for 8-bit codes' 64-word steps and past eight rows)."""
    from quantlinear_triton import kernels_mmv as km

    space = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: p.sm_count, paired_fp16=True,
                            mmv=lambda props: not props.simulated)
    mx = fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "float16", 12288, 3072)
    nv = fp_tune.FPProblem(P.E2M1, P.S_E4M3, 16, 4, "float16", 12288, 3072)
    got = space.candidates(mx, 1, _Props())
    ks = [c for c in got if c.get("ks") and not c.get("early")]
    assert [(c["warps"], c["pf"], bool(c.get("xh"))) for c in ks] == [(4, False, False), (8, False, False), (8, True, False),
                                                                       (8, True, True)]
    assert all(c["split_k"] == 1 for c in ks)
    assert not any(c.get("ks") for c in space.candidates(mx, 2, _Props()))
    assert [c["warps"] for c in space.candidates(nv, 1, _Props()) if c.get("ks") and not c.get("early")] == [4, 8, 8, 8]
    # the second round: the three fastest mmv configurations again, starting on their weights before the
    # grid-dependency wait (early 1 / 2, kernels_mmv)
    mmv = [c for c in got if c["kernel"] == "mmv"]
    assert not any(c.get("early") for c in got)
    second = space.refine(mmv[::-1])
    assert second[:6] == [dict(c, early=e) for c in mmv[::-1][:3] for e in (1, 2)]
    # and the fastest row splits under a 128-register budget, with and without the next step's prefetch
    row = [c for c in mmv[::-1] if not c.get("ks")]
    assert dict(row[0], maxnreg=128) in second and dict(row[0], pf=True, maxnreg=128) in second
    x, w = torch.zeros(1, 3072, dtype=torch.float16), torch.zeros(12288, 384, dtype=torch.int32)
    plan = km._plan(x, w, ks[0], None, 4)[1]
    assert plan[:5] == (1, 4, False, True, 12288 // 16)  # (R, warps, pf, ks, row blocks: one 16-row block a program)
    assert km._plan(x, w, ks[0], None, 4, step_words=64)[1][3] is False
    assert km._plan(torch.zeros(9, 3072, dtype=torch.float16), w, ks[0], None, 4)[1][3] is False
    assert km._plan(x, w, ks[2], None, 4)[1][2:4] == (True, True)  # ks with the prefetch


def test_nvfp4_candidates_name_their_scale_load_and_the_second_round_tries_the_other():
    """NVFP4's scale bytes of a step can be read as one 16-byte load a row (``sv``) or four 4-byte ones; which wins
    depends on the configuration (H100: 17.5 -> 14.7 us with one, 2.4 us lost with another), so every NVFP4 ``mmv``
    candidate names its load -- the kernel's default, one load at one row group a warp -- and the second round
    measures the other load of the three fastest.  MXFP4 (one 8-byte load a row) names none."""
    from quantlinear_triton import kernels_mmv as km

    space = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: p.sm_count, paired_fp16=True,
                            mmv=lambda props: not props.simulated)
    nv = fp_tune.FPProblem(P.E2M1, P.S_E4M3, 16, 4, "float16", 4096, 14336)
    mx = fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "float16", 4096, 14336)
    for M in (1, 16):
        mmv = [c for c in space.candidates(nv, M, _Props()) if c["kernel"] == "mmv"]
        assert mmv and all(c["sv"] == (c["R"] == 1) for c in mmv)
        assert not any("sv" in c for c in space.candidates(mx, M, _Props()))
        second = space.refine(mmv[::-1])
        assert [c for c in second if c["sv"] != (c["R"] == 1)] == [dict(c, sv=not c["sv"]) for c in mmv[::-1][:3]]
    x, w = torch.zeros(1, 14336, dtype=torch.float16), torch.zeros(4096, 1792, dtype=torch.int32)
    assert km._plan(x, w, {"kernel": "mmv", "R": 1}, None, 4)[1].sv is True  # (tables without the key)
    assert km._plan(x, w, {"kernel": "mmv", "R": 2}, None, 4)[1].sv is False
    assert km._plan(x, w, {"kernel": "mmv", "R": 1, "sv": False}, None, 4)[1].sv is False


#: (activation code, block, scale) of the schemes' activation quantizations: NVFP4, MX E2M1 (and RCEIL), MX E4M3
#: (weights in MXFP4 with 8-bit activations: a custom configuration), FP8 static
ACTS = {"nvfp4": (P.A_NVFP4, 16, torch.tensor([0.7])), "mx_e2m1": (P.A_MX_E2M1, 32, None),
        "mx_e2m1_rceil": (P.A_MX_E2M1 + P.A_RCEIL, 32, None), "mx_e4m3": (P.A_MX_E4M3, 32, None),
        "fp8_static": (P.A_FP8, 0, torch.tensor([0.05]))}


@pytest.mark.parametrize("nv,act", [(True, "nvfp4"), (False, "mx_e2m1"), (False, "mx_e2m1_rceil"), (False, "mx_e4m3"),
                                    (False, "fp8_static")])
@pytest.mark.parametrize("K", [1184, 1280, 2304])
def test_activation_pairs_hold_the_quantized_values_where_mmv_reads_them(nv, act, K):
    """``quantize_activations_pairs`` (interpreter): the quantized activations bit for bit as ``quantize_activations``
    writes them, whatever the scheme quantizes them to, zero past K to the last whole 256-channel step, and lane
    ``(g, q)``'s word ``128 t + 32 j + 8 q + 2 i + b`` is the pair ``(x[c], x[c + d])`` of its B register ``i`` of
    code pair ``j``, word half ``b`` -- the channel map ``mmv`` decodes the weights by (``kernels_mmv._pair_channel``;
    MXFP4 d = 128, NVFP4 d = 64).  Activations it cannot pair are refused by name."""
    from quantlinear import QuantLinearError
    from quantlinear_triton import fp_kernels as fk

    g = torch.Generator().manual_seed(K + nv)
    x = (torch.randn(3, K, generator=g) * 2).half()
    code, blk, gs = ACTS[act]
    want = fk.quantize_activations(x, code, blk, gs)
    pairs = fk.quantize_activations_pairs(x, code, blk, gs, nv)
    steps = -(-K // 256)
    assert pairs.dtype == torch.int32 and pairs.shape == (3, steps * 128)
    assert torch.equal(fk.unpack_mmv_pairs(pairs, nv, K), want)
    assert not fk.unpack_mmv_pairs(pairs, nv, steps * 256)[:, K:].any()
    h = pairs.view(torch.float16).view(3, steps * 128, 2)
    padded = torch.zeros(3, steps * 256, dtype=torch.float16)
    padded[:, :K] = want
    d = 64 if nv else 128
    for t in range(steps):
        for j in range(4):
            for b in range(2):
                for q in range(4):
                    for i in range(4):
                        c = t * 256 + (128 * b + 16 * j + 4 * q + i if nv else 32 * j + 16 * b + 4 * q + i)
                        w = 128 * t + 32 * j + 8 * q + 2 * i + b
                        assert torch.equal(h[:, w, 0], padded[:, c]) and torch.equal(h[:, w, 1], padded[:, c + d])
    with pytest.raises(QuantLinearError, match=r"activation pairs for mmv: .*torch.float32 \(3, %d\)" % K):
        fk.quantize_activations_pairs(x.float(), code, blk, gs, nv)
    with pytest.raises(QuantLinearError, match=r"activation code 0"):
        fk.quantize_activations_pairs(x, P.A_NONE, 0, None, nv)


def test_the_second_round_reads_the_fastest_ks_configurations_activations_as_pairs():
    """``px`` (the quantized activations as B-register pairs, ks only) won 4-6% on MXFP4 and lost up to 15% on some
    NVFP4 configurations (H100): the float space's second round measures the ``px`` twins of the two fastest ks
    configurations, not of every candidate, and none of the row splits'."""
    space = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: p.sm_count, paired_fp16=True,
                            mmv=lambda props: not props.simulated)
    mx = fp_tune.FPProblem(P.E2M1, P.S_E8M0, 32, 4, "float16", 4096, 14336)
    first = [c for c in space.candidates(mx, 1, _Props()) if c["kernel"] == "mmv"][::-1]
    ks = [c for c in first if c.get("ks")]
    second = space.refine(first, clusters=False)
    assert [c for c in second if c.get("px")] == [dict(c, px=True) for c in ks[:2]]
    assert not any(c.get("px") for c in space.candidates(mx, 1, _Props()))


def test_prepare_writes_sigma_only_when_asked():
    from dataclasses import replace

    from quantlinear import fpquant
    from quantlinear.scheme import PRESETS

    w = fpquant.quantize_float((torch.randn(40, 512) * 0.05).to(torch.bfloat16), replace(PRESETS["MXFP4"], act_bits=16))
    meta, t = P.prepare_float(w, None)
    assert t["mmv_sigma"] is None and meta.mmv_mul == 0.0
    meta, t = P.prepare_float(w, None, mmv=True)
    sigma, omul = P.mx_sigma(w.codes, t["scales"].t().contiguous())
    assert torch.equal(t["mmv_sigma"], sigma) and meta.mmv_mul == omul
    nv = fpquant.quantize_float((torch.randn(40, 512) * 0.05).to(torch.bfloat16), replace(PRESETS["NVFP4"], act_bits=16))
    meta, t = P.prepare_float(nv, None, mmv=True)
    assert torch.equal(t["mmv_sigma"], P.nv_sigma(t["scales"].t().contiguous())[0]) and meta.mmv_mul == 2.0**14
    odd = fpquant.quantize_float((torch.randn(40, 384) * 0.05).to(torch.bfloat16), replace(PRESETS["NVFP4"], act_bits=16))
    assert P.prepare_float(odd, None, mmv=True)[1]["mmv_sigma"] is None  # three 128-channel tiles: not read in pairs
    i4 = fpquant.quantize_float((torch.randn(40, 512) * 0.05).to(torch.bfloat16), replace(PRESETS["MXINT4"], act_bits=16))
    assert P.prepare_float(i4, None, mmv=True)[1]["mmv_sigma"] is None  # E2M1 codes only


def test_an_mmv_configuration_runs_the_space_default_where_mmv_cannot(monkeypatch):
    """Under the interpreter (CPU tensors) a layer with ``mmv_sigma`` given an ``mmv`` configuration (a user cache, a
    table) runs the configuration the space picks without it -- bit for bit what the layer computes without sigma."""
    from dataclasses import replace

    from quantlinear import fpquant
    from quantlinear.scheme import PRESETS
    from quantlinear_triton import fp_ops, tune

    w = fpquant.quantize_float((torch.randn(40, 512) * 0.05).to(torch.bfloat16), replace(PRESETS["MXFP4"], act_bits=16))
    meta, t = P.prepare_float(w, None, mmv=True)
    space = fp_tune.FPSpace("toy_fp", "/nonexistent", lambda d: _Props(), units=lambda p: 4, paired_fp16=True,
                            mmv=lambda props: True)
    tuner = tune.Tuner(space)
    x = torch.randn(3, 512).half()
    args = (x, t["qweight"], t["scales"], t["row_scales"], None, None, 512, meta.elem, meta.scale, meta.block, 0, 0)
    y = fp_ops.run_fp_gemm(tuner, *args, mmv_sigma=t["mmv_sigma"], mmv_mul=meta.mmv_mul)
    assert torch.equal(y, fp_ops.run_fp_gemm(tuner, *args))


def test_layer_problem_reserves_split_buffers_on_cuda(monkeypatch):
    """A prepared layer's split-K counters and workspace are allocated at load time (never in a graph capture)."""
    from quantlinear_triton import fp_layers, kernels

    seen = []
    monkeypatch.setattr(kernels, "reserve", seen.append)
    monkeypatch.setattr(fp_layers.fp_ops.fp_kernels(), "reserve", seen.append)
    meta = P.FPMeta(P.E2M1, P.S_E8M0, 32, 512, 40)
    p = fp_layers.layer_problem(meta, torch.float16, torch.device("cuda", 0))
    assert seen == [torch.device("cuda", 0)] and p.N == 40 and p.K == 512
