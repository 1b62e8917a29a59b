"""The device-neutral halves of the GPU plugins' kernels: ``prepare`` and ``compute``.

A plugin subclasses these, names its kernel, declares its device family and writes ``check``
(what its devices need); the packing and the call path are the same everywhere.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear

from . import ops as _ops
from . import tune
from .packing import (TINYGEMM_GROUPS, SlabMeta, choose_slab, constant_zero, pack_codes, pack_scales, pack_zeros, tinygemm_group,
                      tinygemm_inner_k_tiles, tinygemm_nibbles, tinygemm_scales_and_zeros)


class TritonSlabBase(QuantLinear):
    """Weight-only int (2/3/4/8-bit) x fp16/bf16 (fp32) through the shared Triton kernels.

    ``prepare`` repacks the canonical codes once into the slab-interleaved int32 layout
    (:mod:`.packing`), keeps the checkpoint's scales bit-exact, and drops zero points when they
    are one constant (every symmetric checkpoint).  No float copy of the weight is kept.
    ``compute`` runs the plugin's op: in eager mode its implementation directly (no dispatcher
    round trip; after the first call at an M, through the layer's launch plan for it: see
    :func:`quantlinear_triton.ops.run_gemm`), under ``torch.compile`` the registered custom op.
    """

    abstract = True
    bits = frozenset({2, 3, 4, 8})
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    fuses_bias = True
    #: the plugin's ops module: ``run_gemm(x, qweight, ..., problem)`` and ``OP`` (its torch.ops overload packet)
    ops_module: ClassVar[ModuleType]

    @staticmethod
    def slab_reason(spec: LayerSpec) -> str | None:
        if choose_slab(spec.group_size, spec.in_features) is None:
            return f"group_size={spec.group_size} must be a multiple of 16 or span all {spec.in_features} input channels"
        return None

    def prepare(self, w: IntWeights) -> None:
        s = self.spec
        bits, g, K, N = s.scheme.bits, s.group_size, s.in_features, s.out_features
        slab = choose_slab(g, K)
        self.meta = SlabMeta(bits, slab, g, K, N)
        zc = constant_zero(w.zeros)
        self.register_buffer("w_slab", pack_codes(w.qweight, bits, slab))
        self.register_buffer("w_scales", pack_scales(w.scales))
        self.register_buffer("w_zeros", None if zc is not None else pack_zeros(w.zeros))
        self.zero_point = float(zc if zc is not None else 0)
        self.problem = tune.Problem(bits, slab, g, zc is None, _ops.dtype_name(s.dtype), N, K)
        self._plans = _ops.PlanCache()  # eager launch plans by M (quantlinear_triton.ops.run_gemm)
        if self.w_slab.is_cuda:  # allocate the split-K counters and workspace now, never during a graph capture
            _ops.triton_kernels().reserve(self.w_slab.device)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        m = self.meta
        if type(x) is torch.Tensor and not x.is_meta and not torch.compiler.is_compiling():
            # eager: skip the dispatcher round trip (same code the op runs); buffers read straight
            # from ``_buffers`` (nn.Module.__getattr__ is a slow fallback, this is the decode hot path)
            b = self._buffers
            return self.ops_module.run_gemm(x, b["w_slab"], b["w_scales"], b["w_zeros"], b.get("bias"), m.bits, m.group_size,
                                            m.in_features, m.slab, self.zero_point, self.problem, self._plans)
        return self.ops_module.OP(x, self.w_slab, self.w_scales, self.w_zeros, self.bias, m.bits, m.group_size, m.in_features, m.slab,
                                  self.zero_point)

    def packed_bytes(self) -> int:
        """Bytes the kernels read per call for the weight (codes, scales, zeros)."""
        return sum(t.numel() * t.element_size() for t in (self.w_slab, self.w_scales, self.w_zeros) if t is not None)


class TinyGemmBase(QuantLinear):
    """PyTorch's tinygemm int4 kernel (``aten._weight_int4pack_mm``), the same call on CUDA and ROCm.

    tinygemm computes ``w = (q - 8) * s + zero`` with 4-bit ``q``, bf16 activations only.  Any
    2-, 3- or 4-bit code with integer zero ``z`` fits exactly with the float zero
    ``(8 - z) * s``.  The op takes group sizes 32..256; larger groups (and per-channel) are
    split into sub-groups repeating the same scale and zero, which is exact.  Scales and zeros
    are rounded to bf16 (the op's format).  The weight is packed by
    ``aten._convert_weight_to_int4pack`` on the layer's own device: the packed layout is the
    device build's own (ROCm's differs from CUDA's in the same shape), so it is never made
    elsewhere and moved.
    """

    abstract = True
    bits = frozenset({2, 3, 4})
    dtypes = frozenset({torch.bfloat16})
    needs_whole_groups = True

    @staticmethod
    def op_reason() -> str | None:
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm") or not hasattr(torch.ops.aten, "_convert_weight_to_int4pack"):
            return f"torch {torch.__version__} has no aten._weight_int4pack_mm"
        return None

    @staticmethod
    def layout_reason(spec: LayerSpec) -> str | None:
        if tinygemm_group(spec.group_size) is None:
            return f"group_size={spec.group_size} is not a multiple of 32 (the op takes groups of {'/'.join(map(str, TINYGEMM_GROUPS))})"
        if tinygemm_inner_k_tiles(spec.in_features) is None:
            return f"in_features={spec.in_features} is not a multiple of 32"
        return None

    def prepare(self, w: IntWeights) -> None:
        g = self.spec.group_size
        og = tinygemm_group(g)
        self.op_group = og
        self.inner_k_tiles = tinygemm_inner_k_tiles(self.in_features)
        packed = torch.ops.aten._convert_weight_to_int4pack(tinygemm_nibbles(w.qweight), self.inner_k_tiles)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", tinygemm_scales_and_zeros(w, g, og, torch.bfloat16))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm(x, self.packed, self.op_group, self.scales_and_zeros)

    def packed_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales_and_zeros))
