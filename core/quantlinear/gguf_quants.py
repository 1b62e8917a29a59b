"""llama.cpp's block dequantization in torch, bit-identical to ``gguf.quants.dequantize``.

Every kernel is checked against :func:`dequantize_rows` (through
:meth:`quantlinear.formats.GGUFWeights.dequantize`), so it must give exactly the numbers llama.cpp
gives.  Each type below follows ``gguf/quants.py`` (gguf-py 0.19.0, itself bit-identical to
``dequantize_row_*`` in ``ggml-quants.c``) operation for operation: the fp16 fields are widened
to fp32 exactly, integer codes are exact in fp32, and the few fp32 products and differences are
done in the same order (``(d * sc) * q - dmin * m`` for Q4_K ...), so rounding is the same.
Eager torch never fuses ``a * b + c`` into an FMA on CPU; a compiler that does (Inductor on some
targets) may differ in the last bit, which is why kernels are held to a tolerance and only
this reference to bit equality.

Pure torch, vectorized over blocks, any device; hosts are assumed little-endian (as GGUF files
written by llama.cpp's tools are).
"""

from __future__ import annotations

import torch

from .errors import CheckpointError, UnsupportedSchemeError
from .gguf_types import GGUF_TYPES

__all__ = ["dequantize_rows", "block_scales", "SCALE_FIELDS"]

#: fp16 fields of each block that llama.cpp's ``ggml_validate_row_data`` (``--check-tensors``)
#: requires to be finite: (field name, byte offset in the block).
SCALE_FIELDS: dict[str, tuple[tuple[str, int], ...]] = {
    "Q4_0": (("d", 0),),
    "Q4_1": (("d", 0), ("m", 2)),
    "Q5_0": (("d", 0),),
    "Q5_1": (("d", 0), ("m", 2)),
    "Q8_0": (("d", 0),),
    "Q2_K": (("d", 80), ("dmin", 82)),
    "Q3_K": (("d", 108),),
    "Q4_K": (("d", 0), ("dmin", 2)),
    "Q5_K": (("d", 0), ("dmin", 2)),
    "Q6_K": (("d", 208),),
}


def _field(b: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Bytes ``[lo, hi)`` of every block, contiguous (bitwise ops on strided uint8 views take a
    slow path in torch's CPU kernels, ~1000x slower)."""
    return b[:, lo:hi].contiguous()


def _f16(b: torch.Tensor, off: int) -> torch.Tensor:
    """The fp16 field at byte ``off`` of every block, widened to fp32: ``[nb, 1]``."""
    return _field(b, off, off + 2).view(torch.float16).to(torch.float32)


def _nibbles(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Low nibbles then high nibbles, stacked along a new axis ``dim``."""
    return torch.stack((x & 15, x >> 4), dim=dim)


def _crumbs(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The four 2-bit fields (bits 0-1, 2-3, 4-5, 6-7), stacked along a new axis ``dim``."""
    return torch.stack([(x >> s) & 3 for s in (0, 2, 4, 6)], dim=dim)


def _bits(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The eight bits (LSB first), stacked along a new axis ``dim``."""
    return torch.stack([(x >> i) & 1 for i in range(8)], dim=dim)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    qs = _field(b, 2, 18)
    q = torch.cat((qs & 15, qs >> 4), dim=1)
    return d * (q.to(torch.float32) - 8.0)


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    qs = _field(b, 4, 20)
    q = torch.cat((qs & 15, qs >> 4), dim=1)
    return d * q.to(torch.float32) + m


def _q5_high(qh: torch.Tensor) -> torch.Tensor:
    """Bit j of the little-endian uint32 ``qh`` (4 bytes), for j = 0..31: ``[nb, 32]``."""
    return _bits(qh, -1).reshape(qh.shape[0], 32)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    qs = _field(b, 6, 22)
    ql = torch.cat((qs & 15, qs >> 4), dim=1)
    q = ql | (_q5_high(_field(b, 2, 6)) << 4)
    return d * (q.to(torch.float32) - 16.0)


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    qs = _field(b, 8, 24)
    ql = torch.cat((qs & 15, qs >> 4), dim=1)
    q = ql | (_q5_high(_field(b, 4, 8)) << 4)
    return d * q.to(torch.float32) + m


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    return _field(b, 2, 34).view(torch.int8).to(torch.float32) * d


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    sc = _field(b, 0, 16)
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * (sc & 15).to(torch.float32)).reshape(nb, 16, 1)
    ml = (dmin * (sc >> 4).to(torch.float32)).reshape(nb, 16, 1)
    q = _crumbs(_field(b, 16, 80).reshape(nb, 2, 32), 2).reshape(nb, 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(nb, 256)


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    hmask, qs, lo, hi = _field(b, 0, 32), _field(b, 32, 96), _field(b, 96, 104), _field(b, 104, 108)
    d = _f16(b, 108)
    low = torch.cat((lo & 15, lo >> 4), dim=1)
    high = torch.cat([(hi >> s) & 3 for s in (0, 2, 4, 6)], dim=1)
    scales = ((low | (high << 4)).to(torch.int16) - 32).to(torch.float32)
    dl = (d * scales).reshape(nb, 16, 1)
    ql = _crumbs(qs.reshape(nb, 2, 32), 2).reshape(nb, 16, 16)
    qh = _bits(hmask, 1).reshape(nb, 16, 16) ^ 1  # the offset 4 applies where the mask bit is 0
    q = (ql.to(torch.int16) - (qh << 2).to(torch.int16)).to(torch.float32)
    return (dl * q).reshape(nb, 256)


def _k_scale_min(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: eight 6-bit scales and eight 6-bit mins packed in 12 bytes: ``[nb, 8]`` each."""
    d, m, md = _field(sc, 0, 4), _field(sc, 4, 8), _field(sc, 8, 12)
    scales = torch.cat((d & 63, (md & 15) | ((d >> 2) & 48)), dim=1)
    mins = torch.cat((m & 63, (md >> 4) | ((m >> 2) & 48)), dim=1)
    return scales, mins


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scale_min(_field(b, 4, 16))
    dl = (d * sc.to(torch.float32)).reshape(nb, 8, 1)
    ml = (dmin * mn.to(torch.float32)).reshape(nb, 8, 1)
    q = _nibbles(_field(b, 16, 144).reshape(nb, 4, 32), 2).reshape(nb, 8, 32).to(torch.float32)
    return (dl * q - ml).reshape(nb, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scale_min(_field(b, 4, 16))
    dl = (d * sc.to(torch.float32)).reshape(nb, 8, 1)
    ml = (dmin * mn.to(torch.float32)).reshape(nb, 8, 1)
    ql = _nibbles(_field(b, 48, 176).reshape(nb, 4, 32), 2).reshape(nb, 8, 32)
    qh = _bits(_field(b, 16, 48), 1)  # [nb, 8, 32]: bit i of qh[l] is the high bit of element 32 i + l
    q = (ql | (qh << 4)).to(torch.float32)
    return (dl * q - ml).reshape(nb, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    nb = b.shape[0]
    scales = _field(b, 192, 208).view(torch.int8).to(torch.float32)
    d = (_f16(b, 208) * scales).reshape(nb, 16, 1)
    ql = _nibbles(_field(b, 0, 128).reshape(nb, 2, 64), 2).reshape(nb, 8, 32)
    qh = _crumbs(_field(b, 128, 192).reshape(nb, 2, 32), 2).reshape(nb, 8, 32)
    q = ((ql | (qh << 4)).to(torch.int16) - 32).reshape(nb, 16, 16).to(torch.float32)
    return (d * q).reshape(nb, 256)


_DEQUANT = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}


def _gguf_type(qtype: str):
    try:
        return GGUF_TYPES[qtype]
    except KeyError:
        raise UnsupportedSchemeError(f"GGUF type {qtype!r} is not supported; supported: {sorted(GGUF_TYPES)}") from None


def _blocks(qtype: str, data: torch.Tensor) -> torch.Tensor:
    t = _gguf_type(qtype)
    if data.dtype != torch.uint8:
        raise CheckpointError(f"{qtype} data must be uint8 blocks, got {data.dtype}")
    if data.dim() == 0 or data.shape[-1] % t.type_size:
        raise CheckpointError(
            f"{qtype} rows of {data.shape[-1] if data.dim() else 0} bytes are not a whole number of "
            f"{t.type_size}-byte blocks"
        )
    return data.reshape(-1, t.type_size)


def dequantize_rows(qtype: str, data: torch.Tensor) -> torch.Tensor:
    """fp32 ``[..., K]`` from uint8 blocks ``[..., K // block * type_size]`` of GGUF type ``qtype``."""
    t = _gguf_type(qtype)
    lead = data.shape[:-1]
    out = _DEQUANT[qtype](_blocks(qtype, data))
    return out.reshape(*lead, data.shape[-1] // t.type_size * t.block)


def block_scales(qtype: str, data: torch.Tensor) -> dict[str, torch.Tensor]:
    """The fp16 scale fields llama.cpp validates, as fp32 ``[..., K // block]`` per field name."""
    t = _gguf_type(qtype)
    lead = data.shape[:-1]
    b = _blocks(qtype, data)
    return {name: _f16(b, off).reshape(*lead, data.shape[-1] // t.type_size) for name, off in SCALE_FIELDS[qtype]}
