"""Element and scale codecs of the floating-point and microscaling schemes.

Device-neutral torch code, exact by construction: every decode is a table lookup or an exact
power-of-two / float8 conversion, every encode rounds to nearest, ties to even, saturating.

Elements (4-bit codes are ``uint8`` values 0..15, bit 3 = sign, bits 2..0 = magnitude index):

* ``e2m1`` (FP4, OCP MX / NVFP4): magnitudes ``[0, 0.5, 1, 1.5, 2, 3, 4, 6]``.
* ``e0m4`` (MXINT4, AutoRound's sign-magnitude int4): magnitudes ``m / 4`` for ``m`` in 0..7.
  Code 8 is a negative zero in both (AutoRound writes it for tiny negative weights).
* ``e4m3`` / ``e5m2`` (FP8): the raw byte of ``torch.float8_e4m3fn`` / ``torch.float8_e5m2``.

Two 4-bit codes share a byte along K: the even input channel in the low nibble, the odd one in
the high nibble (``auto_round/export/export_to_autoround/qlinear_fp.py`` ``_pack_fp4_to_uint8``;
``experimental/qmodules/fp4_utils.py`` ``unpack_fp4_from_uint8``).

Scales:

* ``e8m0`` (MX): unsigned byte ``s``, value ``2 ** (s - 127)``, 255 = NaN.
* ``e4m3`` (NVFP4 block scales): ``torch.float8_e4m3fn``.
* ``e5m3`` (NVFP4_E5M3, experimental): unsigned, 5 exponent bits (bias 15), 3 mantissa bits,
  subnormals below ``2**-14``, 0xFF = NaN (``auto_round/data_type/nvfp.py`` ``float_to_e5m3_frexp``).
"""

from __future__ import annotations

import torch

from .errors import QuantLinearError

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E0M4_MAGNITUDES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

#: element kind -> (largest magnitude, bits per code)
ELEMENTS: dict[str, tuple[float, int]] = {
    "e2m1": (6.0, 4),
    "e0m4": (1.75, 4),
    "e4m3": (448.0, 8),
    "e5m2": (57344.0, 8),
}

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}

E8M0_BIAS = 127
E8M0_NAN = 255
E5M3_MAX = 114688.0


def _check_element(element: str) -> None:
    if element not in ELEMENTS:
        raise QuantLinearError(f"unknown element kind {element!r}; known: {sorted(ELEMENTS)}")


def signed_table(magnitudes, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The 16-entry value table of a sign-magnitude 4-bit code (entry 8 is -0.0)."""
    mags = torch.tensor(magnitudes, dtype=torch.float32, device=device)
    return torch.cat([mags, -mags]).to(dtype)


def element_table(element: str, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Value of every code: 16 entries for 4-bit elements, 256 for FP8 (NaN codes give NaN)."""
    _check_element(element)
    if element == "e2m1":
        return signed_table(E2M1_MAGNITUDES, dtype, device)
    if element == "e0m4":
        return signed_table(E0M4_MAGNITUDES, dtype, device)
    return torch.arange(256, dtype=torch.uint8, device=device).view(FP8_DTYPES[element]).to(dtype)


# ---- nibbles ----------------------------------------------------------------------------------------
def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[..., K]`` (values < 16, K even) -> ``[..., K/2]``; even k in the low nibble."""
    if codes.dtype != torch.uint8:
        raise QuantLinearError(f"4-bit codes must be uint8, got {codes.dtype}")
    if codes.shape[-1] % 2:
        raise QuantLinearError(f"cannot pack an odd number ({codes.shape[-1]}) of 4-bit codes per row")
    if codes.numel() and int(codes.max()) > 15:
        raise QuantLinearError(f"4-bit codes must be < 16, got {int(codes.max())}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., K/2]`` -> codes ``[..., K]`` (low nibble first)."""
    if packed.dtype != torch.uint8:
        raise QuantLinearError(f"packed 4-bit codes must be uint8, got {packed.dtype}")
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


# ---- elements ---------------------------------------------------------------------------------------
def decode_elements(codes: torch.Tensor, element: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes (uint8; for FP8 also the float8 tensor itself) -> values."""
    _check_element(element)
    if element in FP8_DTYPES:
        if codes.dtype == torch.uint8:
            codes = codes.view(FP8_DTYPES[element])
        return codes.to(dtype)
    return element_table(element, dtype, codes.device)[codes.long()]


def _rne_index(mag: torch.Tensor, magnitudes) -> torch.Tensor:
    """Index of the nearest magnitude; a tie goes to the even index (even mantissa)."""
    idx = torch.zeros(mag.shape, dtype=torch.uint8, device=mag.device)
    for i in range(len(magnitudes) - 1):
        mid = (magnitudes[i] + magnitudes[i + 1]) / 2
        up = mag >= mid if i % 2 else mag > mid
        idx += up.to(torch.uint8)
    return idx


def encode_elements(values: torch.Tensor, element: str) -> torch.Tensor:
    """Values (in element units) -> uint8 codes, round to nearest even, saturating.

    4-bit elements carry the sign of ``values`` (``signbit``: -0.0 gives code 8, as AutoRound
    writes it); FP8 elements give the raw float8 bytes as uint8.  NaN is an error.
    """
    _check_element(element)
    v = values.to(torch.float32)
    if bool(torch.isnan(v).any()):
        raise QuantLinearError(f"cannot encode NaN as {element}")
    if element in FP8_DTYPES:
        mx = ELEMENTS[element][0]
        return v.clamp(-mx, mx).to(FP8_DTYPES[element]).view(torch.uint8)
    mags = E2M1_MAGNITUDES if element == "e2m1" else E0M4_MAGNITUDES
    idx = _rne_index(v.abs(), mags)
    return idx | (torch.signbit(v).to(torch.uint8) << 3)


# ---- E8M0 -------------------------------------------------------------------------------------------
def decode_e8m0(s: torch.Tensor) -> torch.Tensor:
    """uint8 E8M0 -> fp32 ``2 ** (s - 127)`` (255 -> NaN)."""
    if s.dtype != torch.uint8:
        raise QuantLinearError(f"E8M0 scales must be uint8, got {s.dtype}")
    v = torch.exp2(s.to(torch.float32) - E8M0_BIAS)
    return torch.where(s == E8M0_NAN, torch.full_like(v, float("nan")), v)


def encode_e8m0_exponent(exp: torch.Tensor) -> torch.Tensor:
    """Integer-valued shared exponents -> E8M0 bytes, clamped to [0, 254] as AutoRound writes them."""
    return (exp.to(torch.float32) + E8M0_BIAS).clamp(0, E8M0_NAN - 1).to(torch.uint8)


def encode_e8m0(scale: torch.Tensor) -> torch.Tensor:
    """Exact powers of two in [2**-127, 2**127] -> E8M0 bytes (NaN -> 255); anything else is an error."""
    s = scale.to(torch.float32)
    nan = torch.isnan(s)
    safe = torch.where(nan, torch.ones_like(s), s)
    mant, exp = torch.frexp(safe)
    bad = (~nan) & ((mant != 0.5) | (exp - 1 < -E8M0_BIAS) | (exp - 1 > E8M0_BIAS))
    if bool(bad.any()):
        v = float(safe[bad].flatten()[0])
        raise QuantLinearError(f"scale {v!r} is not a power of two in [2**-127, 2**127]: not representable as E8M0")
    out = (exp - 1 + E8M0_BIAS).to(torch.uint8)
    return torch.where(nan, torch.full_like(out, E8M0_NAN), out)


# ---- FP8 scales -------------------------------------------------------------------------------------
def decode_fp8(t: torch.Tensor, element: str = "e4m3") -> torch.Tensor:
    return decode_elements(t, element)


def encode_fp8(x: torch.Tensor, element: str = "e4m3") -> torch.Tensor:
    """Saturating round-to-nearest-even cast to a float8 dtype (returns the float8 tensor)."""
    mx = ELEMENTS[element][0]
    return x.to(torch.float32).clamp(-mx, mx).to(FP8_DTYPES[element])


# ---- E5M3 (NVFP4_E5M3 scales) ----------------------------------------------------------------------
def encode_e5m3(x: torch.Tensor) -> torch.Tensor:
    """Non-negative floats -> unsigned E5M3 bytes, as ``auto_round/data_type/nvfp.py`` ``float_to_e5m3_frexp``."""
    f = x.to(torch.float32)
    finite = torch.nan_to_num(f, nan=0.0, posinf=E5M3_MAX, neginf=0.0).clamp(0.0, E5M3_MAX)
    mant, exp = torch.frexp(finite.clamp_min(2.0**-14))
    m3 = torch.round((mant - 0.5) * 16).to(torch.int32)
    carry = m3 == 8
    m3 = torch.where(carry, torch.zeros_like(m3), m3)
    e5 = exp + 14 + carry.to(exp.dtype)
    normal = (e5 << 3) | m3
    sub = torch.round(finite * 2.0**17).to(torch.int32)
    enc = torch.where(finite < 2.0**-14, sub, normal).clamp(0, 0xFE).to(torch.uint8)
    return torch.where(torch.isnan(f), torch.full_like(enc, 0xFF), enc)


def decode_e5m3(b: torch.Tensor) -> torch.Tensor:
    """Unsigned E5M3 bytes -> fp32 (0xFF -> NaN)."""
    if b.dtype != torch.uint8:
        raise QuantLinearError(f"E5M3 scales must be uint8, got {b.dtype}")
    e = (b >> 3).to(torch.int32)
    m = (b & 0x07).to(torch.float32)
    normal = torch.ldexp(1.0 + m / 8.0, e - 15)
    sub = m / 8.0 * 2.0**-14
    out = torch.where(e == 0, sub, normal)
    return torch.where(b == 0xFF, torch.full_like(out, float("nan")), out)


__all__ = [
    "E0M4_MAGNITUDES",
    "E2M1_MAGNITUDES",
    "ELEMENTS",
    "FP8_DTYPES",
    "decode_e5m3",
    "decode_e8m0",
    "decode_elements",
    "decode_fp8",
    "element_table",
    "encode_e5m3",
    "encode_e8m0",
    "encode_e8m0_exponent",
    "encode_elements",
    "encode_fp8",
    "pack_nibbles",
    "unpack_nibbles",
]
