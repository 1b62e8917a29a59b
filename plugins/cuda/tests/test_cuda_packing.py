"""The slab-interleaved and tinygemm layouts, checked against their definitions (pure torch)."""

import pytest
import torch

from quantlinear import Scheme
from quantlinear.benchutil import random_int_weights
from quantlinear_triton import packing


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("slab", [16, 32])
@pytest.mark.parametrize("K", [96, 320, 1000])
def test_pack_unpack_roundtrip_and_definition(bits, slab, K):
    N = 21  # one whole group of 16 rows and a short one of 5
    g = torch.Generator().manual_seed(bits * 1000 + slab + K)
    q = torch.randint(0, 2**bits, (N, K), generator=g, dtype=torch.int32).to(torch.uint8)
    words = packing.pack_codes(q, bits, slab, chunk_rows=2)
    vpw = packing.values_per_word(bits)
    T = slab * vpw
    KW = -(-K // T) * slab
    assert words.dtype == torch.int32
    assert words.shape == (N, KW)
    assert torch.equal(packing.unpack_codes(words, bits, slab, K), q)
    # the definition: word p of row n's tile t holds channel t*T + j*slab + p at bit j*bits; rows are stored in groups
    # of 16 (the last one short), each tile-major: row n's tile t lies in the run that starts at 16*g*KW + t*h*slab,
    # a full group's 32-word tiles in load order (row r's word p at 256*(r//8) + 16*(r%8) + 128*(p//16) + p%16), any
    # other tile's rows one after the other (r*slab + p)
    flat = words.reshape(-1).to(torch.int64) & 0xFFFFFFFF
    for n, k in [(0, 0), (1, K - 1), (4, K // 2), (3, min(K - 1, T + slab + 1)), (9, min(K - 1, T + 20)), (15, K - 1),
                 (17, K - 1), (20, min(K - 1, T + 3))]:
        t, rem = divmod(k, T)
        j, p = divmod(rem, slab)
        grp, h, r = n // 16, (16 if n < 16 else N - 16), n % 16
        inner = 256 * (r // 8) + 16 * (r % 8) + 128 * (p // 16) + p % 16 if (h == 16 and slab == 32) else r * slab + p
        code = (int(flat[16 * grp * KW + t * h * slab + inner]) >> (j * bits)) & ((1 << bits) - 1)
        assert code == int(q[n, k])
    # word_offsets (what the kernels compute) agrees, and the row-major copy is the plain [N, KW] matrix
    rm = packing.row_major_words(words, slab)
    base, step, hop = packing.word_offsets(torch.arange(N), N, KW, slab)
    assert hop.tolist() == [112 if slab == 32 else 0] * 16 + [0] * 5
    cols = torch.arange(slab)
    for t in range(KW // slab):
        at = (base + t * step)[:, None] + cols + hop[:, None] * (cols // 16)
        assert torch.equal(words.reshape(-1)[at], rm[:, t * slab:(t + 1) * slab])
    # padding codes are zero
    if K % T:
        padded = packing.unpack_codes(words, bits, slab, words.shape[1] // slab * T)
        assert int(padded[:, K:].max()) == 0


@pytest.mark.parametrize("bits,group,sym", [(4, 128, True), (4, 32, False), (3, 64, False), (8, -1, False), (2, 64, True)])
def test_dequantize_slabs_matches_reference(bits, group, sym):
    K, N = 256, 64
    sc = Scheme(bits=bits, group_size=group, sym=sym)
    w = random_int_weights(K, N, sc, seed=3)
    gs = sc.group_size_for(K)
    slab = packing.choose_slab(gs, K)
    meta = packing.SlabMeta(bits, slab, gs, K, N)
    zc = packing.constant_zero(w.zeros)
    assert (zc is not None) == sym
    zeros = None if zc is not None else packing.pack_zeros(w.zeros)
    scales = packing.pack_scales(w.scales)
    assert scales.dtype == torch.float16 and scales.shape == (sc.num_groups(K), N)
    got = packing.dequantize_slabs(packing.pack_codes(w.qweight, bits, slab), scales, zeros, zc or 0, meta)
    assert torch.equal(got, w.dequantize(gs))


def test_pack_zeros_dtype():
    z = torch.tensor([[0, 255], [3, 4]], dtype=torch.int16)
    assert packing.pack_zeros(z).dtype == torch.uint8
    assert torch.equal(packing.pack_zeros(z).to(torch.int16), z.t())
    z2 = torch.tensor([[0, 256]], dtype=torch.int16)  # GPTQ v1 8-bit zero 255 + 1
    assert packing.pack_zeros(z2).dtype == torch.int16


def test_choose_slab_and_slabs_per_group():
    assert packing.choose_slab(128, 4096) == 32
    assert packing.choose_slab(48, 4096) == 16
    assert packing.choose_slab(4096, 4096) == 32
    assert packing.choose_slab(40, 4096) is None
    # 4-bit: tile = 256 channels
    assert packing.slabs_per_group(4, 32, 32, 4096) == 1
    assert packing.slabs_per_group(4, 32, 128, 4096) == 4
    assert packing.slabs_per_group(4, 32, 4096, 4096) == 8  # per channel
    # 2-bit: tile = 512 channels; 8-bit: tile = 128
    assert packing.slabs_per_group(2, 32, 1024, 4096) == 16
    assert packing.slabs_per_group(8, 32, 128, 4096) == 4
    # 3-bit: tile = 320 channels: groups of 128 straddle tiles -> per slab
    assert packing.slabs_per_group(3, 32, 128, 4096) == 1
    assert packing.slabs_per_group(3, 32, 64, 4096) == 2
    for bits in (2, 3, 4, 8):
        for g in (32, 64, 128, 4096):
            spg = packing.slabs_per_group(bits, 32, g, 4096)
            vpw = packing.values_per_word(bits)
            assert vpw % spg == 0  # a group run always ends inside the tile


def test_tinygemm_layout_and_zero_conversion():
    K, N = 256, 16
    sc = Scheme(bits=4, group_size=128, sym=False)
    w = random_int_weights(K, N, sc, seed=5)
    nib = packing.tinygemm_nibbles(w.qweight)
    assert nib.shape == (N, K // 2) and nib.dtype == torch.uint8
    assert torch.equal(nib >> 4, w.qweight[:, 0::2]) and torch.equal(nib & 0xF, w.qweight[:, 1::2])  # even k high
    og = packing.tinygemm_group(128)
    sz = packing.tinygemm_scales_and_zeros(w, 128, og, torch.float32)
    assert sz.shape == (K // og, N, 2)
    # tinygemm's formula w = (q - 8) * s + zero reproduces (q - z) * s
    gi = torch.arange(K) // og
    s, zero = sz[gi, :, 0].t(), sz[gi, :, 1].t()
    emulated = (w.qweight.float() - 8) * s + zero
    assert torch.allclose(emulated, w.dequantize(128), rtol=0, atol=1e-6)
    # per-channel splits into repeated sub-groups
    assert packing.tinygemm_group(4096) == 256 and packing.tinygemm_group(96) == 32 and packing.tinygemm_group(48) is None
    assert packing.tinygemm_inner_k_tiles(4096) == 8 and packing.tinygemm_inner_k_tiles(96) == 2
