"""The device-neutral half of the GPU plugins' float-scheme kernels: ``prepare`` and ``compute``.

A plugin subclasses :class:`FloatTritonBase`, names its kernel, declares its device family,
writes ``check`` (what its devices need) and, where its hardware decodes FP8 natively, overrides
:meth:`FloatTritonBase.fp8_decode`; packing and the call path are the same everywhere.
"""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType
from typing import Callable, ClassVar

import torch

from quantlinear import LayerSpec, QuantLinear, UnsupportedSchemeError, fpquant
from quantlinear.formats import FloatWeights, get_format

from . import fp_ops
from .fp_packing import E4M3, S_E8M0, act_block_reason, prepare_float
from .fp_tune import FPProblem
from .ops import PlanCache, dtype_name, view_once


class FloatTritonBase(QuantLinear):
    """MXFP4 / MXFP8 / MXINT4 / NVFP4 / FP8 (FPW8A16, FP8_STATIC) x fp16/bf16/fp32 through the float Triton kernels.

    ``prepare`` keeps the checkpoint's codes and scale bytes (repacked, :mod:`.fp_packing`); no
    float copy of the weight is kept.  ``compute`` quantizes activations where the scheme does
    (bit-exact with :mod:`quantlinear.fpquant`) and runs the GEMV or ``tl.dot`` kernel chosen for M:
    in eager mode the plugin's implementation directly, under ``torch.compile`` its custom op.
    """

    abstract = True
    data_types = frozenset({"mx_fp", "mx_fp_rceil", "mx_int", "nv_fp", "fp"})
    bits = frozenset({4, 8})
    group_sizes = frozenset({32, 16, -1, 0})
    sym = frozenset({True})
    formats = frozenset({"mxfp4", "mxfp8", "mxint4", "nvfp4", "fp8"})
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    fuses_bias = True
    quantizes_activations = True
    #: the plugin's float ops module: ``run_fp_gemm(x, ..., problem)`` and ``FP_OP`` (its op overload packet)
    ops_module: ClassVar[ModuleType]

    @staticmethod
    def scheme_reason(spec: LayerSpec) -> str | None:
        """Why the float kernels cannot run this layer's scheme/shape, or None."""
        reason = get_format(spec.format).check_shape(spec)
        if reason:
            return reason
        try:
            kind = fpquant.act_quant_kind(spec.scheme)
        except UnsupportedSchemeError as e:
            return str(e)
        return act_block_reason(kind)

    def mmv_scales(self) -> bool:
        """Whether ``prepare`` also writes MXFP4's scales for the tensor-core decode kernel (``fp_mmv_sigma``,
        :func:`.fp_packing.mx_sigma`: one byte per block, as many as the block scales).  Default: no; a plugin whose
        devices run ``mmv`` says yes."""
        return False

    def fp8_decode(self) -> tuple[int, Callable[[torch.Tensor], torch.Tensor] | None]:
        """How FP8 weight elements are decoded here: (ELEM code, transform of the uint8 codes or None).

        Default: the exact integer bit decode.  Plugins return ``E4M3_NV`` where the hardware
        converts e4m3fn, or ``E4M3_B8`` with a conversion to e4m3fnuz bytes (ROCm gfx942).
        """
        return E4M3, None

    def prepare(self, w: FloatWeights) -> None:
        fp8_elem, transform = self.fp8_decode() if w.element == "e4m3" else (E4M3, None)
        if transform is not None:
            w = replace(w, codes=transform(w.codes))
        meta, t = prepare_float(w, fpquant.act_quant_kind(self.spec.scheme), fp8_elem=fp8_elem, mmv=self.mmv_scales())
        self.meta = meta
        self.register_buffer("fp_qweight", t["qweight"])
        self.register_buffer("fp_scales", t["scales"])
        self.register_buffer("fp_row_scales", t["row_scales"])
        self.register_buffer("fp_act_scale", t["act_scale"])
        self.register_buffer("fp_mmv_sigma", t["mmv_sigma"])
        self.problem = layer_problem(meta, self.spec.dtype, self.fp_qweight.device)
        self._plans = PlanCache()  # eager launch plans by M (quantlinear_triton.ops.run_planned)
        self._sig64 = None  # (fp_mmv_sigma, its int64 view) for MXFP4's mmv, made on the first call

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        b = self._buffers  # (nn.Module.__getattr__ is a slow fallback on the decode hot path)
        sig = b["fp_mmv_sigma"]
        if sig is not None and sig.dtype != torch.int64 and self.meta.scale == S_E8M0 and not torch.compiler.is_compiling():
            self._sig64 = view_once(self._sig64, sig, torch.int64)  # MXFP4: mmv reads a row's 8 sigma bytes of a tile
            sig = self._sig64[1]                                      # as one int64
        return run_float(self.ops_module, x, self.meta, self.problem, b["fp_qweight"], b["fp_scales"], b["fp_row_scales"],
                         b.get("bias"), b["fp_act_scale"], sig, self._plans)

    def packed_bytes(self) -> int:
        """Bytes the kernels read per call for the weight (codes, block scales, row scales)."""
        return sum(t.numel() * t.element_size() for t in (self.fp_qweight, self.fp_scales, self.fp_row_scales) if t is not None)


def layer_problem(meta, dtype: torch.dtype, device: torch.device) -> FPProblem:
    """The tuning key of a prepared layer (:func:`.fp_packing.prepare_float`'s ``meta``, activations in ``dtype``),
    with the split-K counters of a CUDA ``device`` allocated now, never during a graph capture.  Shared by
    :class:`FloatTritonBase` and the layers that run the float kernels as a second path."""
    if device.type == "cuda":
        fp_ops.fp_kernels().reserve(device)  # the split-K counters and workspace: never allocated during a capture
    return FPProblem(meta.elem, meta.scale, meta.slab, meta.bits, dtype_name(dtype), meta.out_features, meta.in_features)


def run_float(ops_module: ModuleType, x: torch.Tensor, m, problem: FPProblem, qweight: torch.Tensor, scales, row_scales,
              bias, act_scale, mmv_sigma=None, plans: dict | None = None) -> torch.Tensor:
    """One call of the float kernels on prepared tensors (:func:`.fp_packing.prepare_float`): in eager mode the
    plugin's implementation directly (through the layer's launch ``plans`` where given), under ``torch.compile`` (or
    for tensor subclasses / meta tensors) its custom op.

    Shared by :class:`FloatTritonBase` and the layers that keep the same tensors for a second path (the CUDA FP8
    ``_scaled_mm`` layer runs its small-M calls here).
    """
    if not torch.compiler.is_compiling() and type(x) is torch.Tensor and not x.is_meta:
        # eager: skip the dispatcher round trip (same code the op runs)
        return ops_module.run_fp_gemm(x, qweight, scales, row_scales, bias, act_scale, m.in_features, m.elem, m.scale, m.block,
                                      m.act, m.act_block, problem, mmv_sigma, m.mmv_mul, plans)
    return ops_module.FP_OP(x, qweight, scales, row_scales, bias, act_scale, m.in_features, m.elem, m.scale, m.block, m.act,
                            m.act_block, mmv_sigma, m.mmv_mul)


__all__ = ["FloatTritonBase", "layer_problem", "run_float"]
