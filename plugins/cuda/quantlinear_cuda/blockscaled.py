"""Operands of block-scaled GEMMs: activation codes + scales with the reference rounding, and cuBLAS's scale layout.

Activation quantization reuses the core's reference quantizers block for block
(``fpquant.mx_quantize_blocks``, ``fpquant.nvfp4_quantize_blocks``: AutoRound's rounding, ties and
saturation included) and only *encodes* what they return, so decoding the codes and scales gives
exactly ``fpquant.mx_qdq`` / ``fpquant.nvfp4_qdq`` (tests/test_cuda_scaled_mm.py checks it bit for bit).

MX activations are returned as ``float8_e4m3fn`` codes whatever their grid: E2M1 (FP4) values are a
subset of E4M3 values, so an MXFP4 activation is exactly an MXFP8 one with the same E8M0 scales (the
MX kernel runs every MX scheme as an FP8 x FP8 block-scaled GEMM, see ``kernels/scaled_mm_mx.py``).

``to_blocked`` writes a ``[rows, cols]`` scale matrix in the layout cuBLAS calls "1D block scaling
factors layout" (PyTorch's ``SWIZZLE_32_4_4``): rows padded to 128, columns to 4, each 128x4 tile
stored as 512 consecutive bytes with ``offset = (r % 32) * 16 + (r // 32) * 4 + c``.  Same reshape as
PyTorch's test helper and torchao's ``to_blocked``; the tests check it against that element formula.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantlinear import fpquant

MX_BLOCK = 32
NV_BLOCK = 16


def blocked_numel(rows: int, cols: int) -> int:
    """Elements of the swizzled layout: ``round_up(rows, 128) * round_up(cols, 4)`` (what ``_scaled_mm`` checks)."""
    return -(-rows // 128) * 128 * (-(-cols // 4) * 4)


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """``[rows, cols]`` byte-sized scales -> the flat swizzled layout (padding bytes are 0)."""
    rows, cols = scales.shape
    pr, pc = (-rows) % 128, (-cols) % 4
    s = scales.view(torch.uint8) if scales.dtype != torch.uint8 else scales
    if pr or pc:
        s = F.pad(s, (0, pc, 0, pr))
    nr, nc = (rows + pr) // 128, (cols + pc) // 4
    blocks = s.reshape(nr, 128, nc, 4).permute(0, 2, 1, 3)
    return blocks.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(-1).contiguous()


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Exact E2M1 grid values -> 4-bit codes (bit 3 = sign, so -0.0 gives 8); no rounding happens here."""
    a = v.abs()
    idx = torch.where(a <= 2.0, a * 2.0, torch.where(a <= 4.0, a + 2.0, torch.full_like(a, 7.0)))
    return idx.to(torch.uint8) | (torch.signbit(v).to(torch.uint8) << 3)


def quantize_act_mx(x: torch.Tensor, element: str, rceil: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` (K a multiple of 32) -> (``float8_e4m3fn`` codes ``[M, K]``, E8M0 bytes uint8 ``[M, K/32]``).

    ``element`` is the activation grid (``e2m1`` or ``e4m3``), ``rceil`` the exponent rule, as
    ``fpquant.act_quant_kind`` reports them.  ``decode_act_mx(codes, scales) == fpquant.mx_qdq(x)``.
    """
    M, K = x.shape
    v, e = fpquant.mx_quantize_blocks(x.reshape(-1, MX_BLOCK), element, rceil)
    codes = v.reshape(M, K).to(torch.float8_e4m3fn)  # exact: grid values, |v| <= 448
    scales = (e + 127.0).to(torch.uint8).reshape(M, K // MX_BLOCK)  # shared exponents are integers in [-127, 127]
    return codes, scales


def decode_act_mx(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    M, K = codes.shape
    s = torch.pow(2.0, scales.to(torch.float32) - 127.0).reshape(-1, 1)
    return (codes.to(torch.float32).reshape(-1, MX_BLOCK) * s).reshape(M, K)


def recip(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x == 0, torch.zeros_like(x), 1.0 / x)


def quantize_act_nvfp4(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` (K a multiple of 16) -> (packed E2M1 uint8 ``[M, K/2]``, even k in the low nibble, as
    ``torch.float4_e2m1fn_x2``; E4M3 block scales ``float8_e4m3fn [M, K/16]``), with ``input_global_scale``."""
    M, K = x.shape
    v, s, _ = fpquant.nvfp4_quantize_blocks(x.to(torch.float32).reshape(-1, NV_BLOCK), global_scale)
    codes = e2m1_codes(v).reshape(M, K)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, s.reshape(M, K // NV_BLOCK).to(torch.float8_e4m3fn)


def decode_act_nvfp4(packed: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """The reference's dequantization of (codes, scales): ``value * 1 / (1 / (scale * (1 / global_scale)))``."""
    from quantlinear import fpcodes

    M = packed.shape[0]
    v = fpcodes.decode_elements(fpcodes.unpack_nibbles(packed), "e2m1").reshape(-1, NV_BLOCK)
    s = scales.to(torch.float32).reshape(-1, 1)
    out_scale = recip(s * recip(global_scale.to(torch.float32)))
    return (v * recip(out_scale)).reshape(M, -1)
