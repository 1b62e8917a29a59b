"""The tensor-core decode kernel (``mmv``, Gluon) without a GPU: where it applies, what runs where it cannot, and its
sm_80 / sm_90 machine code (cross-compiled: Triton ships ptxas).  Its numerics are tested on a GPU
(test_cuda_mmv_gpu.py)."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from quantlinear import QuantLinearError
from quantlinear_triton import kernels_mmv as km
from quantlinear_triton import kernels_tc as km_tc

from cuda_testutil import GPU, compile_in_subprocess, rel_err
from test_cuda_kernels import make_layer, rand_x, reference, run_cfg


def test_fits_slabs_of_32_with_128_multiple_groups():
    """4-bit codes in fp16 or bf16; 8-bit codes in fp16 only (``1024 + q`` of a byte is an fp16, not a bf16) and in an
    even number of 128-channel slabs (a step takes two); groups of 128 x 2^k channels or one per row; M <= 16."""
    f16 = torch.float16
    assert km.fits(4, 32, 128, 4096, f16, 1) and km.fits(4, 32, 256, 4096, f16, 16) and km.fits(4, 32, 4096, 4096, f16, 8)
    assert [km.group_shift(g, 4096) for g in (128, 256, 1024, 4096, 8192)] == [0, 1, 3, 31, 31]  # half-tile >> shift
    assert km.group_shift(384, 4608) is None and not km.fits(4, 32, 384, 4608, f16, 4)
    assert not km.fits(4, 32, 64, 4096, f16, 4)  # a pair's halves are 128 channels apart: both in one group per half
    assert not km.fits(4, 16, 128, 4096, f16, 4)  # 16-word slabs: the lane's word map assumes 32
    assert not km.fits(4, 32, 128, 4096, torch.float32, 4)
    assert km.fits(4, 32, 128, 4096, torch.bfloat16, 4) and km.fits(4, 32, 128, 4096, torch.bfloat16, 16)
    assert not km.fits(4, 32, 128, 4096, f16, 17) and not km.fits(4, 32, 128, 4096, f16, 0)
    assert km.fits(8, 32, 128, 4096, f16, 16) and km.fits(8, 32, 3840, 3840, f16, 2) and km.fits(8, 32, 512, 3800, f16, 2)
    assert not km.fits(8, 32, 128, 4096, torch.bfloat16, 2)  # bf16: the 4-bit kernel only
    assert not km.fits(8, 32, 128, 1152, f16, 2)  # nine slabs
    assert not km.fits(8, 32, 64, 4096, f16, 2)
    assert not km.fits(2, 32, 128, 4096, f16, 2) and not km.fits(3, 32, 128, 4096, f16, 2)


def test_cpu_tensors_do_not_run_it():
    x = torch.zeros(2, 256, dtype=torch.float16)
    assert not km.runs(x, torch.zeros(2, 4, dtype=torch.float16))


@pytest.mark.skipif(GPU, reason="the fallback path is the CPU / interpreter one")
@pytest.mark.parametrize("sym,bias", [(True, False), (False, True)])
def test_an_mmv_configuration_falls_back_to_dot16_where_it_cannot_run(sym, bias):
    layer, W, b = make_layer(4, 128, sym, 512, 96, torch.float16, bias=bias)
    for M in (1, 3, 16):
        x = rand_x(M, 512, torch.float16, seed=M)
        y = run_cfg(layer, x, {"kernel": "mmv", "R": 1, "warps": 8, "pf": True, "split_k": 2})
        assert rel_err(y, reference(x, W, b)) < 2e-3
        assert torch.equal(y, run_cfg(layer, x, km.FALLBACK))


#: (kernel, constexprs, warps, compute capability) the compile check builds
COMPILE_JOBS = [("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=True, USE_SPLIT=True), 8, 90),
                ("_mmv_kernel", dict(R=2, NT=1, HAS_ZEROS=True, HAS_BIAS=True, PF=False, USE_SPLIT=False), 4, 90),
                ("_mmv_kernel", dict(R=1, NT=2, HAS_ZEROS=False, HAS_BIAS=True, PF=True, USE_SPLIT=True), 8, 90),
                ("_mmv_kernel", dict(R=2, NT=2, HAS_ZEROS=True, HAS_BIAS=False, PF=True, USE_SPLIT=False), 4, 80),
                ("_mmv_kernel", dict(R=1, NT=2, HAS_ZEROS=True, HAS_BIAS=True, PF=True, USE_SPLIT=True, BF16=True), 4, 80),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=True, USE_SPLIT=False, BF16=True), 4, 90),
                # MXFP4 (E2M1 codes, sigma bytes)
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=True, USE_SPLIT=True, FP=1, PDL=True),
                 4, 90),
                ("_mmv_kernel", dict(R=2, NT=2, HAS_ZEROS=False, HAS_BIAS=False, PF=True, USE_SPLIT=False, FP=1,
                                     HAS_ROWS=True), 4, 80),
                # NVFP4 (E2M1 codes in 16-word slabs, E4M3 scales converted by the hardware: sm_89+)
                ("_mmv_kernel", dict(R=1, NT=2, HAS_ZEROS=False, HAS_BIAS=True, PF=False, USE_SPLIT=True, FP=2,
                                     HAS_ROWS=True), 4, 90),
                # 8-bit codes (two slabs a step, a byte permute per code pair)
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=True, USE_SPLIT=True, W8=True, PDL=True),
                 4, 90),
                ("_mmv_kernel", dict(R=2, NT=2, HAS_ZEROS=True, HAS_BIAS=False, PF=False, USE_SPLIT=False, W8=True), 4, 80),
                # the warps split K (KS): each its own tiles of the program's rows, activations read directly
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=False, USE_SPLIT=True, PDL=True, KS=True),
                 4, 90),
                ("_mmv_kernel", dict(R=2, NT=1, HAS_ZEROS=True, HAS_BIAS=False, PF=False, USE_SPLIT=False, BF16=True,
                                     KS=True), 8, 80),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=False, USE_SPLIT=True, FP=1, KS=True),
                 8, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=False, USE_SPLIT=False, FP=2, HAS_ROWS=True,
                                     PDL=True, KS=True), 4, 90),
                # ... with the step's activation loads first (XH)
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=False, USE_SPLIT=False, PDL=True, KS=True,
                                     XH=True), 8, 90),
                # ... every warp's steps whole and inside its split: no masks in the loop (FULL)
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=True, HAS_BIAS=False, PF=False, USE_SPLIT=True, PDL=True, KS=True,
                                     FULL=True), 4, 90),
                # ... the next step's words a step ahead (PF), masked and not
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=True, USE_SPLIT=False, PDL=True, KS=True,
                                     FULL=True), 8, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=True, USE_SPLIT=True, KS=True, XH=True,
                                     FP=1), 8, 90),
                # two token tiles with evict_first weight loads (EF)
                ("_mmv_kernel", dict(R=2, NT=2, HAS_ZEROS=False, HAS_BIAS=False, PF=True, USE_SPLIT=True, PDL=True, EF=True),
                 4, 90),
                # starting on the weights before the grid-dependency wait (EARLY): 1 loads (ks, row split at two token
                # tiles, MXFP4), 2 L2 prefetches (ks, 8-bit codes)
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=False, USE_SPLIT=False, PDL=True, KS=True,
                                     XH=True, FULL=True, EARLY=1), 8, 90),
                ("_mmv_kernel", dict(R=1, NT=2, HAS_ZEROS=True, HAS_BIAS=False, PF=False, USE_SPLIT=True, PDL=True, EF=True,
                                     EARLY=1), 4, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=False, USE_SPLIT=True, PDL=True, FP=1,
                                     EARLY=1), 4, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=False, USE_SPLIT=False, PDL=True, KS=True,
                                     FULL=True, EARLY=2), 4, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=True, HAS_BIAS=False, PF=True, USE_SPLIT=True, PDL=True, W8=True,
                                     EARLY=2), 4, 90),
                # the splits of a row block as one thread-block cluster (CL, sm_90): the partials meet in rank 0's
                # shared memory (row split at one and two token tiles, ks, MXFP4)
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=False, USE_SPLIT=False, PDL=True, EARLY=2,
                                     CL=16), 4, 90),
                ("_mmv_kernel", dict(R=2, NT=2, HAS_ZEROS=True, HAS_BIAS=False, PF=True, USE_SPLIT=False, PDL=True, EF=True,
                                     EARLY=1, CL=2), 4, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=False, USE_SPLIT=False, PDL=True, KS=True,
                                     CL=3), 8, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=False, USE_SPLIT=False, FP=1, CL=4), 4, 90),
                # ... at M <= 2, where only the lanes of tokens 0 / 1 store (XQ0)
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=False, USE_SPLIT=False, PDL=True, EARLY=2,
                                     CL=14, XQ0=True), 4, 90),
                # every row group full (LO: a row's word halves a constant 128 words apart in the load order), as the
                # benchmark shapes launch: ks with its prefetch, the row split at two token tiles, NVFP4, 8-bit codes
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=True, USE_SPLIT=False, PDL=True, KS=True,
                                     XH=True, FULL=True, EARLY=2, LO=True), 8, 90),
                ("_mmv_kernel", dict(R=1, NT=2, HAS_ZEROS=False, HAS_BIAS=False, PF=False, USE_SPLIT=True, PDL=True, EF=True,
                                     EARLY=1, LO=True), 4, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=False, USE_SPLIT=False, FP=2, HAS_ROWS=True,
                                     PDL=True, KS=True, LO=True), 8, 90),
                ("_mmv_kernel", dict(R=2, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=True, USE_SPLIT=True, W8=True,
                                     LO=True), 4, 80),
                # NVFP4's scale bytes of a step as one 16-byte load a row (SV): ks with its prefetch, the row split at
                # two token tiles
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=True, USE_SPLIT=False, FP=2, HAS_ROWS=True,
                                     PDL=True, KS=True, XH=True, FULL=True, LO=True, SV=True), 8, 90),
                ("_mmv_kernel", dict(R=1, NT=2, HAS_ZEROS=False, HAS_BIAS=True, PF=True, USE_SPLIT=True, FP=2, EF=True,
                                     SV=True), 4, 90),
                # ks reading the quantized activations as B-register pairs (PX: two 16-byte loads a code pair), MXFP4
                # with its step's loads first and NVFP4 with masks
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=False, PF=True, USE_SPLIT=False, FP=1, PDL=True,
                                     KS=True, XH=True, FULL=True, LO=True, PX=True), 8, 90),
                ("_mmv_kernel", dict(R=1, NT=1, HAS_ZEROS=False, HAS_BIAS=True, PF=False, USE_SPLIT=True, FP=2, HAS_ROWS=True,
                                     KS=True, SV=True, PX=True), 4, 90)]


def compile_mmv(name: str, consts: dict, warps: int, cap: int) -> dict:
    """Compile kernel ``name`` for ``sm<cap>`` as :func:`kernels_mmv.launch_mmv` would launch it (TRITON_INTERPRET off)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = getattr(km, name)
    act = "*bf16" if consts.get("BF16") else "*fp16"
    consts = dict(consts, BF16=bool(consts.get("BF16")), FP=int(consts.get("FP", 0)), HAS_ROWS=bool(consts.get("HAS_ROWS")),
                  PDL=bool(consts.get("PDL")), W8=bool(consts.get("W8")), KS=bool(consts.get("KS")), XH=bool(consts.get("XH")),
                  FULL=bool(consts.get("FULL")), EF=bool(consts.get("EF", consts["NT"] == 1)), EARLY=int(consts.get("EARLY", 0)),
                  CL=int(consts.get("CL", 1)), XQ0=bool(consts.get("XQ0")), LO=bool(consts.get("LO")),
                  SV=bool(consts.get("SV")), PX=bool(consts.get("PX")))
    types = dict(x_ptr="*i32" if consts["PX"] else act, w_ptr="*i32", s_ptr={0: "*fp16", 1: "*i64", 2: "*i32"}[consts["FP"]], z_ptr="*u8", b_ptr=act, y_ptr=act,
                 ws_ptr="*fp32", cnt_ptr="*i32", r_ptr="*fp32", omul="fp32")
    sig, attrs = {}, {}
    for i, n in enumerate(fn.arg_names):
        if n in consts:
            sig[n] = "constexpr"
        elif n in types:
            sig[n], attrs[(i,)] = types[n], [["tt.divisibility", 16]]
        else:
            sig[n] = "i32"
            if n == "KW":  # (whole 32-word slabs, always)
                attrs[(i,)] = [["tt.divisibility", 16]]
    c = triton.compile(GluonASTSource(fn, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", cap, 32),
                       options=dict(num_warps=warps))
    ptx = c.asm["ptx"]
    mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" if consts["BF16"] else "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"
    return {"mma": ptx.count(mma), "v4": len(re.findall(r"ld\.global(?:\.L1::evict_first\.L2::cache_hint)?\.v4", ptx)), "bf16x2": ptx.count("fma.rn.bf16x2"),
            "local": ".local" in ptx, "cubin": len(c.asm.get("cubin", b"")), "lds": ptx.count("ld.shared.v4"),
            "bar": ptx.count("bar.sync"), "atom": ptx.count("atom.global"), "hmul2": ptx.count("mul.rn.f16x2"),
            "prmt": ptx.count("prmt.b32"), "gdc": ptx.count("griddepcontrol.wait"), "cvt": ptx.count("cvt.rn.f16x2.e4m3x2"),
            "release": ptx.count("griddepcontrol.launch_dependents"),
            "release_after_mma": ptx.rfind("griddepcontrol.launch_dependents") > ptx.rfind(mma),
            "loads_before_wait": ptx[:max(0, ptx.find("griddepcontrol.wait"))].count("ld.global"),
            "prefetch_before_wait": ptx[:max(0, ptx.find("griddepcontrol.wait"))].count("prefetch.global.L2"),
            "predicated_prefetch": ptx.count("@p prefetch.global.L2"),
            "evict_first": ptx.count("ld.global.L1::evict_first"),
            "x_before_mma": ptx[:max(0, ptx.find(mma))].count("ld.global.b16"),
            "v4_before_mma": len(re.findall(r"ld\.global\.v4", ptx[:max(0, ptx.find(mma))])),
            "masked_in_loop": len(re.findall(r"@%p\d+ ld\.global", ptx[:ptx.rfind(mma)])),
            "cluster_start": ptx.find("barrier.cluster.arrive.relaxed.aligned"), "first_load": ptx.find("ld.global"),
            "cluster_arrive": ptx.count("barrier.cluster.arrive"), "cluster_wait": ptx.count("barrier.cluster.wait.acquire"),
            "remote_store": ptx.count("st.shared::cluster.f32"), "mapa": ptx.count("mapa.shared::cluster"),
            "predicated_remote_store": ptx.count("@p st.shared::cluster.f32"),
            "exchange_load": ptx.count("ld.shared.f32 ")}


def test_mmv_cross_compiles_for_sm80_and_sm90():
    """One m16n8k16 MMA per word of a row group and token tile, 16-byte weight and shared loads, nothing spilled."""
    pytest.importorskip("triton.experimental.gluon")
    pytest.importorskip("triton.backends.nvidia.compiler")
    res = compile_in_subprocess(str(Path(__file__)), "compile-mmv", timeout=600)
    assert len(res) == len(COMPILE_JOBS)
    for (name, consts, warps, cap), got in zip(COMPILE_JOBS, res):
        R, NT = consts["R"], consts["NT"]
        assert got["cubin"] > 0 and not got["local"], got
        assert got["mma"] == 16 * R * NT, (consts, got)  # a 256-channel tile: 4 code pairs x 4 words per MMA chain
        assert got["v4"] >= 4 * R, (consts, got)  # each row's 32 words: two 16-byte loads per lane and row
        if consts.get("KS"):  # no staged activations: no shared loads in the loop (the warps' sums meet at the end)
            assert got["lds"] == 0, got
        else:  # the staged activations: 16-byte shared loads (8 per token tile and K tile), a barrier per tile
            assert got["lds"] == 8 * NT and got["bar"] >= 2, got
        assert (got["atom"] > 0) == consts["USE_SPLIT"], got
        # bf16: two bf16x2 FMAs per code pair (q - z, then the scale), in the bf16 MMA
        assert (got["bf16x2"] >= 16 * 4 * R * 2) == bool(consts.get("BF16")), got
        # PDL: one wait before the first load; the next grid released once, after the main loop (its last MMA)
        assert got["gdc"] == got["release"] == int(bool(consts.get("PDL"))), got
        assert got["release_after_mma"] or not consts.get("PDL"), got
        # nothing read before the wait unless the configuration starts early: 1 the first step's 16-byte word loads
        # (and the scales'), 2 only L2 prefetches of the weight lines: one per row and 128-byte line (two rows per
        # lane and row group; 8-bit codes' steps are two lines), each issued by one lane of four (a predicate)
        early = consts.get("EARLY", 0) if consts.get("PDL") else 0
        assert (got["loads_before_wait"] >= 4 * R) if early == 1 else got["loads_before_wait"] == 0 or not consts.get("PDL"), got
        lines = 2 * R * (2 if consts.get("W8") else 1) if early == 2 else 0
        assert got["prefetch_before_wait"] == got["predicated_prefetch"] == lines, got
        if consts.get("FP"):  # E2M1: one scale multiply per code pair (64 per row group)
            assert got["hmul2"] == 64 * R, got
        if consts.get("FP") == 1:  # MXFP4: a byte permute per sigma pair (4 pairs x 2 rows per row group and tile)
            assert got["prmt"] >= 8 * R and got["cvt"] == 0, got
        if consts.get("FP") == 2:  # NVFP4: a hardware E4M3 pair conversion per scale pair (x 2 word halves)
            assert got["cvt"] == 16 * R, got
            # SV: each row's 16 scale bytes of a step as one 16-byte load (two rows a lane; the row split's prefetch
            # loads the next step's with its words, ks loads them in the step)
            words = 4 * R * (2 if consts["PF"] else 1)
            scales = 2 * R * (2 if consts["PF"] and not consts.get("KS") else 1)
            assert (got["v4"] >= words + scales) == bool(consts.get("SV")), got
        if consts.get("W8"):  # 8-bit codes: four 16-byte loads per row and step, a byte permute per code pair
            assert got["v4"] >= 8 * R and got["prmt"] >= 64 * R, got
        # one token tile: the weight words leave L1 first (the activations stay); two tiles: plain loads unless EF
        assert (got["evict_first"] >= 4 * R) == consts.get("EF", NT == 1), got
        if consts.get("KS") and consts["PF"]:  # a step's words and the next step's: two sets of 16-byte loads
            assert got["v4"] >= 8 * R, got
        cl = consts.get("CL", 1)
        if cl > 1:  # the cluster split: no workspace counter; one relaxed arrival before any load, then the phases
            # (the remote stores of ranks > 0 and rank 0's reads sit in two branches, each with its arrive and waits)
            assert got["atom"] == 0 and 0 <= got["cluster_start"] < got["first_load"], got
            assert got["remote_store"] == got["mapa"] == got["predicated_remote_store"] == 4 * NT * R, got  # (a D register per row group)
            assert got["exchange_load"] == 4 * NT * R * (cl - 1), got
            assert got["cluster_arrive"] >= 2 and got["cluster_wait"] >= 2, got
        else:
            assert got["cluster_arrive"] == got["remote_store"] == 0, got
        if consts.get("KS") and consts.get("PX"):  # the pairs: two 16-byte loads a code pair (XH: all 8 of the step
            # before the first MMA), no two-byte activation loads
            assert got["x_before_mma"] == 0 and got["v4_before_mma"] >= (8 if consts.get("XH") else 2), got
        elif consts.get("KS"):  # XH: the step's 64 two-byte activation loads (8 pairs x lo / hi x 4) before the first
            # MMA, beside the scales'; without it only the first code pair's 16
            assert (got["x_before_mma"] >= 64) == bool(consts.get("XH")), got
            # FULL: no predicated load up to the last MMA (words and activations unmasked)
            assert (got["masked_in_loop"] == 0) == bool(consts.get("FULL")), got



def test_cluster_splits_are_a_configurations_choice_where_the_device_takes_them(monkeypatch):
    """``cl``: a configuration's split over programs becomes one thread-block cluster per row block -- no workspace,
    no counter -- where the launcher does clusters on the device (sm_90+ compiled CUDA; never on CPU tensors), the
    split is 2..16 programs and rank 0's exchange buffer fits; anywhere else the same split goes through the workspace
    (the same sums)."""
    w = torch.zeros(4096, 2048, dtype=torch.int32)  # K = 16384: 64 steps
    x1, x16 = torch.zeros(1, 16384, dtype=torch.float16), torch.zeros(16, 16384, dtype=torch.float16)

    def plan(x, **cfg):
        y, p = km._plan(x, w, dict(dict(kernel="mmv", R=1, warps=4, split_k=4, cl=True), **cfg), None, 4)
        return p.split, p.cl, p.ws is y

    assert not km._fast.clusters_ok(x1) and plan(x1) == (4, 1, False)  # CPU: the workspace split
    monkeypatch.setattr(km._fast, "clusters_ok", lambda x: True)
    assert plan(x1) == (4, 4, True) and plan(x16) == (4, 4, True)
    assert plan(x1, cl=False) == (4, 1, False) and plan(x1, split_k=1) == (1, 1, True)
    assert plan(x1, split_k=16) == (16, 16, True)  # 15 slots of 4 registers x 128 threads: 30 KB
    assert plan(x16, split_k=16) == (16, 1, False)  # two token tiles: 60 KB, past MAX_EXCHANGE
    assert plan(x1, split_k=32) == (32, 1, False)  # past the largest cluster
    # no workspace for this split (its counters or offsets would overflow): no split at all, and no cluster either
    monkeypatch.setattr(km_tc, "split_fits", lambda *a: False)
    assert plan(x1, cl=False) == (1, 1, True) and plan(x1, split_k=32) == (1, 1, True)
    assert plan(x16, split_k=8) == (8, 8, True)  # 7 slots of 8 registers x 128 threads: 28 KB
    # M <= 2: the lanes of tokens 0 / 1 alone (a quarter of the threads) store, so the buffer is a quarter as large
    assert km.exchange_bytes(16, 2, 1, 4) * 4 == km.exchange_bytes(16, 3, 1, 4) == 15 * 4 * 128 * 4 <= km.MAX_EXCHANGE
    assert km.MAX_EXCHANGE < km.exchange_bytes(16, 16, 1, 4)
    base = (1, 4, False, True, False, True, False, False, False, 0, False)  # one token tile, no workspace, PDL
    consts, key, _ = km._statics(*base, cl=4)
    assert consts["CL"] == 4 and not consts["USE_SPLIT"] and not consts["XQ0"] and key != km._statics(*base)[1]
    assert km._statics(*base, cl=4, xq0=True)[0]["XQ0"]



def test_a_refused_cluster_launch_falls_back_to_the_workspace_split_for_good(monkeypatch):
    """Where Triton's internals or the driver refuse a cluster launch (RuntimeError), ``mmv`` turns clusters off for
    the process (``launch.status`` says why) and launches the same split through the workspace instead: the call
    still gives its output, later plans never take a cluster."""
    w = torch.zeros(4096, 2048, dtype=torch.int32)
    x = torch.zeros(1, 16384, dtype=torch.float16)
    monkeypatch.setitem(km._fast._state, "clusters", True)  # (as on an sm_90 device: clusters_ok reads this flag)
    monkeypatch.setitem(km._fast._state, "clusters_why", "")  # (both restored after the test)
    monkeypatch.setattr(km._fast, "clusters_ok", lambda x: km._fast._state["clusters"])
    y, plan = km._plan(x, w, dict(kernel="mmv", R=1, warps=4, split_k=4, cl=True), None, 4)
    assert plan.cl == 4 and plan.ws is y
    launched = []

    def fake_launch(fn, grid, tensors, ints, floats, consts, key, options, out, cluster=1, cluster_shared=0):
        if cluster > 1:
            raise RuntimeError("cluster launch: unexpected launch metadata (1, 2, 3, 4)")
        launched.append((grid, consts["USE_SPLIT"], consts["CL"], tensors[6] is not y))

    monkeypatch.setattr(km._fast, "launch", fake_launch)
    monkeypatch.setattr(km, "pdl_ok", lambda x: False)
    s = torch.zeros(128, 4096, dtype=torch.float16)
    km._launch(plan, (x, w, s, s, x, y, y), (0, 127, 0, 0), 1.0, y, False, False, False, 0, False)
    assert launched == [((plan.blocks, 4), True, 1, True)]  # the workspace split, with its workspace
    assert km._fast._state["clusters"] is False and "unexpected launch metadata" in km._fast.status()
    assert km._plan(x, w, dict(kernel="mmv", R=1, warps=4, split_k=4, cl=True), None, 4)[1].cl == 1

if __name__ == "__main__":  # the compile check's subprocess
    if sys.argv[1:] == ["compile-mmv"]:
        for name, consts, warps, cap in COMPILE_JOBS:
            print(json.dumps(compile_mmv(name, consts, warps, cap)), flush=True)


def test_ks_drops_its_masks_only_where_every_warp_has_a_whole_step_inside_its_split():
    assert km.ks_unmasked(4096, 16, 16, 1, 4) and km.ks_unmasked(4096, 16, 16, 1, 8)
    assert km.ks_unmasked(4096, 16, 8, 2, 4)  # two splits of 8 steps
    assert not km.ks_unmasked(4096, 16, 6, 3, 4)  # splits of 6, 6, 4 steps: 6 is no multiple of 4
    assert not km.ks_unmasked(2304, 9, 9, 1, 4)  # 9 steps over 4 warps: the last round is partial
    assert not km.ks_unmasked(1184, 5, 5, 1, 1)  # a partial last step (K not a multiple of 256)


def test_hoisted_activations_ride_on_ks_and_the_register_budget_reaches_the_compile():
    """``xh`` (a step's activation loads first) applies where the warps split K (M <= 8); ``maxnreg`` becomes the
    compile option and part of the launch class's key, so two budgets never share a cached launcher."""
    w = torch.zeros(12288, 384, dtype=torch.int32)
    cfg = dict(kernel="mmv", R=1, warps=8, pf=False, split_k=1, ks=True, xh=True, maxnreg=128)
    def plan(M, **over):
        p = km._plan(torch.zeros(M, 3072, dtype=torch.float16), w, dict(cfg, **over), None, 8)[1]
        return p.xh, p.maxnreg

    assert plan(1) == (True, 128) and plan(9) == (False, 128) and plan(1, ks=False) == (False, 128)  # (9: row split)
    base = (1, 8, False, True, False, True, False, False, False, 0, False, False, True)  # ... ks, with PDL
    consts, key, opts = km._statics(*base, True, 128)
    assert consts["XH"] and opts == {"num_warps": 8, "launch_pdl": True, "maxnreg": 128}
    consts0, key0, opts0 = km._statics(*base, True, 0)
    assert "maxnreg" not in opts0 and key0 != key and consts0 == consts


def test_prefetch_rides_on_ks_as_configured_and_evict_first_is_one_token_tiles_unless_asked():
    """``pf`` with ``ks``: the next step's words a step ahead, off unless the configuration says so (every stored ``ks``
    entry before it ran without); ``ef``: evict_first weight loads, always at one token tile (M <= 8), at two only
    where the configuration asks."""
    w = torch.zeros(12288, 384, dtype=torch.int32)
    x1, x16 = torch.zeros(1, 3072, dtype=torch.float16), torch.zeros(16, 3072, dtype=torch.float16)

    def plan(x, **cfg):
        p = km._plan(x, w, dict(kernel="mmv", R=1, warps=8, split_k=1, **cfg), None, 8)[1]
        return p.pf, p.ks, p.ef

    assert plan(x1, ks=True) == (False, True, True) and plan(x1, ks=True, pf=True) == (True, True, True)
    assert plan(x16, ks=True) == (True, False, False)  # M = 16: the row split, prefetching by default
    assert plan(x16, pf=False, ef=True) == (False, False, True) and plan(x1, ef=False) == (True, False, True)
    base = (1, 4, True, False, True, False, False, False, False, 0, False)  # two token tiles, split, no PDL
    on, off = km._statics(*base, ef=True), km._statics(*base, ef=False)
    assert on[0]["EF"] and not off[0]["EF"] and on[1] != off[1]  # two launch classes


def test_early_weight_reads_are_a_configurations_choice_and_need_programmatic_dependent_launch():
    """``early`` (1: the first step's words loaded before the grid-dependency wait, 2: prefetched into L2) is the plan's
    element, 0 unless asked; without PDL there is no wait to run ahead of, so the launch class is the plain one."""
    w = torch.zeros(12288, 384, dtype=torch.int32)
    x1 = torch.zeros(1, 3072, dtype=torch.float16)
    assert km._plan(x1, w, dict(kernel="mmv", R=1, warps=4, split_k=1), None, 8)[1].early == 0
    assert km._plan(x1, w, dict(kernel="mmv", R=1, warps=4, split_k=1, early=2), None, 8)[1].early == 2
    with pytest.raises(QuantLinearError, match="early=3 is none of 0, 1, 2"):  # (it would skip the wait altogether)
        km._plan(x1, w, dict(kernel="mmv", R=1, warps=4, split_k=1, early=3), None, 8)
    base = (1, 4, True, True, True)  # one token tile, split over programs
    rest = (False, False, False, False, 0, False)
    with_pdl = km._statics(*base, True, *rest, early=1)
    assert with_pdl[0]["EARLY"] == 1 and with_pdl[1] != km._statics(*base, True, *rest)[1]
    assert km._statics(*base, False, *rest, early=2) == km._statics(*base, False, *rest)  # no PDL: EARLY 0
    # the CUDA layers that run mmv declare it, so every write of their tensors is waited for at load time; the shared
    # Triton bases (ROCm's layers too, where mmv never runs) do not
    from quantlinear_cuda.kernels.triton_fp import TritonFPLinear
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear
    from quantlinear_triton.fp_layers import FloatTritonBase
    from quantlinear_triton.layers import TritonSlabBase
    assert TritonWNA16Linear.reads_weights_early and TritonFPLinear.reads_weights_early
    assert not (TritonSlabBase.reads_weights_early or FloatTritonBase.reads_weights_early)


@pytest.mark.skipif(not km.HAS_GLUON, reason="needs Triton's Gluon")
@pytest.mark.parametrize("variant", ["int-fp16", "int-bf16-asym-bias", "mxfp4", "nvfp4-rows"])
def test_every_mmv_launch_can_take_the_direct_launcher(monkeypatch, variant):
    """Each launch passes the runtime arguments then constexprs the direct launcher can cache (every constexpr given
    or at its default).  When the float variants added ``FP`` / ``HAS_ROWS``, the int launch stopped passing a full
    set and every int ``mmv`` call went through ``kernel[grid]`` (+30-45 us of host time per call)."""
    from quantlinear_triton import launch as fl

    seen = []
    monkeypatch.setattr(km._fast, "launch", lambda fn, grid, tensors, ints, floats, consts, *a: seen.append(
        (fn, tensors, ints, floats, consts)))
    N, K = 96, 512
    w = torch.zeros(N, K // 8, dtype=torch.int32)
    cfg = dict(kernel="mmv", R=1, warps=4, pf=True, split_k=1)
    dt = torch.bfloat16 if "bf16" in variant else torch.float16
    x = torch.zeros(3, K, dtype=dt)
    if variant.startswith("int"):
        s = torch.ones(K // 128, N, dtype=torch.float16)
        z = torch.zeros(K // 128, N // 8, dtype=torch.int32) if "asym" in variant else None
        km.launch_mmv(x, w, s, z, torch.zeros(N, dtype=dt) if "bias" in variant else None, 128, 8.0, cfg)
    else:
        nv = variant.startswith("nv")
        sig = torch.zeros(N, K // 64 if nv else K // 128, dtype=torch.int32)
        rows = torch.ones(N, dtype=torch.float32) if "rows" in variant else None
        km.launch_mmv_fp(x, w, sig, rows, None, 1.0, cfg, nv=nv)
    (fn, tensors, ints, floats, consts), = seen
    assert fl._check_order(fn, tensors, ints, floats, consts), sorted(consts)
    assert set(consts) == {p.name for p in fn.params if p.is_constexpr}  # every one said, none left to a default

