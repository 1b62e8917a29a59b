"""The device-neutral half of the GPU plugins' GGUF kernels: ``prepare`` and ``compute``.

A plugin subclasses :class:`GGUFTritonBase`, names its kernel, declares its device family and
writes ``check`` (what its devices need); repacking and the call path are the same everywhere.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

import torch

from quantlinear import LayerSpec, QuantLinear
from quantlinear.formats import GGUFWeights
from quantlinear.gguf_types import GGUF_FORMATS, GGUF_TYPES

from . import gguf_ops
from .gguf_packing import SUPPORTED, repack
from .gguf_tune import GGUFProblem
from .ops import dtype_name


class GGUFTritonBase(QuantLinear):
    """llama.cpp's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K x fp16/bf16/fp32 through the GGUF Triton kernels.

    ``prepare`` repacks the file's blocks once into the sub-block layout (:mod:`.gguf_packing`:
    the same bits, reordered; 4 extra bytes per K-quant block), so no float copy of the weight is
    kept.  ``compute`` runs the GEMV or tensor-core kernel chosen for M: in eager mode the plugin's
    implementation directly (no dispatcher round trip), under ``torch.compile`` its custom op.
    """

    abstract = True
    data_types = frozenset({"gguf"})
    bits = frozenset(GGUF_TYPES[t].bits for t in SUPPORTED)
    group_sizes = frozenset(GGUF_TYPES[t].block for t in SUPPORTED)
    formats = frozenset(GGUF_TYPES[t].format for t in SUPPORTED)
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    needs_whole_groups = True
    fuses_bias = True
    #: the plugin's GGUF ops module: ``run_gemm(x, qs, qh, sm, bm, bias, qtype, problem)`` and ``OP``
    ops_module: ClassVar[ModuleType]

    @staticmethod
    def scheme_reason(spec: LayerSpec) -> str | None:
        """Why the layer's scheme is not its format's type (the format says too; kept for explain), or None."""
        t = GGUF_FORMATS[spec.format]
        s = spec.scheme
        if (s.bits, s.group_size, s.sym) != (t.bits, t.block, t.sym):
            return (f"format {spec.format} stores {t.name} (bits={t.bits}, group_size={t.block}, sym={t.sym}), "
                    f"not bits={s.bits}, group_size={s.group_size}, sym={s.sym}")
        return None

    def prepare(self, w: GGUFWeights) -> None:
        p = repack(w.qtype, w.data, self.in_features)
        self.qtype = w.qtype
        self.register_buffer("gguf_qs", p.qs)
        self.register_buffer("gguf_qh", p.qh)
        self.register_buffer("gguf_sm", p.sm)
        self.register_buffer("gguf_bm", p.bm)
        self.problem = GGUFProblem(w.qtype, dtype_name(self.spec.dtype), self.out_features, self.in_features)
        if p.qs.is_cuda:  # allocate the split-K counters now, never during a graph capture
            gguf_ops.gguf_kernels().counters(p.qs.device)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and type(x) is torch.Tensor and not x.is_meta:
            # eager: skip the dispatcher round trip (same code the op runs)
            return self.ops_module.run_gemm(x, self.gguf_qs, self.gguf_qh, self.gguf_sm, self.gguf_bm, self.bias, self.qtype,
                                            self.problem)
        return self.ops_module.OP(x, self.gguf_qs, self.gguf_qh, self.gguf_sm, self.gguf_bm, self.bias, self.qtype)

    def packed_bytes(self) -> int:
        """Bytes the kernels read per call for the weight (codes, high bits, scales)."""
        return sum(t.numel() * t.element_size() for t in (self.gguf_qs, self.gguf_qh, self.gguf_sm, self.gguf_bm) if t is not None)


__all__ = ["GGUFTritonBase"]
