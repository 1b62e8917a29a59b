"""``cuda.scaled_mm_mx``: MXFP4 / MXFP8 / MXINT4 and NVFP4 (W4A4, W8A8) on Blackwell's block-scaled tensor cores.

**Verified only against a fake**: no Blackwell GPU was available.  The code is checked against
``tests/fake_scaled_mm.py``, a model of PyTorch's CUDA ``_scaled_mm`` / ``_scaled_mm_v2`` contract (dtypes,
shapes, swizzled scale sizes with their 128x4 padding, capability) that computes the reference by un-swizzling
the scales with cuBLAS's documented index formula.  Until it runs on an sm100 GPU, treat it as unproven there.

These AutoRound presets quantize activations too, on the MX / NVFP4 grid, so a block-scaled GEMM of the
activation codes and the weight codes computes the reference exactly (up to fp32 accumulation order):
activations are quantized with the reference's rounding (``quantlinear_cuda.blockscaled``) into codes and
block scales, the weight keeps its checkpoint codes, and ``torch._scaled_mm`` multiplies them.

* MX schemes (E8M0 scale per 32): one FP8 x FP8 block-scaled GEMM (``_scaled_mm`` with ``float8_e4m3fn``
  operands and ``float8_e8m0fnu`` scales, PyTorch's MXFP8 path, torch 2.7+).  E2M1 (MXFP4) and E0M4 (MXINT4)
  weights, and E2M1 activations, are re-encoded as E4M3 -- exact, every FP4 / INT4 value is an E4M3 value -- because
  PyTorch's v1 ``_scaled_mm`` takes packed FP4 with E8M0 scales on CUDA only in recent main (2.11-2.13 route MXFP4
  through FBGEMM's ``f4f4bf16`` in ``F.scaled_mm`` only when built with it).  The cost: the weight takes 1 byte per
  element (not 0.5), and the GEMM runs at FP8 rate.
* NVFP4 (E4M3 scale per 16 + global scales): ``torch.nn.functional.scaled_mm`` (torch 2.10+) with
  ``float4_e2m1fn_x2`` operands (the checkpoint's packed bytes as they are: even k in the low nibble) and the
  two-level recipe ``[BlockWise1x16, TensorWise]``, whose per-tensor scales (``1 / input_global_scale``,
  ``1 / weight_global_scale``) cuBLAS folds into ``alpha``: one rounding, as in the reference.

Scales go in cuBLAS's swizzled 128x4 layout (``blockscaled.to_blocked``): the weight's once at ``prepare``, the
activation's per call.  Gate (``ScaledBlas.cpp``, ``test/test_scaled_matmul_cuda.py``): compute capability 10.0+
(PyTorch's ``PLATFORM_SUPPORTS_MX_GEMM`` is ``SM100OrLater``; sm120 is not verified), in_features a multiple of 32
(MX block; NVFP4: packed K a multiple of 16), out_features a multiple of 16, any M.  The bias is added after the
GEMM (not fused: PyTorch's tests never exercise a bias with block-scaled GEMMs).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from quantlinear import LayerSpec, QuantLinear, UnsupportedSchemeError, Verdict, fpcodes, fpquant
from quantlinear.formats import FloatWeights

from .. import blockscaled
from .. import device as _device
from . import scaled_mm_fp8 as _fp8
from .common import nvidia_device

MIN_CAPABILITY = (10, 0)
MX_MIN_TORCH = (2, 7)
NVFP4_MIN_TORCH = (2, 10)
VERIFIED = "only against tests/fake_scaled_mm.py (a fake of PyTorch's block-scaled _scaled_mm); never on a Blackwell GPU"


def torch_support_reason(nv: bool) -> str | None:
    v = _fp8.torch_version()
    if nv:
        ok = v >= NVFP4_MIN_TORCH and hasattr(torch, "float4_e2m1fn_x2") and hasattr(torch.nn.functional, "scaled_mm")
        return None if ok else (f"NVFP4 needs torch >= 2.10 (torch.nn.functional.scaled_mm with two-level "
                                f"[BlockWise1x16, TensorWise] scales); this is torch {torch.__version__}")
    ok = v >= MX_MIN_TORCH and hasattr(torch, "float8_e8m0fnu") and hasattr(torch, "_scaled_mm")
    return None if ok else f"MX block-scaled _scaled_mm needs torch >= 2.7 (float8_e8m0fnu scales); this is torch {torch.__version__}"


def scheme_reason(spec: LayerSpec) -> str | None:
    try:
        kind = fpquant.act_quant_kind(spec.scheme)
    except UnsupportedSchemeError as e:
        return str(e)
    if kind is None:
        return f"weight-only {spec.scheme.id}: the block-scaled GEMM multiplies quantized activations, this scheme keeps them in 16 bits"
    nv = spec.scheme.data_type == "nv_fp"
    k, p = kind
    if (k == "nvfp4") != nv or k not in ("mx", "nvfp4"):
        return f"weights {spec.scheme.data_type} with {k} activations: weights and activations must share the block format"
    want = 16 if nv else 32
    if p["block_size"] != want:
        return f"activation blocks of {p['block_size']}: the hardware block is {want}"
    return None


class ScaledMMMXLinear(QuantLinear):
    name = "cuda.scaled_mm_mx"
    priority = 70
    device_families = frozenset({"cuda"})
    data_types = frozenset({"mx_fp", "mx_fp_rceil", "mx_int", "nv_fp"})
    bits = frozenset({4, 8})
    group_sizes = frozenset({16, 32})
    sym = frozenset({True})
    formats = frozenset({"mxfp4", "mxfp8", "mxint4", "nvfp4"})
    dtypes = frozenset({torch.float16, torch.bfloat16})
    quantizes_activations = True
    verified = VERIFIED

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> Verdict:
        if spec.device.type == "cpu" and _fp8.CPU_STANDS_IN:
            spec = replace(spec, device=torch.device("cuda"))
        if spec.dtype == torch.float32:
            v = super().can_implement(replace(spec, dtype=torch.bfloat16))
            if not v:
                return v
            return Verdict.no("float32 activations: only bf16/fp16 outputs of the block-scaled GEMM are used; run the model in bf16 or fp16")
        return super().can_implement(spec)

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        nv = spec.scheme.data_type == "nv_fp"
        props, reason = nvidia_device(spec)
        reason = reason or scheme_reason(spec) or torch_support_reason(nv)
        if reason:
            return Verdict.no(reason)
        if props.capability < MIN_CAPABILITY:
            return Verdict.no(f"needs sm100+ (Blackwell) block-scaled torch._scaled_mm (cuBLASLt {'NVFP4' if nv else 'MXFP8'}); "
                              f"{props.name} is {props.arch}")
        K, N = spec.in_features, spec.out_features
        if K % 32 or N % 16:
            return Verdict.no(f"block-scaled _scaled_mm needs in_features a multiple of 32 and out_features a multiple of 16; "
                              f"got K={K}, N={N}")
        how = "NVFP4 x NVFP4 (two-level scales)" if nv else "FP8 x FP8 with E8M0 block scales (MXFP8 path)"
        return Verdict.yes(f"{how}; verified only against a fake of _scaled_mm")

    def prepare(self, w: FloatWeights) -> None:
        s = self.spec
        _, p = fpquant.act_quant_kind(s.scheme)
        self.nv = s.scheme.data_type == "nv_fp"
        if self.nv:
            raw = w.raw_scales if w.scale_kind == "e4m3" and w.raw_scales is not None else w.scales.to(torch.float8_e4m3fn)
            self.register_buffer("w_fp4", fpcodes.pack_nibbles(w.codes).contiguous())
            self.register_buffer("w_scale_blocked", blockscaled.to_blocked(raw.contiguous().view(torch.uint8)))
            gs = w.global_scale.to(torch.float32).reshape(1)
            self.register_buffer("w_global_inv", blockscaled.recip(gs))
            igs = w.input_global_scale.to(torch.float32).reshape(1)
            self.register_buffer("input_global_scale", igs.clone())
            self.register_buffer("a_global_inv", blockscaled.recip(igs))
            return
        self.act_element, self.rceil = p["element"], p["rceil"]
        codes = w.codes if w.element == "e4m3" else w.values(torch.float32).to(torch.float8_e4m3fn).view(torch.uint8)
        raw = w.raw_scales if w.scale_kind == "e8m0" and w.raw_scales is not None else fpcodes.encode_e8m0(w.scales)
        self.register_buffer("w_fp8", codes.contiguous())
        self.register_buffer("w_scale_blocked", blockscaled.to_blocked(raw.contiguous()))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.nv:
            return self._compute_nvfp4(x)
        codes, scales = blockscaled.quantize_act_mx(x, self.act_element, self.rceil)
        return torch._scaled_mm(codes, self.w_fp8.view(torch.float8_e4m3fn).t(),
                                scale_a=blockscaled.to_blocked(scales).view(torch.float8_e8m0fnu),
                                scale_b=self.w_scale_blocked.view(torch.float8_e8m0fnu), out_dtype=x.dtype)

    def _compute_nvfp4(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        packed, scales = blockscaled.quantize_act_nvfp4(x, self.input_global_scale)
        recipe = [F.ScalingType.BlockWise1x16, F.ScalingType.TensorWise]
        swizzle = [F.SwizzleType.SWIZZLE_32_4_4, F.SwizzleType.NO_SWIZZLE]
        sa = blockscaled.to_blocked(scales.view(torch.uint8)).view(torch.float8_e4m3fn)
        sb = self.w_scale_blocked.view(torch.float8_e4m3fn)
        return F.scaled_mm(packed.view(torch.float4_e2m1fn_x2), self.w_fp4.view(torch.float4_e2m1fn_x2).t(),
                           [sa, self.a_global_inv], recipe, [sb, self.w_global_inv], recipe,
                           swizzle_a=swizzle, swizzle_b=swizzle, output_dtype=x.dtype)
