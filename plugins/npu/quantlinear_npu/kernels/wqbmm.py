"""Ascend W2-W8 through torch_npu.npu_weight_quant_batchmatmul [verified: against fakes only, not on hardware].

Written against op-plugin's documentation and code (see README.md):
``docs/zh/custom_APIs/torch_npu/torch_npu-npu_weight_quant_batchmatmul.md``,
``torch_npu-npu_convert_weight_to_int4pack.md``, ``op_plugin/config/op_plugin_functions.yaml`` and
``op_plugin/ops/opapi/WeightQuantBatchMatmulV2KernelNpuOpApi.cpp``::

    npu_weight_quant_batchmatmul(Tensor x, Tensor weight, Tensor antiquant_scale, Tensor? antiquant_offset=None,
        Tensor? quant_scale=None, Tensor? quant_offset=None, Tensor? bias=None, int antiquant_group_size=0,
        int inner_precise=0, int? weight_dtype=None) -> Tensor
    y = x @ ((weight + antiquant_offset) * antiquant_scale) + bias

Repacking of canonical weights ``W = (q - z) * s``: with centre ``c = 2**(bits-1)`` the signed
codes ``q - c`` fit int4 (bits <= 4, range [-8, 7]) or int8 (bits 5-8), and
``(q - z) * s = ((q - c) + (c - z)) * s``, so ``antiquant_offset = c - z`` (zero for symmetric
layers, which then pass no offset).  Offsets are small integers, exact in fp16/bf16.

* int8 weights: stored ``[N, K]`` contiguous, passed as the transposed ``(K, N)`` view (the doc's
  recommended ND layout).
* int4 weights: the signed codes as int32 ``[N, K]`` go through
  ``torch_npu.npu_convert_weight_to_int4pack`` (int32 ``[N, K/8]``; its nibble order is not
  documented and this kernel never depends on it) and are passed as the transposed ``(K/8, N)``
  view, from which the op reads ``K = 8 * size(-2)`` (as torchao does).
* scales/offsets in the activation dtype: per-channel ``(N,)`` with ``antiquant_group_size=0``, or
  per-group ``(ceil(K/g), N)`` with ``g`` a multiple of 32 in ``[32, K-1]`` (a partial last group
  is allowed).  Bias is fused: fp16 for fp16 activations, fp32 for bf16 (the op's rule).
* Limits: ``1 <= K, N <= 65535``; bf16 and int4 only on Atlas A2/A3; Atlas inference cards
  (Ascend310P) take fp16 activations with int8 weights only.
"""

from __future__ import annotations

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict

from .. import runtime

MAX_DIM = 65535


class WeightQuantBatchMatmulLinear(QuantLinear):
    """Ascend W2-W8 through torch_npu.npu_weight_quant_batchmatmul [verified: against fakes only, not on hardware]."""

    name = "npu.wqbmm"
    priority = 40
    device_families = frozenset({"npu"})
    bits = frozenset({2, 3, 4, 5, 6, 7, 8})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    fuses_bias = True
    verified = runtime.VERIFIED

    @staticmethod
    def storage_bits(bits: int) -> int:
        return 4 if bits <= 4 else 8

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        K, N = spec.in_features, spec.out_features
        if K > MAX_DIM or N > MAX_DIM:
            return Verdict.no(f"in_features={K}, out_features={N}: the op takes K and N in [1, {MAX_DIM}]")
        if spec.num_groups > 1 and spec.group_size % 32:
            return Verdict.no(f"group_size={spec.group_size} is not a multiple of 32 (antiquant_group_size must be)")
        int4 = cls.storage_bits(spec.scheme.bits) == 4
        if int4 and K % 8:
            return Verdict.no(f"in_features={K} is not a multiple of 8, needed to pack int4 codes into int32 along K")
        if int4 and K == 8 and N == 1:
            return Verdict.no("the op rejects a transposed int4 weight of shape (1, 8) (documented limitation)")
        ok, why = runtime.status()
        if not ok:
            return Verdict.no(why)
        soc = runtime.soc_name(spec.device)
        prod = runtime.product(soc)
        if prod is None:
            return Verdict.no(f"{soc or 'this NPU'} is not among the op's documented products (Atlas A2/A3, Atlas inference cards)")
        if prod == runtime.INT8_FP16:
            if spec.dtype != torch.float16:
                return Verdict.no(f"{soc} ({prod}) takes float16 activations only")
            if int4:
                return Verdict.no(f"{soc} ({prod}) takes int8 weights only; {spec.scheme.bits}-bit codes would need int4")
        note = "" if not soc.startswith("Ascend950") else f"{soc} is not in the op's documented product table"
        return Verdict.yes(note)

    def prepare(self, w: IntWeights) -> None:
        spec = self.spec
        dt = spec.dtype
        bits = spec.scheme.bits
        c = 1 << (bits - 1)
        signed = w.qweight.to(torch.int32) - c  # [N, K], in [-c, c) within the storage range
        if self.storage_bits(bits) == 4:
            packed = torch.ops.npu.npu_convert_weight_to_int4pack(signed.contiguous(), 0)  # [N, K/8] int32
        else:
            packed = signed.to(torch.int8).contiguous()  # [N, K]
        self.register_buffer("weight_packed", packed)
        per_group = spec.num_groups > 1
        self.antiquant_group_size = spec.group_size if per_group else 0
        scales = w.scales.t() if per_group else w.scales[:, 0]  # (G, N) or (N,)
        offset = (c - w.zeros.to(torch.float32)).t() if per_group else (c - w.zeros[:, 0].to(torch.float32))
        self.register_buffer("antiquant_scale", scales.to(dt).contiguous())
        self.register_buffer("antiquant_offset", offset.to(dt).contiguous() if bool((offset != 0).any()) else None)
        if self.bias is not None:
            self._buffers["bias"] = self.bias.to(torch.float16 if dt == torch.float16 else torch.float32)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.npu.npu_weight_quant_batchmatmul(
            x,
            self.weight_packed.t(),
            self.antiquant_scale,
            self.antiquant_offset,
            None,
            None,
            self.bias,
            self.antiquant_group_size,
            0,
        )
