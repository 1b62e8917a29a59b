"""FP8 on ROCm: which format the matrix cores take, and the exact e4m3fn -> e4m3fnuz conversion.

There is no FP8 weight kernel yet (issue 5, floating-point schemes; the CUDA plugin has none
either).  This is the piece such a kernel needs on gfx942 (MI300): its matrix cores take
``float8_e4m3fnuz`` (exponent bias 8, no infinities, no negative zero, the single NaN is 0x80),
while checkpoints store OCP ``float8_e4m3fn`` (bias 7, NaN 0x7F/0xFF, -0 = 0x80).  gfx950
(MI350) and RDNA4 take OCP ``e4m3fn`` natively (Triton's AMD backend: "native support for OCP
fp8 variants since CDNA4/RDNA4"; "UZ fp8 variants ... natively supported for CDNA3").

The same byte read with bias 8 is exactly half the value it has with bias 7 (subnormals too),
so the conversion keeps the bytes, doubles the scale, and fixes the two special encodings --
what vLLM's ``normalize_e4m3fn_to_e4m3fnuz`` does.  It is exact: ``fnuz(b) * (2 s) == fn(b) * s``
for every finite byte ``b``.
"""

from __future__ import annotations

import torch

from . import archs

_NEG_ZERO = 0x80  # e4m3fn: -0.0;  e4m3fnuz: NaN


def fp8_weight_dtype(arch: str) -> torch.dtype | None:
    """The e4m3 format ``arch``'s matrix cores take, or None where this plugin knows of none."""
    a = archs.SUPPORTED.get(arch)
    name = a.fp8 if a is not None else None
    return getattr(torch, name) if name else None


def e4m3fn_to_e4m3fnuz(weight: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``float8_e4m3fn`` (or its raw uint8 bytes) -> (``float8_e4m3fnuz`` weight, scale * 2), exactly.

    -0 becomes +0 (0x80 would be NaN in fnuz); NaN (0x7F/0xFF) becomes fnuz's NaN (0x80).  The
    scale doubles, which is exact in binary floating point; a scale that would overflow its
    dtype raises ValueError instead of turning into inf.
    """
    if weight.dtype == torch.float8_e4m3fn:
        b = weight.view(torch.uint8)
    elif weight.dtype == torch.uint8:
        b = weight
    else:
        raise TypeError(f"expected float8_e4m3fn (or its uint8 bytes), got {weight.dtype}")
    out = b.clone()
    out[b == _NEG_ZERO] = 0
    out[(b & 0x7F) == 0x7F] = _NEG_ZERO
    new_scale = None
    if scale is not None:
        new_scale = scale * 2
        if not bool(torch.isfinite(new_scale[torch.isfinite(scale)]).all()):
            raise ValueError(f"doubling the scale overflows {scale.dtype}; convert the scale to float32 first")
    return out.view(torch.float8_e4m3fnuz), new_scale
