"""The large-M tensor-core kernel (:mod:`quantlinear_triton.kernels_tc`) against the fp32 reference.

Without a GPU it runs in Triton's interpreter (the root conftest sets TRITON_INTERPRET=1) on CPU
tensors in fp16 (the interpreter mis-loads bf16); with a GPU the same tests run compiled.  Shapes
are small and odd on purpose: M and N not multiples of the tiles, K not a multiple of a tile.
"""

import pytest
import torch

from quantlinear_triton.packing import SlabMeta, choose_slab, dequantize_slabs, pack_codes

GPU = torch.cuda.is_available()
DEV = torch.device("cuda") if GPU else torch.device("cpu")


def tc():
    from quantlinear_triton import kernels_tc

    return kernels_tc


def layer(bits, K, N, group, sym, seed=0):
    g = torch.Generator().manual_seed(seed)
    gs = K if group == -1 else group
    slab = choose_slab(gs, K)
    G = -(-K // gs)
    codes = torch.randint(0, 1 << bits, (N, K), generator=g, dtype=torch.int32).to(torch.uint8)
    qw = pack_codes(codes, bits, slab)
    s = (torch.rand(G, N, generator=g) * 0.02 + 0.001).to(torch.float16)
    z = None if sym else torch.randint(0, 1 << bits, (G, N), generator=g, dtype=torch.int32).to(torch.uint8)
    zp = 1 << (bits - 1)
    meta = SlabMeta(bits, slab, gs, K, N)
    W = dequantize_slabs(qw, s, z, zp, meta)
    return qw.to(DEV), s.to(DEV), (z.to(DEV) if z is not None else None), zp, slab, gs, W


def run(bits, M, K, N, group, sym, bias, cfg, dtype=torch.float16, seed=0):
    qw, s, z, zp, slab, gs, W = layer(bits, K, N, group, sym, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, K, generator=g).to(dtype)
    b = (torch.randn(N, generator=g) * 0.1).to(dtype) if bias else None
    ref = x.float() @ W.t()
    if b is not None:
        ref = ref + b.float()
    y = tc().launch_tc(x.to(DEV), qw, s, z, b.to(DEV) if b is not None else None, bits, slab, gs, K, zp, cfg)
    assert y.shape == (M, N) and y.dtype == dtype
    err = float((y.float().cpu() - ref).abs().max() / ref.abs().max())
    return err


SMALL = {"BN": 64, "BM": 64, "warps": 4, "stages": 2, "group_m": 4}

CASES = [
    # bits, M, K, N, group, sym, bias, cfg overrides
    (4, 64, 256, 64, 128, True, False, {}),  # whole tile per k-step, one group per half tile
    (4, 130, 512, 192, 128, False, True, {}),  # asym, bias, M and N tails
    (4, 70, 384, 96, 32, True, True, {}),  # groups of one slab: per-plane scales; K tail (384 = 1.5 tiles)
    (4, 66, 512, 80, 64, False, False, {}),  # groups of two slabs, asym
    (4, 65, 320, 64, -1, False, False, {}),  # per-channel, K tail
    (4, 64, 512, 128, 128, True, False, {"dq": 0, "BK": 128}),  # half a tile per k-step, one group per k-step
    (4, 96, 512, 64, 64, False, True, {"dq": 0, "BK": 64}),  # quarter-tile k-steps, asym, groups of 2 slabs
    (4, 64, 256, 64, 32, True, False, {"dq": 0, "BK": 256}),  # whole tile, per-slab groups
    (8, 80, 256, 72, 128, False, True, {"BK": 128}),  # 8-bit, whole tile (T = 128)
    (7, 64, 256, 64, -1, True, False, {"BK": 128}),  # 7-bit (VPW 4), per channel
    (5, 64, 384, 64, 32, False, False, {"BK": 128}),  # 5-bit (VPW 6): two planes per k-step, per-plane groups
    (2, 64, 512, 64, 128, True, False, {"BK": 128}),  # 2-bit, half a tile
    (3, 64, 320, 64, 64, False, False, {"BK": 64}),  # 3-bit (VPW 10): two planes per k-step
    (4, 130, 512, 128, 128, True, False, {"split_k": 2}),  # split-K through the workspace
    (4, 128, 512, 128, 128, False, True, {"BK": 64, "prefetch": 0}),  # Triton's pipeline loads words/scales; no tails
    (4, 64, 384, 64, 32, False, False, {"BK": 64, "split_k": 3}),  # k-steps of two planes, odd split, K tail
]


@pytest.mark.parametrize("bits,M,K,N,group,sym,bias,over", CASES)
def test_tc_matches_reference(bits, M, K, N, group, sym, bias, over):
    err = run(bits, M, K, N, group, sym, bias, dict(SMALL, **over))
    assert err < 2e-3, err


def test_tc_default_config_and_resolve():
    k = tc()
    # the default configuration: paired fp16 for 4-bit fp16 at BK = T, fp32 otherwise
    r = k._resolve(None, 4, 32, 128, 4096, torch.float16, True)
    assert (r["PL"], r["GROUPS"], r["ASM"]) == (8, 2, 1)  # BK 256: a group per half
    r = k._resolve(None, 4, 32, 128, 4096, torch.bfloat16, True)
    assert (r["PL"], r["GROUPS"], r["ASM"]) == (8, 2, 0)
    r = k._resolve({"BK": 128}, 4, 32, 128, 4096, torch.float16, True)
    assert (r["PL"], r["GROUPS"], r["ASM"], r["GS"]) == (4, 2, 1, 128)  # halves: planes 0-1 / 4-5, then 2-3 / 6-7
    r = k._resolve({"BK": 64, "dq": 2}, 4, 32, 256, 4096, torch.bfloat16, True)
    assert (r["PL"], r["GROUPS"], r["ASM"]) == (2, 1, 2)
    r = k._resolve({"BK": 64}, 4, 32, 4096, 4096, torch.bfloat16, False)
    assert (r["GROUPS"], r["GS"], r["ASM"]) == (1, 0, 0)  # per channel; no inline assembly off CUDA
    r = k._resolve({"BK": 256}, 4, 32, 32, 4096, torch.float16, True)
    assert (r["PL"], r["GROUPS"]) == (8, 0)
    r = k._resolve({"BK": 256}, 3, 32, 64, 4096, torch.float16, True)
    assert r["PL"] == 2  # VPW 10: the largest power of two dividing it
    assert k.tc_fits(4) and k.tc_fits(3) and k.tc_fits(8) and not k.tc_fits(6)
    err = run(4, 64, 256, 64, 128, True, False, None)  # DEFAULT_CFG (BN 128 BM 128) on a small layer
    assert err < 2e-3, err


@pytest.mark.skipif(not GPU, reason="bf16 needs compiled kernels (the interpreter mis-loads bf16)")
@pytest.mark.parametrize("dq,sym,group", [(0, True, 128), (2, True, 128), (2, False, 64), (1, False, 32)])
def test_tc_bf16(dq, sym, group):
    # dq 2: bf16x2 pairs with the scale rounded to bf16 (two roundings per weight); dq 1 falls back to fp32 in bf16
    err = run(4, 130, 512, 192, group, sym, True, dict(SMALL, BK=64, dq=dq), dtype=torch.bfloat16)
    assert err < 1.2e-2, err


def test_tc_fp32_and_default_config():
    # fp32 activations: fp32 dequantization and ieee dots
    err = run(4, 64, 256, 64, 128, False, True, dict(SMALL, BK=64), dtype=torch.float32)
    assert err < 1e-5, err
    k = tc()
    assert k.default_config(256, 4096, torch.float16)["split_k"] == 2  # 64 output tiles < 132 SMs
    c = k.default_config(4096, 14336, torch.bfloat16)
    assert c["split_k"] == 1 and c["dq"] == 2 and c["BK"] == 256
    assert k.default_config(4096, 14336, torch.bfloat16, bf16_pairs=False)["dq"] == 0
