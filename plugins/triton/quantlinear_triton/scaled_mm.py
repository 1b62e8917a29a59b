"""What the FP8 ``torch._scaled_mm`` kernels of the GPU plugins can run, declared once.

:class:`FP8ScaledMMBase` holds the capability declarations the CUDA and ROCm ``*.fp8_scaled_mm``
kernels share (FP8_STATIC: E4M3 weights with one or per-channel scales, static FP8 activations,
fp16/bf16 activations, bias fused).  It is device-neutral and not a kernel: each plugin's subclass
adds its name, priority, device family, checks and ``prepare``/``compute``.  Shared with them: :func:`fp8_static_reason`
(the scheme check), :func:`define_fp8_quant_static` (each plugin's activation quantization op),
:func:`quantize_static` (its torch fallback), :func:`unit_rows` and :func:`rowwise_scale_b` (the row-wise ``scale_a``
and ``scale_b``).  Imports no Triton.
"""

from __future__ import annotations

import torch

from quantlinear import LayerSpec, QuantLinear, UnsupportedSchemeError, fpquant

from .device_buffers import GrowingBuffers


class FP8ScaledMMBase(QuantLinear):
    """FP8 x FP8 ``torch._scaled_mm`` with a static per-tensor activation scale (FP8_STATIC)."""

    abstract = True
    data_types = frozenset({"fp"})
    bits = frozenset({8})
    group_sizes = frozenset({-1, 0})
    sym = frozenset({True})
    formats = frozenset({"fp8"})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    quantizes_activations = True
    fuses_bias = True


def fp8_static_reason(spec: LayerSpec) -> str | None:
    """Why ``spec`` is not an FP8 x FP8 product with a static per-tensor activation scale (FP8_STATIC); None if it is."""
    try:
        kind = fpquant.act_quant_kind(spec.scheme)
    except UnsupportedSchemeError as e:
        return str(e)
    if kind is None:
        return ("weight-only FP8 (activations stay in 16 bits): there is no FP8 x FP8 product for _scaled_mm "
                "(quantizing activations would change the numerics)")
    if kind[0] != "fp8_static":
        return f"activation quantization {kind[0]} is not static FP8"
    return None


def quantize_static(x: torch.Tensor, scale: torch.Tensor, qmax: float = 448.0,
                    fp8_dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """``clamp(x / scale, +-qmax).to(fp8_dtype)``: ``fpquant.fp8_static_quantize_input``, bit for bit (the torch form).

    The fallback where Triton is missing (the layers otherwise run their plugin's ``fp8_quant_static`` op).  Eager:
    the reference's three ops.  Under ``torch.compile`` the quotient is rounded to the promoted dtype explicitly (fp32
    division, then a cast: what eager's bf16/fp16 division does internally), because Inductor fuses the ops and would
    otherwise keep the fp32 quotient and round it to FP8 once, not twice as the reference does.  (Inductor on a GPU
    may still drop that cast: ``emulate_precision_casts=False``.)
    """
    if torch.compiler.is_compiling():
        q = (x.to(torch.float32) / scale.to(torch.float32)).to(torch.promote_types(x.dtype, scale.dtype))
    else:
        q = x / scale
    return torch.clamp(q, -qmax, qmax).to(fp8_dtype)


#: rows of the all-ones column :func:`unit_rows` keeps per device (64K rows, 256 KB; grown outside graph capture)
UNIT_ROWS = 1 << 16
#: the all-ones columns by (device type, index); a CUDA graph captured with a slice of one reads it at every replay,
#: so every column ever handed out stays alive
_UNITS = GrowingBuffers(lambda n, device: torch.ones((n, 1), dtype=torch.float32, device=device),
                        lambda need, old: max(need, UNIT_ROWS, 2 * old),
                        lambda key, device: device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def unit_rows(M: int, device: torch.device) -> torch.Tensor:
    """``[M, 1]`` fp32 ones on ``device``, contiguous: the row-wise ``scale_a`` of the FP8 layers.

    Why: row-wise ``_scaled_mm`` wants a contiguous ``[M, 1]`` activation scale, and the layers' static input scale
    repeated M times, made per call (``expand(M, 1).contiguous()``), was a kernel launch of its own on every call (a
    few microseconds in a CUDA graph, next to a ~30 us GEMM at M = 1024).  The layers fold the input scale into the
    per-channel ``scale_b`` instead and pass a slice of one shared column of ones: a view, no launch.  Under
    ``torch.compile``, or when a graph capture needs more rows than the column has, a fresh ``torch.ones`` (one fill).
    """
    if torch.compiler.is_compiling():
        return torch.ones((M, 1), dtype=torch.float32, device=device)
    col = _UNITS.get((device.type, device.index), M, device)
    return col[:M] if col is not None else torch.ones((M, 1), dtype=torch.float32, device=device)


def rowwise_scale_b(weight_scales: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """The row-wise ``scale_b`` that goes with :func:`unit_rows` as ``scale_a``: the per-channel weight scales times the
    static input scale, fp32 ``[1, N]``, contiguous (made once at ``prepare``)."""
    return (weight_scales.to(torch.float32).reshape(1, -1) * input_scale.to(torch.float32).reshape(1, 1)).contiguous()


def define_fp8_quant_static(qualname: str):
    """Register ``qualname`` (``"<namespace>::fp8_quant_static"``) as a plugin's activation quantization custom op.

    ``op(x, scale, fnuz=False, slab=0)`` is ``clamp(x / scale, +-448).to(float8_e4m3fn)`` (``fnuz``: ``+-224``,
    ``float8_e4m3fnuz``; ``slab`` > 0: the byte order of slab words, K padded to whole tiles), bit-exact with the
    reference, in one Triton launch (:mod:`quantlinear_triton.fp8_act`, imported on the first call).  Being opaque to
    ``torch.compile``, Inductor cannot drop the rounding of the quotient to the promoted dtype; ``fullgraph=True``
    traces through its fake.  Registering it imports no Triton.
    """

    def fp8_quant_static(x: torch.Tensor, scale: torch.Tensor, fnuz: bool = False, slab: int = 0) -> torch.Tensor:
        from . import fp8_act

        return fp8_act.quantize_static(x, scale, fnuz, slab=slab)

    fp8_quant_static.__doc__ = ("``clamp(x / scale, +-qmax)`` in FP8, bit-exact with the reference (one Triton launch); "
                                "``slab`` > 0: columns in the byte order of slab words, K padded to whole tiles")
    op = torch.library.custom_op(qualname, mutates_args=())(fp8_quant_static)

    @op.register_fake
    def _fake(x, scale, fnuz=False, slab=0):
        torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
        torch._check(scale.numel() == 1, lambda: "the static input scale must have one element")
        K = x.shape[1] if not slab else (x.shape[1] + 4 * slab - 1) // (4 * slab) * (4 * slab)
        return x.new_empty((x.shape[0], K), dtype=torch.float8_e4m3fnuz if fnuz else torch.float8_e4m3fn)

    return op


__all__ = ["FP8ScaledMMBase", "define_fp8_quant_static", "fp8_static_reason", "quantize_static", "rowwise_scale_b",
           "unit_rows"]
