"""Shared CPU machinery of the floating-point / microscaling kernels (mxfp.py, nvfp4.py, fp8.py).

Weights stay in their stored encoding (4-bit codes packed two per byte, FP8 bytes, encoded
scales); each call decodes a bounded block of output rows at a time, exactly in fp32, casts it
to the compute dtype and multiplies, so no float copy of the weight persists.  Activations
are quantized first when the scheme says so, with the core's reference functions
(:mod:`quantlinear.fpquant`), which reproduce AutoRound's inference modules operation for
operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantlinear import LayerSpec, QuantLinear, UnsupportedSchemeError, Verdict
from quantlinear import fpcodes, fpquant

#: Upper bound on the scratch float weight block, in elements (as cpu.dequant).
BLOCK_ELEMENTS = 1 << 22


def byte_table(element: str) -> torch.Tensor:
    """fp32 ``[256, 2]``: the two element values of every packed byte (low nibble first)."""
    lut = fpcodes.element_table(element, torch.float32)
    b = torch.arange(256)
    return torch.stack((lut[b & 15], lut[b >> 4]), dim=-1)


class FloatDequantLinear(QuantLinear):
    """Decode rows of a float-format weight block by block; quantize activations first if asked."""

    abstract = True
    device_families = frozenset({"cpu"})
    sym = frozenset({True})
    dtypes = frozenset({torch.float32, torch.float16, torch.bfloat16})
    quantizes_activations = True
    fuses_bias = True  # F.linear(x, W, bias), as AutoRound's reference modules do
    #: activation-quantization kinds (fpquant.act_quant_kind) this kernel runs
    act_kinds: frozenset[str] = frozenset()

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        try:
            kind = fpquant.act_quant_kind(spec.scheme)
        except UnsupportedSchemeError as e:
            return Verdict.no(str(e))
        if kind is not None and kind[0] not in cls.act_kinds:
            return Verdict.no(f"activation quantization {kind[0]} ({spec.scheme.act_data_type}) is not run by this kernel")
        return Verdict.yes()

    def _setup_rows(self) -> None:
        kind = fpquant.act_quant_kind(self.spec.scheme)
        self.act_kind, self.act_params = (None, {}) if kind is None else kind
        self.block_rows = max(1, BLOCK_ELEMENTS // max(1, self.in_features))

    # -- to implement ------------------------------------------------------------------------------
    def dequant_rows(self, r0: int, r1: int) -> torch.Tensor:
        """fp32 weight rows ``[r1 - r0, K]``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        k, p = self.act_kind, self.act_params
        if k is None:
            return x
        if k == "mx":
            return fpquant.mx_qdq(x, p["element"], p["block_size"], p["rceil"])
        if k == "nvfp4":
            return fpquant.nvfp4_qdq(x, self.input_global_scale, p["block_size"])
        # exact fp8 * scale in fp32 (AutoRound's module rounds it to bf16 first); then the compute dtype
        return fpquant.fp8_static_qdq(x, self.input_scale, hp_dtype=torch.float32)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.quantize_input(x)
        dt, N = x.dtype, self.out_features
        if self.block_rows >= N:
            return F.linear(xq, self.dequant_rows(0, N).to(dt), self.bias)
        y = torch.empty(x.shape[0], N, dtype=dt, device=x.device)
        for r0 in range(0, N, self.block_rows):
            r1 = min(N, r0 + self.block_rows)
            y[:, r0:r1] = F.linear(xq, self.dequant_rows(r0, r1).to(dt), None if self.bias is None else self.bias[r0:r1])
        return y
