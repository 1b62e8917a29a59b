"""The GGUF Triton kernels and their repacking, against llama.cpp's own dequantization (``gguf.quants``).

Runs in Triton's interpreter on CPU tensors (the root conftest sets TRITON_INTERPRET=1 without a
GPU), fp16/fp32 only (the interpreter mis-loads bf16); on a CUDA machine the same kernels run
compiled.  Shapes are small but cover a partial GEMV tile (32-channel types with K not a multiple
of 256), rows beyond the last full tile, split-K, bias, and every kernel (GEMV, tensor-core dot,
dequantize-then-matmul).
"""

import pytest
import torch

from quantlinear.gguf_random import random_gguf_weights
from quantlinear_triton import gguf_packing as gp
from quantlinear_triton.gguf_tune import GGUFProblem

gguf = pytest.importorskip("gguf", reason="the gguf package (llama.cpp's gguf-py) is the reference")

DEV = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
TYPES = list(gp.SUPPORTED)
TOL = {torch.float32: 2e-5, torch.float16: 1e-3}


def reference_weight(qtype: str, data: torch.Tensor) -> torch.Tensor:
    """llama.cpp's fp32 dequantization (gguf-py is bit-identical to ggml-quants.c)."""
    return torch.from_numpy(gguf.quants.dequantize(data.cpu().numpy(), gguf.GGMLQuantizationType[qtype]).copy())


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def any_finite_fp16_blocks(qtype: str, K: int, N: int, seed: int) -> torch.Tensor:
    """Blocks whose every byte is random, fp16 scale fields included (any finite value: subnormal, negative, zero)."""
    from quantlinear.gguf_quants import SCALE_FIELDS

    t = gguf.quants.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    block, size = t
    g = torch.Generator().manual_seed(seed)
    b = torch.randint(0, 256, (N, K // block, size), generator=g, dtype=torch.int32).to(torch.uint8)
    for _, off in SCALE_FIELDS[qtype]:
        hi = b[..., off + 1]
        b[..., off + 1] = torch.where((hi & 0x7C) == 0x7C, hi & 0x83, hi)  # exponent 31 (inf/NaN) -> 0
    return b.reshape(N, -1).contiguous()


# ---- repacking --------------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", TYPES)
def test_repacked_dequantization_is_llama_cpp_bit_for_bit(qtype):
    for data in (random_gguf_weights(qtype, 512, 24, seed=3).data, any_finite_fp16_blocks(qtype, 512, 24, seed=4)):
        p = gp.repack(qtype, data, 512, chunk_rows=10)  # chunked: rows 0-9, 10-19, 20-23
        assert same_bits(gp.dequantize_packed(p), reference_weight(qtype, data))
        assert gp.dequantize_raw(qtype, data, 512).shape == (24, 512)


@pytest.mark.parametrize("qtype", TYPES)
def test_repacked_scales_are_exact(qtype):
    """A / B per sub-block (the kernels' scale and offset) equal fp64 products of the file's fields."""
    data = any_finite_fp16_blocks(qtype, 256, 8, seed=5)
    p = gp.repack(qtype, data, 256)
    A, B = gp.sub_scales(p)
    u = gp.unpack_codes(p).double()
    W = reference_weight(qtype, data).double()
    group = 256 // A.shape[1]
    Ar = A.double().repeat_interleave(group, 1)
    if B is None:
        exact = Ar * (u - gp.OFFSET[qtype])
    else:
        exact = Ar * u + B.double().repeat_interleave(group, 1)
    # llama.cpp's fp32 result is the exact value rounded once
    assert torch.equal(exact.float(), W.float())


def test_packed_sizes_match_the_file():
    for qtype in TYPES:
        t = gguf.quants.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
        p = gp.repack(qtype, random_gguf_weights(qtype, 512, 8).data, 512)
        file_bytes = 8 * 512 // t[0] * t[1]
        # per 256-channel block: Q4_K/Q5_K keep their 8+8 six-bit integers unpacked (+4 bytes), Q6_K widens d (+2)
        extra = {"Q4_K": 4, "Q5_K": 4, "Q6_K": 2}.get(qtype, 0) * 8 * 2
        assert p.nbytes() - file_bytes == extra, (qtype, p.nbytes(), file_bytes)
        assert p.qs.dtype == torch.int32 and p.qs.shape == (8, 512 // 32 * gp.CODES[qtype][1])


def test_unsupported_type_is_refused():
    with pytest.raises(ValueError, match="Q2_K"):
        gp.repack("Q2_K", torch.zeros(2, 84, dtype=torch.uint8), 256)


# ---- the kernels --------------------------------------------------------------------------------------
GEMV = {"kernel": "gemv", "BN": 16, "split_k": 1, "warps": 1}
GEMV_SPLIT = {"kernel": "gemv", "BN": 8, "split_k": 2, "warps": 1}  # rows per thread R = 2 (RT = 4)
DOT = {"kernel": "dot", "BM": 16, "BN": 32, "split_k": 1, "warps": 4, "stages": 2}
DOT_SPLIT = {"kernel": "dot", "BM": 16, "BN": 16, "split_k": 3, "warps": 4, "stages": 2}
DQMM = {"kernel": "dqmm", "BN": 16, "spp": 4}


def shape(qtype):
    # K-quants: 2 GEMV tiles; 32-channel types: 5 sub-blocks (a partial GEMV tile); N: 36 (partial row blocks)
    return (512 if gp.is_kquant(qtype) else 160), 36


def run(qtype, cfg, M, dtype, bias, seed=0):
    from quantlinear_triton.gguf_kernels import launch

    K, N = shape(qtype)
    data = random_gguf_weights(qtype, K, N, seed=seed).data
    p = gp.repack(qtype, data.to(DEV), K)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(M, K, generator=g).to(dtype).to(DEV)
    b = (torch.randn(N, generator=g) * 0.1).to(dtype).to(DEV) if bias else None
    out = torch.full((M, N), float("nan"), dtype=dtype, device=DEV)  # every element must be written
    y = launch(x, p.qs, p.qh, p.sm, p.bm, b, qtype, cfg, out=out if cfg["kernel"] != "dqmm" else None)
    ref = x.double().cpu() @ reference_weight(qtype, data).double().t()
    if bias:
        ref = ref + b.double().cpu()
    return y.double().cpu(), ref


def rel(y, ref):
    assert torch.isfinite(y).all()
    return float((y - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("qtype", TYPES)
def test_every_kernel_fp32(qtype):
    for cfg, M, bias in ((GEMV, 1, True), (GEMV_SPLIT, 2, False), (DOT, 5, False), (DOT_SPLIT, 17, True), (DQMM, 3, True)):
        y, ref = run(qtype, cfg, M, torch.float32, bias)
        assert rel(y, ref) < TOL[torch.float32], (qtype, cfg, M)


@pytest.mark.parametrize("qtype", TYPES)
def test_gemv_and_dot_fp16(qtype):
    for cfg, M in ((GEMV_SPLIT, 1), (DOT, 3)):
        y, ref = run(qtype, cfg, M, torch.float16, bias=True)
        assert rel(y, ref) < TOL[torch.float16], (qtype, cfg, M)


GEMV16 = {"kernel": "gemv16", "BN": 16, "split_k": 1, "warps": 1}


@pytest.mark.parametrize("qtype", TYPES)
def test_gemv16_fp16(qtype):
    """The paired-fp16 GEMV (its pure-Triton schedule here: ASM is off in the interpreter), both dim orders,
    split-K, several rows of x per program (a partial last one), a partial K tile for the 32-channel types."""
    for cfg, M, bias in ((GEMV16, 1, True), (dict(GEMV16, sr=True, BN=8, split_k=2), 1, False),
                         (dict(GEMV16, sr=False, MR=2, hsum=True), 3, True), (dict(GEMV16, sr=True, MR=4, split_k=2), 2, False)):
        y, ref = run(qtype, cfg, M, torch.float16, bias)
        assert rel(y, ref) < TOL[torch.float16], (qtype, cfg, M)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0"])
def test_gemv16_config_runs_gemv_for_other_dtypes(qtype):
    """A gemv16 configuration on fp32 activations runs the general GEMV with the same tiles (fp32-exact)."""
    from quantlinear_triton.gguf_kernels import _static_args

    y, ref = run(qtype, dict(GEMV16, MR=2), 1, torch.float32, bias=True)
    assert rel(y, ref) < TOL[torch.float32]
    cfg = dict(GEMV16, MR=2)
    assert _static_args(cfg, qtype, 512, False, torch.float32)[1] == "gemv"
    assert _static_args(cfg, qtype, 512, False, torch.float16)[1] == "gemv16"


def test_gemv16_magic_words():
    """The fp16 pairs gemv16 adds after scaling the codes by 2**-k: -(1024 + C) * 2**-k (and -(1024 + 16 C) * 2**-k for the
    4-bit types' odd fields), with k such that a fp16 sum of the products of any finite fp16 activations cannot overflow."""
    from quantlinear_triton.gguf_kernels import _zh, gemv16_shift

    def halves(v):
        return torch.tensor([v & 0xFFFF, (v >> 16) & 0xFFFF], dtype=torch.int32).to(torch.int16).view(torch.float16).tolist()

    for qtype, c, k, k_hsum in (("Q4_0", 8, 5, 7), ("Q4_K", 8, 5, 7), ("Q5_K", 16, 6, 8), ("Q6_K", 32, 3, 5), ("Q8_0", 128, 4, 7),
                                ("Q4_1", 8, 5, 7), ("Q5_0", 16, 6, 8)):
        assert (gemv16_shift(qtype, False), gemv16_shift(qtype, True)) == (k, k_hsum), qtype
        for shift in (k, k_hsum):
            zh, zh16 = _zh(qtype, shift)
            assert halves(zh) == [-(1024.0 + c) * 2.0 ** -shift] * 2, qtype
            if gp.CODES[qtype][0] == 4:
                assert halves(zh16) == [-(1024.0 + 16 * c) * 2.0 ** -shift] * 2, qtype
        # the bound: products per fp16 sum x max |u - C| (the activations / 16 for 6- and 8-bit codes) x 2**-k <= 1
        LB, HB = gp.CODES[qtype][1], gp.CODES[qtype][2]
        dmax = 2 ** (LB + HB - 1) / (16 if LB + HB >= 6 else 1)
        assert (32 // LB) // 2 * dmax * 2.0 ** -k <= 1 and (32 // LB) // 2 * LB * dmax * 2.0 ** -k_hsum <= 1, qtype


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q5_0"])
def test_dequantize_kernel_is_llama_cpp_bit_for_bit(qtype):
    from quantlinear_triton.gguf_kernels import dequantize

    K, N = shape(qtype)
    data = any_finite_fp16_blocks(qtype, K, N, seed=7)
    p = gp.repack(qtype, data.to(DEV), K)
    W = dequantize(p.qs, p.qh, p.sm, p.bm, qtype, K, torch.float32, BN=16, spp=3).cpu()
    assert same_bits(W, reference_weight(qtype, data))


def test_split_k_reuses_counters():
    """Two split-K launches in a row: the last program of each tile resets its counter."""
    from quantlinear_triton.gguf_kernels import counters

    for _ in range(2):
        y, ref = run("Q4_K", DOT_SPLIT, 4, torch.float32, bias=False, seed=2)
        assert rel(y, ref) < TOL[torch.float32]
    assert int(counters(DEV).abs().sum()) == 0


def test_problem_keys_are_distinct_from_the_int_kernels():
    p = GGUFProblem("Q4_K", "float16", 4096, 4096)
    assert p.key(1) == "gguf|Q4_K|float16|N4096|K4096|M1" and p.k_tiles == 16 and p.subs == 128
    assert hash(p) == hash(GGUFProblem("Q4_K", "float16", 4096, 4096)) and p != GGUFProblem("Q5_K", "float16", 4096, 4096)
