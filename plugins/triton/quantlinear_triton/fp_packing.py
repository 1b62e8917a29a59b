"""Repacking canonical :class:`FloatWeights` (MXFP4/8, MXINT4, NVFP4, FP8) for the float Triton kernels.

Why a layout of our own: the kernels decode weights in registers, so the codes must arrive as
wide, coalesced loads whose elements pair with *contiguous* activation slices.

Layout (one int32 tensor ``[N, KW]``, "slab-interleaved" like the int kernels' but owned here)
------------------------------------------------------------------------------------------------
``VPW = 32 // bits`` codes share a word (4-bit elements: 8, FP8 bytes: 4).  Row ``n`` is cut along
K into tiles of ``T = SLAB * VPW`` channels; word ``p`` of tile ``t`` holds, at bit ``j * bits``,
the code of channel ``k = t*T + j*SLAB + p``.  One shift of a row's ``SLAB`` words ("plane"
``j``) gives ``SLAB`` consecutive channels, so the matching activations are one contiguous load.
``SLAB`` is the scale block (MX: 32, NVFP4: 16), so a plane is exactly one scale block and the
scale is one value per (row, plane); FP8 (one scale per row) uses ``SLAB = 32``.  K is padded to
whole tiles with code 0, which decodes to +0 for every element kind.  The byte order of the
codes is the checkpoint's: nothing is rounded or re-encoded.

Scales
------
* MX (``e8m0``): the checkpoint's E8M0 bytes, transposed to uint8 ``[G, N]`` (a block of rows
  reads them contiguously) and decoded in registers (``2**(e-127)``, exact).
* NVFP4 (``e4m3``): the E4M3 block-scale bytes as uint8 ``[G, N]``, decoded in registers
  (exact).  ``1 / weight_global_scale`` becomes a per-row fp32 factor (``row_scales``).
* FP8: the per-channel (or per-tensor, broadcast) scale as fp32 ``[N]`` (``row_scales``); with
  static FP8 activations the input scale is folded in (``weight_scale * input_scale`` in fp32).

Exactness (the reference is ``FloatWeights.dequantize``, in fp32)
-----------------------------------------------------------------
Every element decode is exact.  MX: ``value * 2**k`` is exact, so each weight the kernels use
equals the reference bit for bit.  FP8: the kernels accumulate ``x * value`` and multiply the
row's fp32 sum by its row scale once.  NVFP4: each element is multiplied by its E4M3 block
scale (exact: 2 x 4 significant bits) and the sum by ``1 / global_scale`` once, where AutoRound
rounds ``value / global_scale`` to fp32 first; both differ from the reference only by fp32
rounding (a few 2**-24 relative), never by a half-precision rounding of the weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantlinear import fpcodes
from quantlinear.errors import QuantLinearError
from quantlinear.formats import FloatWeights

from .packing import grouped_words, row_major_words

# ---- element codes the kernels take (constexpr ELEM) --------------------------------------------
E2M1, E0M4, E4M3, E5M2, E4M3_NV, E4M3_B8 = 0, 1, 2, 3, 4, 5
#: E4M3 decoded by the hardware: E4M3_NV = OCP e4m3fn (``tl.float8e4nv``, sm89+, gfx950, RDNA4);
#: E4M3_B8 = bytes converted to e4m3fnuz (``tl.float8e4b8``, gfx942), whose values are half the
#: e4m3fn ones (the kernel multiplies by 2).  E4M3 itself is an exact integer bit decode.
ELEMENT_CODES = {"e2m1": E2M1, "e0m4": E0M4, "e4m3": E4M3, "e5m2": E5M2}
ELEMENT_NAMES = {E2M1: "e2m1", E0M4: "e0m4", E4M3: "e4m3", E5M2: "e5m2", E4M3_NV: "e4m3nv", E4M3_B8: "e4m3b8"}
# ---- block-scale kinds (constexpr SCALE) ------------------------------------------------------------
S_NONE, S_E8M0, S_E4M3 = 0, 1, 2
# ---- activation quantization (constexpr ACT) ----------------------------------------------------------
A_NONE, A_MX_E2M1, A_MX_E4M3, A_NVFP4, A_FP8 = 0, 1, 2, 3, 4
#: ``+ A_RCEIL`` on an MX kind: shared exponents rounded up (``mx_fp_rceil``)
A_RCEIL = 8


def bits_of(elem: int) -> int:
    return 4 if elem in (E2M1, E0M4) else 8


def slab_for(scale: int, block: int) -> int:
    """Words per slab: the scale block for block-scaled layouts, else 32."""
    return block if scale != S_NONE else 32


def act_code(kind: tuple[str, dict] | None) -> tuple[int, int]:
    """``fpquant.act_quant_kind`` -> (ACT code, activation block size)."""
    if kind is None:
        return A_NONE, 0
    k, p = kind
    if k == "mx":
        code = A_MX_E2M1 if p["element"] == "e2m1" else A_MX_E4M3
        return code + (A_RCEIL if p["rceil"] else 0), int(p["block_size"])
    if k == "nvfp4":
        return A_NVFP4, int(p["block_size"])
    return A_FP8, 0


def act_block_reason(kind: tuple[str, dict] | None) -> str | None:
    """Why the activation kernel cannot take this block size (it loads power-of-two blocks)."""
    if kind is None or kind[0] == "fp8_static":
        return None
    b = int(kind[1]["block_size"])
    if b < 2 or b > 1024 or b & (b - 1):
        return f"activation group size {b} is not a power of two in [2, 1024] (the activation kernel loads whole blocks)"
    return None


@dataclass(frozen=True)
class FPMeta:
    """What the kernels need to know about a prepared layer besides its tensors."""

    elem: int
    scale: int
    block: int  # scale block (0: no block scales)
    in_features: int
    out_features: int
    act: int = A_NONE
    act_block: int = 0
    #: ``mmv``'s output factor (:func:`mx_sigma`); 0: the layer has no ``mmv_sigma`` (``mmv`` does not run it)
    mmv_mul: float = 0.0

    @property
    def bits(self) -> int:
        return bits_of(self.elem)

    @property
    def slab(self) -> int:
        return slab_for(self.scale, self.block)

    @property
    def tile_k(self) -> int:
        return self.slab * (32 // self.bits)

    @property
    def k_tiles(self) -> int:
        return -(-self.in_features // self.tile_k)


#: words of a row's tile in the grouped layout of 4-bit codes (one ``mmv`` step: 256 channels)
UNIT = 32


def pack_slabs(codes: torch.Tensor, bits: int, slab: int, *, chunk_rows: int = 2048) -> torch.Tensor:
    """uint8 codes ``[N, K]`` (4-bit values or bytes) -> int32 ``[N, KW]`` words in the slab layout.

    4-bit codes are stored in groups of 16 rows, each tile-major, as the int codes are (:mod:`.packing`), by units of
    :data:`UNIT` words (two 16-word NVFP4 slabs, one 32-word MXFP4 slab; K padded to whole units), so a group's step
    is one run of words.  8-bit codes stay row-major: the FP8 GEMM path hands their bytes to ``torch._scaled_mm`` as
    an ``[N, K]`` matrix.  :func:`row_major_slabs` undoes the order."""
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise QuantLinearError(f"codes must be a 2-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    N, K = codes.shape
    vpw = 32 // bits
    T = slab * vpw
    kt = -(-K // T)
    out = torch.empty(N, kt * slab, dtype=torch.int32, device=codes.device)
    shifts = (torch.arange(vpw, device=codes.device, dtype=torch.int64) * bits).view(1, 1, vpw, 1)
    for r0 in range(0, N, chunk_rows):
        r1 = min(N, r0 + chunk_rows)
        q = torch.zeros(r1 - r0, kt * T, dtype=torch.int64, device=codes.device)
        q[:, :K] = codes[r0:r1].to(torch.int64)
        words = (q.view(r1 - r0, kt, vpw, slab) << shifts).sum(dim=2)  # disjoint bits: sum == or
        words = torch.where(words >= 2**31, words - 2**32, words)
        out[r0:r1] = words.view(r1 - r0, kt * slab).to(torch.int32)
    if bits != 4:
        return out
    if (kt * slab) % UNIT:  # (whole units: K padded to 256 channels; the kernels mask the padding)
        out = torch.nn.functional.pad(out, (0, UNIT - (kt * slab) % UNIT))
    return grouped_words(out, UNIT)


def row_words(in_features: int, bits: int, slab: int) -> int:
    """A row's words of codes, K padded to whole slabs (the storage of 4-bit codes may add a padding slab to its last
    unit: the kernels never read it)."""
    return -(-in_features // (slab * (32 // bits))) * slab


def row_major_slabs(words: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`pack_slabs`' words as a row-major ``[N, KW]`` copy (4-bit codes; 8-bit codes are row-major already)."""
    if bits != 4:
        return words
    return row_major_words(words, UNIT)


def unpack_slabs(words: torch.Tensor, bits: int, slab: int, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_slabs` (tests)."""
    N, KW = words.shape
    vpw = 32 // bits
    w = row_major_slabs(words, bits).to(torch.int64).view(N, KW // slab, 1, slab) & 0xFFFFFFFF
    shifts = (torch.arange(vpw, device=words.device, dtype=torch.int64) * bits).view(1, 1, vpw, 1)
    q = (w >> shifts) & ((1 << bits) - 1)
    return q.view(N, -1)[:, :in_features].to(torch.uint8)


def _block_scale_bytes(w: FloatWeights, kind: str) -> torch.Tensor:
    """The stored block scales as uint8 ``[N, G]`` (re-encoded exactly when only decoded ones exist)."""
    raw = w.raw_scales if w.scale_kind == kind and w.raw_scales is not None else None
    if kind == "e8m0":
        return (raw if raw is not None else fpcodes.encode_e8m0(w.scales)).to(torch.uint8)
    if raw is None:
        raw = w.scales.to(torch.float8_e4m3fn)
        if not torch.equal(raw.to(torch.float32), w.scales.to(torch.float32)):
            raise QuantLinearError("NVFP4 block scales are not exactly representable as float8_e4m3fn")
    return raw.contiguous().view(torch.uint8)


#: sigma exponent field of the layer's largest block scale (sigma = 2**15); exact products need sigma >= 2**-9 (``E >= 6``)
_SIGMA_TOP, _SIGMA_MIN = 30, 6
#: plane order of a tile's eight sigma bytes: pair ``j`` (planes ``j`` / ``j + 4``) is bytes ``2j`` / ``2j + 1``
_SIGMA_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def _check_scale_bytes(scheme: str, scale_bytes: torch.Tensor) -> None:
    if scale_bytes.dtype != torch.uint8 or scale_bytes.dim() != 2:
        raise QuantLinearError(f"{scheme} scale bytes must be a 2-D uint8 tensor [N, blocks], got {scale_bytes.dtype} "
                               f"{tuple(scale_bytes.shape)}")


def mx_sigma(codes: torch.Tensor, scale_bytes: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """MXFP4's block scales for the tensor-core decode kernel (``mmv``, fp16): ``(sigma, omul)``, or None where its
    fp16 arithmetic would not be exact.

    ``mmv`` multiplies each E2M1 pair, decoded as ``value * 2**-14``, by an fp16 pair of powers of two ``sigma =
    2**(s - smax + 15)`` (``s`` the block's E8M0 byte, ``smax`` the layer's largest) and the fp32 sums by ``omul =
    2**(smax - 128)``: every weight the MMA sees is ``w * 2**(128 - smax)``, exact in fp16 (at most 12, at least
    ``2**-24``).  Blocks whose scale is below ``2**-24`` of the largest would leave that range: they are 0 here, which
    is exact only when all their codes are zeros; any other such block (or a NaN scale, byte 255) returns None and the
    layer keeps the CUDA-core GEMV.  ``sigma``: int32 ``[N, KT * 2]``, per 256-channel tile the bytes ``4 E`` (``E``
    the fp16 exponent field, 0 for a zero block) of planes 0, 4, 1, 5, 2, 6, 3, 7: one byte permute per pair.
    ``codes`` uint8 ``[N, K]`` (4-bit), ``scale_bytes`` uint8 ``[N, K / 32]``.
    """
    _check_scale_bytes("MXFP4", scale_bytes)
    N, G = scale_bytes.shape
    if codes.dtype != torch.uint8 or tuple(codes.shape) != (N, G * 32):
        raise QuantLinearError(f"MXFP4 codes must be uint8 [{N}, {G * 32}] to match scale bytes {tuple(scale_bytes.shape)}, "
                               f"got {codes.dtype} {tuple(codes.shape)}")
    if N == 0 or G == 0:
        return None
    smax = int(scale_bytes.max())
    if smax == 255:
        return None
    e = scale_bytes.to(torch.int16) - smax + _SIGMA_TOP
    low = e < _SIGMA_MIN
    if bool(low.any()):
        mags = (codes[:, : G * 32].reshape(N, G, 32) & 7).amax(dim=2)
        if bool((mags[low] != 0).any()):
            return None
    b = torch.where(low, torch.zeros_like(e), e * 4).to(torch.uint8)
    kt = -(-G // 8)
    padded = torch.zeros((N, kt * 8), dtype=torch.uint8, device=b.device)
    padded[:, :G] = b
    order = torch.tensor(_SIGMA_ORDER, device=b.device)
    sigma = padded.view(N, kt, 8)[:, :, order].contiguous().view(N, kt * 8).view(torch.int32)
    return sigma, 2.0 ** (smax - 128)


def nv_sigma(scale_bytes: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """NVFP4's block scales for ``mmv``: ``(sigma, omul)``, or None for an odd number of 128-channel tiles (``mmv``
    reads them in pairs).

    ``mmv`` converts each E4M3 scale to fp16 (exact) and multiplies the E2M1 pair decoded as ``value * 2**-14`` by it:
    every product is a multiple of ``2**-24`` with at most 6 significant bits below 0.17, so exact in fp16 whatever
    the scales; ``omul = 2**14`` (the ``1 / weight_global_scale`` row factor applies after it).

    Layout: a row's 16 bytes of a 256-channel step (tiles ``2t``, ``2t + 1``; per tile the bytes of planes 0, 4, 1,
    5, 2, 6, 3, 7) are four int32; the rows are in groups of 16 as the codes are (:func:`pack_slabs`; the last group
    zero-padded to 16 rows), and a group's step is one 256-byte run of its 16 rows' bytes: int32
    ``[ceil(N / 16), steps * 64]``.  So the scale loads of a warp's step (8 rows, 16 bytes each) read one 128-byte
    line; row-major (a row's steps in one run, ``K / 16`` bytes between rows) each of a step's loads read eight lines.
    On an H100 the grouped scales took NVFP4 ``mmv`` 2-7% lower on the benchmark shapes with the same configurations
    (M = 1 14336 x 4096 15.9 -> 15.5 us, 8192 x 28672 52.6 -> 49.8; ``results/h100-session22-probes-2026-11-27.txt``).  ``scale_bytes`` uint8
    ``[N, K / 16]``.
    """
    _check_scale_bytes("NVFP4", scale_bytes)
    N, G = scale_bytes.shape
    if N == 0 or G == 0 or G % 16:
        return None
    order = torch.tensor(_SIGMA_ORDER, device=scale_bytes.device)
    rows = scale_bytes.contiguous().view(N, G // 8, 8)[:, :, order].contiguous().view(N, G).view(torch.int32)
    steps = G // 16
    n16 = -(-N // 16) * 16
    padded = torch.zeros((n16, G // 4), dtype=torch.int32, device=scale_bytes.device)
    padded[:N] = rows
    sigma = padded.view(n16 // 16, 16, steps, 4).permute(0, 2, 1, 3).contiguous().view(n16 // 16, steps * 64)
    return sigma, 2.0**14


def prepare_float(w: FloatWeights, act_kind: tuple[str, dict] | None, *, fp8_elem: int = E4M3,
                  mmv: bool = False) -> tuple[FPMeta, dict[str, torch.Tensor | None]]:
    """Canonical float weights -> (meta, tensors) the kernels read; nothing float the size of W.

    ``fp8_elem`` picks how FP8 *weight* elements are decoded (:data:`E4M3`, :data:`E4M3_NV`, or
    :data:`E4M3_B8` for codes already converted to e4m3fnuz by the caller).  Tensors:
    ``qweight`` int32 ``[N, KW]``, ``scales`` uint8 ``[G, N]`` or None, ``row_scales`` fp32 ``[N]``
    or None, ``act_scale`` ``[1]`` (NVFP4 fp32 ``input_global_scale``; FP8 ``input_scale`` in its
    stored dtype, which decides the dtype of the quantizing division) or None, ``mmv_sigma`` (with ``mmv``: MXFP4
    where :func:`mx_sigma` is exact, NVFP4 of whole 256-channel pairs of tiles, :func:`nv_sigma`; its ``omul`` is
    ``meta.mmv_mul``) or None.
    """
    N, K = w.codes.shape
    if w.element not in ELEMENT_CODES:
        raise QuantLinearError(f"element kind {w.element!r} has no float Triton kernel")
    elem = ELEMENT_CODES[w.element]
    if elem == E4M3:
        elem = fp8_elem
    act, act_block = act_code(act_kind)
    row_scales = None
    if w.scale_kind == "e8m0":
        scale, block = S_E8M0, w.block_size
        scales = _block_scale_bytes(w, "e8m0")
    elif w.scale_kind == "e4m3":
        scale, block = S_E4M3, w.block_size
        scales = _block_scale_bytes(w, "e4m3")
        if w.global_scale is not None:
            gs = w.global_scale.to(torch.float32).reshape(())
            inv = torch.where(gs == 0, torch.zeros_like(gs), 1.0 / gs)
            row_scales = inv.expand(N).contiguous()
    else:  # one float scale per row (FP8)
        scale, block, scales = S_NONE, 0, None
        row_scales = w.scales.to(torch.float32).reshape(N).contiguous()
    if scale != S_NONE and (block not in (16, 32) or K % block):
        raise QuantLinearError(f"block scales of {block} channels over in_features={K}: the float kernels take blocks of 16 or 32 dividing K")
    act_scale = None
    if act == A_NVFP4:
        if w.input_global_scale is None:
            raise QuantLinearError("NVFP4 activation quantization needs input_global_scale")
        act_scale = w.input_global_scale.to(torch.float32).reshape(1).contiguous()
    elif act == A_FP8:
        if w.input_scale is None:
            raise QuantLinearError("static FP8 activation quantization needs input_scale")
        act_scale = w.input_scale.reshape(1).contiguous()
        row_scales = (row_scales * act_scale.to(torch.float32)).contiguous()  # activations arrive as FP8 values
    sigma = None
    mmv_mul = 0.0
    if mmv and elem == E2M1 and (scale, block) in ((S_E8M0, 32), (S_E4M3, 16)):
        got = mx_sigma(w.codes, scales) if scale == S_E8M0 else nv_sigma(scales)
        if got is not None:
            sigma, mmv_mul = got
    meta = FPMeta(elem, scale, block, K, N, act, act_block, mmv_mul)
    tensors = {
        "qweight": pack_slabs(w.codes, meta.bits, meta.slab),
        "scales": None if scales is None else scales.t().contiguous(),
        "row_scales": row_scales,
        "act_scale": act_scale,
        "mmv_sigma": sigma,
    }
    return meta, tensors

