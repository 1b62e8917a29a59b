"""Reference quantizers of the floating-point and microscaling schemes, weights and activations.

Device-neutral torch code that reproduces AutoRound 0.16.1 operation for operation (same
fp32 ops in the same order, so the same rounding decisions, midpoints included):

* MX (``mx_fp`` 4/8-bit, ``mx_int`` 4-bit): ``auto_round/data_type/mxfp.py`` ``quant_mx`` /
  ``quant_mx_rceil`` / ``quant_element``.  Shared exponent ``floor(log2(amax)) - emax``
  (RCEIL: ``ceil(log2(amax / max_norm))``), clamped to [-127, 127]; elements rounded to
  nearest even and saturated.
* NVFP4: ``auto_round/data_type/nvfp.py`` ``ref_nvfp4_quant`` / ``cast_to_fp4``: per-16 E4M3
  scales of ``global_scale * amax / 6``, ``global_scale = 448 * 6 / tensor_amax``.
* FP8: ``auto_round/data_type/fp8.py`` ``quant_fp8_sym`` (weights, per channel or per tensor)
  and ``experimental/qmodules/fp8_static.py`` (static activations).

Activation quantize-dequantize follows AutoRound's *inference* modules
(``experimental/qmodules/{mx,nvfp4,fp8_static}.py``), which is what running an AutoRound
export means.  Two facts from there that are not obvious:

* ``mx_int`` activations are quantized on the **FP4 (E2M1) grid**: ``_mx_qdq`` calls
  ``quant_mx`` without ``data_type``, which falls back to ``"mx_fp" + bits``.
  ``mx_fp_rceil`` activations likewise use the E2M1 / E4M3 grid with RCEIL exponents.
* FP8_STATIC dequantizes activations in bf16 (``hp_dtype = torch.bfloat16``):
  ``bf16(fp8(x / input_scale)) * input_scale``, whatever the compute dtype.
"""

from __future__ import annotations

import torch

from . import fpcodes
from .errors import QuantLinearError, UnsupportedSchemeError
from .formats.base import FloatWeights
from .scheme import Scheme

#: element -> (ebits, mbits, emax, max_norm) as ``MXFP_FORMAT_CACHE`` (mbits counts sign + implicit bit)
MX_ELEMENT_PARAMS: dict[str, tuple[int, int, int, float]] = {
    "e2m1": (2, 3, 2, 6.0),
    "e4m3": (4, 5, 8, 448.0),
    "e0m4": (0, 4, 0, 1.75),
}

FP4_MAX = 6.0
FP8_E4M3_MAX = 448.0
#: smallest FP8 scale AutoRound allows (``1 / (448 * 512)``, copied from vLLM)
FP8_MIN_SCALE = 1.0 / (FP8_E4M3_MAX * 512.0)


def _recip(x: torch.Tensor) -> torch.Tensor:
    """``get_reciprocal``: 1/x, and 0 where x == 0."""
    return torch.where(x == 0, torch.zeros_like(x), 1.0 / x)


# ---- grouping ---------------------------------------------------------------------------------------
def _to_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """``[..., K]`` -> ``[R, block]`` (zero-padded along K) and the padding length."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    if block <= 0 or block >= K:
        return x2, 0
    pad = (-K) % block
    if pad:
        x2 = torch.nn.functional.pad(x2, (0, pad))
    return x2.reshape(-1, block), pad


def _from_blocks(x2: torch.Tensor, shape: torch.Size, pad: int) -> torch.Tensor:
    K = shape[-1]
    x2 = x2.reshape(-1, K + pad)
    if pad:
        x2 = x2[:, :K]
    return x2.reshape(shape)


# ---- MX ---------------------------------------------------------------------------------------------
def mx_element(data_type: str, bits: int) -> str:
    """Weight element of an MX data type: mx_fp/mx_fp_rceil 4 -> e2m1, 8 -> e4m3; mx_int 4 -> e0m4."""
    if data_type in ("mx_fp", "mx_fp_rceil") and bits in (4, 8):
        return "e2m1" if bits == 4 else "e4m3"
    if data_type == "mx_int" and bits == 4:
        return "e0m4"
    raise UnsupportedSchemeError(f"no MX element for data_type={data_type!r}, bits={bits} (supported: mx_fp 4/8, mx_int 4)")


def quant_element(t: torch.Tensor, element: str) -> torch.Tensor:
    """Round fp32 ``t`` (already divided by the shared scale and clamped) onto the element grid."""
    ebits, mbits, _, max_norm = MX_ELEMENT_PARAMS[element]
    if ebits != 0:
        private_exp = torch.floor(torch.log2(torch.abs(t) + (t == 0).type(t.dtype)))
        private_exp = private_exp.clip(min=-(2.0 ** float(ebits - 1)) + 2)
        t = t / (2.0 ** private_exp.float()) * (2.0 ** float(mbits - 2))
    else:
        private_exp = None
        t = t * (2.0 ** float(mbits - 2))
    a = torch.abs(t)
    mask = ((a - 0.5) % 2 == torch.zeros_like(a)).type(t.dtype)
    t = torch.sign(t) * (torch.floor(a + 0.5) - mask)
    t = t / (2.0 ** float(mbits - 2)) if private_exp is None else t / (2.0 ** float(mbits - 2)) * (2.0 ** private_exp.float())
    return torch.clamp(t, min=-max_norm, max=max_norm)


def mx_quantize_blocks(x2: torch.Tensor, element: str, rceil: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks ``[R, B]`` -> (grid values in element units, fp32 ``[R, B]``; shared exponents, fp32 ``[R, 1]``)."""
    _, _, emax, max_norm = MX_ELEMENT_PARAMS[element]
    t = x2.to(torch.float32)
    max_val = torch.max(torch.abs(t), dim=-1, keepdim=True)[0]
    if rceil:
        shared_exp = torch.where(max_val == 0, torch.ones_like(max_val), torch.ceil(torch.log2(max_val / max_norm)))
    else:
        shared_exp = torch.where(max_val == 0, torch.ones_like(max_val), torch.log2(max_val))
        shared_exp = torch.floor(shared_exp) - emax
    shared_exp = shared_exp.clamp(min=-127.0, max=127.0)
    t = t / torch.pow(2.0, shared_exp)
    t = torch.clamp(t, min=-max_norm, max=max_norm)
    return quant_element(t, element), shared_exp


def mx_qdq(x: torch.Tensor, element: str, block_size: int = 32, rceil: bool = False) -> torch.Tensor:
    """MX quantize-dequantize along the last dim (computed in fp32, returned in ``x.dtype``)."""
    x2, pad = _to_blocks(x, block_size)
    v, e = mx_quantize_blocks(x2, element, rceil)
    return _from_blocks(v * torch.pow(2.0, e), x.shape, pad).to(x.dtype)


def quantize_mx(w: torch.Tensor, element: str, block_size: int = 32, rceil: bool = False) -> FloatWeights:
    """Weights ``[N, K]`` (K a multiple of ``block_size``) -> MX :class:`FloatWeights` as AutoRound's RTN."""
    N, K = w.shape
    if K % block_size:
        raise QuantLinearError(f"MX quantization needs in_features ({K}) to be a multiple of the block size {block_size}")
    v, e = mx_quantize_blocks(w.reshape(-1, block_size), element, rceil)
    raw = fpcodes.encode_e8m0_exponent(e.reshape(N, K // block_size))
    return FloatWeights(
        codes=fpcodes.encode_elements(v.reshape(N, K), element),
        element=element,
        scales=fpcodes.decode_e8m0(raw),
        block_size=block_size,
        scale_kind="e8m0",
        raw_scales=raw,
    )


# ---- NVFP4 ------------------------------------------------------------------------------------------
def nvfp4_global_scale(amax: torch.Tensor | float) -> torch.Tensor:
    """``calculate_gparam``: ``448 * 6 / amax`` (0 when amax is 0), fp32 ``[1]``."""
    a = torch.as_tensor(amax, dtype=torch.float32).abs().max().reshape(1)
    return FP8_E4M3_MAX * FP4_MAX * _recip(a)


def cast_to_fp4(x: torch.Tensor) -> torch.Tensor:
    """``auto_round/data_type/nvfp.py`` ``cast_to_fp4``: RNE onto E2M1 (a zero keeps +0 unless rounded from < 0)."""
    sign = torch.sign(x)
    x = torch.abs(x)
    step1 = torch.round(2.0 * x) / 2.0
    step2 = torch.round(x)
    step3 = 2.0 * torch.round(x / 2.0)
    mask1 = x < 2.0
    mask2 = x < 4.0
    x = step1 * mask1 + step2 * (~mask1) * mask2 + step3 * (~mask1) * (~mask2)
    return x.clamp(-6, 6) * sign


def nvfp4_quantize_blocks(x2: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ref_nvfp4_quant`` on blocks ``[R, B]``: (E2M1 values fp32 ``[R, B]``, E4M3 block scales fp32 ``[R, 1]``,
    ``output_scale`` fp32 ``[R, 1]`` with ``qdq = values * (1 / output_scale)``)."""
    gs = global_scale.to(device=x2.device, dtype=torch.float32)
    vec_max = torch.max(torch.abs(x2), dim=-1, keepdim=True)[0].to(torch.float32)
    scale = gs * (vec_max * (1.0 / FP4_MAX))
    scale = torch.clamp(scale, min=-FP8_E4M3_MAX, max=FP8_E4M3_MAX)
    scale = scale.to(torch.float8_e4m3fn).to(torch.float32)
    output_scale = _recip(scale * _recip(gs))
    scaled = x2.to(torch.float32) * output_scale
    return cast_to_fp4(torch.clamp(scaled, -6.0, 6.0)), scale, output_scale


def nvfp4_qdq(x: torch.Tensor, global_scale: torch.Tensor, block_size: int = 16) -> torch.Tensor:
    """NVFP4 activation quantize-dequantize with a static global scale (``NVFP4QuantLinear.qdq_input``)."""
    x2, pad = _to_blocks(x.to(torch.float32), block_size)
    v, _, out_scale = nvfp4_quantize_blocks(x2, global_scale)
    return _from_blocks(v * _recip(out_scale), x.shape, pad).to(x.dtype)


def quantize_nvfp4(w: torch.Tensor, global_scale: torch.Tensor | None = None, block_size: int = 16,
                   input_global_scale: torch.Tensor | None = None) -> FloatWeights:
    """Weights ``[N, K]`` -> NVFP4 :class:`FloatWeights` as AutoRound's RTN export writes them.

    ``global_scale`` defaults to ``448 * 6 / amax(w)``; pass the shared one of fused layers
    (q/k/v, gate/up) to reproduce AutoRound's default.  AutoRound packs by re-quantizing the
    dequantized weight, where ``cast_to_fp4`` turns a negative zero into +0: code 8 never occurs.
    """
    N, K = w.shape
    if K % block_size:
        raise QuantLinearError(f"NVFP4 quantization needs in_features ({K}) to be a multiple of {block_size}")
    gs = nvfp4_global_scale(w.float().abs().max()) if global_scale is None else global_scale.to(torch.float32).reshape(1)
    v, s, _ = nvfp4_quantize_blocks(w.reshape(-1, block_size), gs)
    codes = fpcodes.encode_elements(v.reshape(N, K) + 0.0, "e2m1")  # + 0.0: -0.0 -> +0.0
    raw = s.reshape(N, K // block_size).to(torch.float8_e4m3fn)
    return FloatWeights(
        codes=codes,
        element="e2m1",
        scales=raw.to(torch.float32),
        block_size=block_size,
        scale_kind="e4m3",
        raw_scales=raw,
        global_scale=gs,
        input_global_scale=None if input_global_scale is None else input_global_scale.to(torch.float32).reshape(1),
    )


# ---- FP8 --------------------------------------------------------------------------------------------
def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """``quant_fp8_sym``: ``amax / 448``, at least ``1 / (448 * 512)``, in fp32."""
    return torch.clip(amax.to(torch.float32) / FP8_E4M3_MAX, min=FP8_MIN_SCALE)


def quantize_fp8(w: torch.Tensor, per_tensor: bool = False, scale_dtype: torch.dtype = torch.bfloat16,
                 input_scale: torch.Tensor | None = None) -> FloatWeights:
    """Weights ``[N, K]`` -> FP8 E4M3 :class:`FloatWeights`, one scale per row (FP8_STATIC) or per tensor (FPW8A16).

    As ``quant_fp8_sym``: ``s = amax / 448`` in fp32, codes ``fp8(w / s)`` computed in fp32; the
    checkpoint stores ``s`` in ``scale_dtype`` (AutoRound: the model dtype), and dequantization
    uses that stored scale.  A weight that rounds to zero is stored as +0 (AutoRound's
    straight-through ``(fp8 - x) + x`` turns -0.0 into +0.0 before packing).
    """
    N, K = w.shape
    if w.dtype == torch.float16:  # as quant_fp8_sym ("Avoid NaN gradients with float16")
        w = w.to(torch.bfloat16)
    w2 = w.reshape(1, -1) if per_tensor else w
    s = fp8_scale(torch.max(torch.abs(w2), dim=-1)[0])  # [1] or [N]: never 0-dim, so w / s promotes to fp32
    q = (w2 / s.unsqueeze(-1)).reshape(N, K)
    codes = fpcodes.encode_elements(torch.clip(q, -FP8_E4M3_MAX, FP8_E4M3_MAX), "e4m3")
    codes = torch.where(codes == 0x80, torch.zeros_like(codes), codes)  # -0.0 -> +0.0
    raw = s.reshape(1 if per_tensor else N).to(scale_dtype)
    return FloatWeights(
        codes=codes,
        element="e4m3",
        scales=raw.to(torch.float32).reshape(-1, 1).expand(N, 1).contiguous(),
        block_size=K,
        scale_kind="float",
        raw_scales=raw,
        input_scale=None if input_scale is None else input_scale.reshape(1),
    )


def fp8_static_qdq(x: torch.Tensor, input_scale: torch.Tensor, hp_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``WeightFP8ActFP8StaticQuantLinear.qdq_input``: ``hp(fp8(clamp(x / s))) * s``, returned in ``x.dtype``.

    ``input_scale`` is used in its stored dtype (the division follows torch type promotion,
    as AutoRound's does); the dequantization happens in ``hp_dtype`` (AutoRound: bf16).
    """
    q = torch.clamp(x / input_scale, -FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.to(hp_dtype) * input_scale.to(hp_dtype)).to(x.dtype)


def fp8_static_quantize_input(x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """The float8 codes of a static-scale activation (same rounding as :func:`fp8_static_qdq`)."""
    return torch.clamp(x / input_scale, -FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


# ---- dispatch by scheme -----------------------------------------------------------------------------
def act_quant_kind(scheme: Scheme) -> tuple[str, dict] | None:
    """How a scheme quantizes activations at inference: None (weight-only) or (kind, params).

    Kinds: ``"mx"`` (element, block_size, rceil), ``"nvfp4"`` (block_size), ``"fp8_static"``.
    Raises :class:`UnsupportedSchemeError` for activation settings AutoRound has no inference for.
    """
    if scheme.weight_only:
        return None
    adt, ab, ag = scheme.act_data_type or scheme.data_type, scheme.act_bits, scheme.act_group_size
    if adt in ("mx_fp", "mx_fp_rceil", "mx_int"):
        if ab not in (4, 8):
            raise UnsupportedSchemeError(f"act_data_type={adt} with act_bits={ab} is not supported (4, 8)")
        if scheme.act_dynamic is False:
            raise UnsupportedSchemeError(f"act_data_type={adt} needs act_dynamic=True (MX activations are quantized per block at run time)")
        block = 32 if ag is None else int(ag)
        if block <= 0:
            raise UnsupportedSchemeError(f"act_data_type={adt} needs a positive act_group_size, got {ag}")
        # AutoRound's inference (_mx_qdq) drops the data type: mx_int activations use the FP grid.
        return "mx", {"element": "e2m1" if ab == 4 else "e4m3", "block_size": block, "rceil": adt == "mx_fp_rceil"}
    if adt in ("nv_fp4_with_static_gs", "nv_fp"):
        if ab != 4:
            raise UnsupportedSchemeError(f"act_data_type={adt} needs act_bits=4, got {ab}")
        block = 16 if ag is None else int(ag)
        if block <= 0:
            raise UnsupportedSchemeError(f"act_data_type={adt} needs a positive act_group_size, got {ag}")
        return "nvfp4", {"block_size": block}
    if adt == "fp":
        if ab != 8:
            raise UnsupportedSchemeError(f"act_data_type=fp needs act_bits=8, got {ab}")
        if scheme.act_dynamic:
            raise UnsupportedSchemeError("dynamic FP8 activations are not supported (only static per-tensor input_scale, FP8_STATIC)")
        if ag not in (None, 0, -1):
            raise UnsupportedSchemeError(f"static FP8 activations need one scale per tensor (act_group_size 0), got {ag}")
        return "fp8_static", {}
    raise UnsupportedSchemeError(f"activation quantization act_data_type={adt!r}, act_bits={ab} is not supported")


def act_qdq(x: torch.Tensor, scheme: Scheme, weights: FloatWeights | None = None) -> torch.Tensor:
    """Reference activation quantize-dequantize of ``scheme`` (identity for weight-only schemes)."""
    kind = act_quant_kind(scheme)
    if kind is None:
        return x
    k, p = kind
    if k == "mx":
        return mx_qdq(x, p["element"], p["block_size"], p["rceil"])
    if k == "nvfp4":
        if weights is None or weights.input_global_scale is None:
            raise QuantLinearError("NVFP4 activation quantization needs input_global_scale")
        return nvfp4_qdq(x, weights.input_global_scale.to(x.device), p["block_size"])
    if weights is None or weights.input_scale is None:
        raise QuantLinearError("static FP8 activation quantization needs input_scale")
    return fp8_static_qdq(x, weights.input_scale.to(x.device))


def quantize_float(w: torch.Tensor, scheme: Scheme, *, act_amax: float | torch.Tensor | None = None,
                   global_scale: torch.Tensor | None = None, scale_dtype: torch.dtype = torch.bfloat16) -> FloatWeights:
    """Round-to-nearest quantization of ``w [N, K]`` to ``scheme`` (AutoRound's RTN, ``iters=0``).

    ``act_amax`` calibrates the static activation parameters (NVFP4 ``input_global_scale``,
    FP8_STATIC ``input_scale``); it defaults to 1.0 for schemes that need one.
    """
    dt, b, g = scheme.data_type, scheme.bits, scheme.group_size
    kind = act_quant_kind(scheme)
    amax = torch.as_tensor(1.0 if act_amax is None else act_amax, dtype=torch.float32)
    if dt in ("mx_fp", "mx_fp_rceil", "mx_int"):
        if g != 32:
            raise UnsupportedSchemeError(f"MX weights need group_size 32, got {g}")
        return quantize_mx(w, mx_element(dt, b), 32, rceil=dt == "mx_fp_rceil")
    if dt == "nv_fp":
        if g != 16 or b != 4:
            raise UnsupportedSchemeError(f"NVFP4 weights need bits 4 and group_size 16, got bits {b}, group_size {g}")
        igs = nvfp4_global_scale(amax) if kind is not None else None
        return quantize_nvfp4(w, global_scale, 16, input_global_scale=igs)
    if dt == "fp":
        if g not in (-1, 0) or b != 8:
            raise UnsupportedSchemeError(f"FP8 weights need bits 8 and group_size -1 or 0, got bits {b}, group_size {g}")
        isc = fp8_scale(amax).reshape(1).to(scale_dtype) if kind is not None else None
        return quantize_fp8(w, per_tensor=g == 0, scale_dtype=scale_dtype, input_scale=isc)
    raise UnsupportedSchemeError(f"no floating-point quantizer for data_type={dt!r}")


__all__ = [
    "MX_ELEMENT_PARAMS",
    "act_qdq",
    "act_quant_kind",
    "cast_to_fp4",
    "fp8_scale",
    "fp8_static_qdq",
    "fp8_static_quantize_input",
    "mx_element",
    "mx_qdq",
    "mx_quantize_blocks",
    "nvfp4_global_scale",
    "nvfp4_qdq",
    "nvfp4_quantize_blocks",
    "quant_element",
    "quantize_float",
    "quantize_fp8",
    "quantize_mx",
    "quantize_nvfp4",
]
