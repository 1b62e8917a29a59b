"""``rocm.fp8_scaled_mm``: FP8_STATIC (E4M3 weights and activations, static input scale) through ``torch._scaled_mm``.

Not run on AMD hardware (see README.md): checked against ``tests/fake_rocm.py``'s model of the ROCm build of
``_scaled_mm`` (hipBLASLt) and against torch's CPU arithmetic.

The FP8 format is the architecture's (``archs.Arch.fp8``):

* gfx942 (MI300): ``float8_e4m3fnuz`` (bias 8).  The checkpoint's e4m3fn weight is converted once at ``prepare``
  with ``fp8.e4m3fn_to_e4m3fnuz`` (same bytes, half the value, so the weight scale doubles; -0 -> +0).  Activations
  must round exactly as the reference ``fp8_e4m3fn(clamp(x / s, +-448))``: they are quantized as
  ``fp8_e4m3fnuz(clamp(x / (2 s), +-224))`` with the activation scale ``2 s``.  Halving is exact in binary floating
  point and the fnuz grid is the fn grid halved (subnormals included), so every code carries the same byte and
  ``fnuz * 2 s == fn * s`` -- checked over every bf16/fp16 value in tests/test_rocm_scaled_mm.py.  (Quantizing
  ``x / s`` straight to fnuz would saturate at 240 instead of 448.)  ``2 s`` is kept in the stored scale's dtype so
  the division rounds in the same promoted dtype as the reference's.
* gfx950 (MI350) and RDNA4 (gfx1200/gfx1201): OCP ``float8_e4m3fn``, as on CUDA; PyTorch enables them only in ROCm
  >= 6.5 builds (``scaled_mm_arch_allowed``, "Float8_e4m3fn is only supported for ROCm 6.5 and above").

Scales (``ScaledBlas.cpp``): one weight scale -> tensor-wise (bias fused); per-channel -> row-wise on gfx942 with a
bf16 output (hipBLASLt row-wise is an MI300 feature and PyTorch allows only bf16 outputs with it, torch 2.7+),
otherwise the tensor-wise GEMM with fp32 output and the per-channel scale and bias in one elementwise epilogue.
Row-wise calls fold the input scale into the per-channel ``scale_b`` (``col_scale``) and pass ones as ``scale_a`` (a
view of a shared column, :func:`quantlinear_triton.scaled_mm.unit_rows`): no per-call ``[M, 1]`` copy.
K and N must be multiples of 16; activations bf16 or fp16.

Activation quantization: the custom op ``torch.ops.quantlinear_rocm.fp8_quant_static`` (one Triton launch,
:mod:`quantlinear_triton.fp8_act`, its ``fnuz`` variant on gfx942: ``fnuz(clamp(x / 2s, +-224))`` on the bits),
bit-exact with the torch ops for every fp16 / bf16 value and opaque to ``torch.compile`` (whose fusion could drop
the quotient's rounding to the promoted dtype); :func:`quantize_static` (torch ops) where Triton is missing.  The
verdict says which.  Checked in Triton's interpreter only (no AMD hardware here).
"""

from __future__ import annotations

import torch

from quantlinear import CheckpointError, LayerSpec, Verdict
from quantlinear.formats import FloatWeights
from quantlinear_triton.runtime import triton_available
from quantlinear_triton.scaled_mm import (FP8ScaledMMBase, define_fp8_quant_static, fp8_static_reason, quantize_static,
                                          rowwise_scale_b, unit_rows)

from .. import archs
from .. import device as _device
from .. import fp8 as _fp8

#: Architectures whose FP8 ``_scaled_mm`` PyTorch enables, with the ROCm release it needs.
ARCH_MIN_ROCM = {"gfx942": (6, 0), "gfx950": (6, 5), "gfx1200": (6, 5), "gfx1201": (6, 5)}
ROWWISE_ARCHS = frozenset({"gfx942"})
ROWWISE_MIN_TORCH = (2, 7)


def torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def rocm_version() -> tuple[int, int]:
    hip = _device.hip_version() or "0.0"
    major, minor = hip.split(".")[:2]
    return int(major), int(minor)


#: ``clamp(x / scale, +-448).to(e4m3fn)`` (``fnuz``: ``+-224``, e4m3fnuz) in one Triton launch, bit-exact (shared factory).
fp8_quant_static = define_fp8_quant_static("quantlinear_rocm::fp8_quant_static")
FP8_QUANT_OP = torch.ops.quantlinear_rocm.fp8_quant_static


def act_quant_how() -> str:
    if triton_available():
        return "activations quantized by one fused Triton launch (quantlinear_rocm::fp8_quant_static)"
    return "activations quantized by torch ops (Triton is not installed)"


def choose_plan(per_tensor: bool, arch: str, dtype: torch.dtype) -> str:
    if per_tensor:
        return "tensorwise"
    if arch in ROWWISE_ARCHS and dtype == torch.bfloat16 and torch_version() >= ROWWISE_MIN_TORCH:
        return "rowwise"
    return "fold"


class RocmFP8ScaledMMLinear(FP8ScaledMMBase):
    name = "rocm.fp8_scaled_mm"
    priority = 70
    device_families = frozenset({"rocm"})
    verified = _device.VERIFIED

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        reason = fp8_static_reason(spec)
        if reason:
            return Verdict.no(reason)
        if not hasattr(torch, "_scaled_mm"):
            return Verdict.no(f"torch {torch.__version__} has no torch._scaled_mm")
        try:
            props = _device.device_props(spec.device)
        except Exception as e:
            return Verdict.no(f"cannot use {spec.device}: {e}")
        arch = props.arch
        if arch not in ARCH_MIN_ROCM:
            return Verdict.no(f"{props.name} is {arch}: PyTorch's _scaled_mm runs FP8 only on gfx942 (MI300), gfx950 (MI350) "
                              "and gfx1200/gfx1201 (RDNA4)")
        need = ARCH_MIN_ROCM[arch]
        if rocm_version() < need:
            return Verdict.no(f"{arch} takes OCP float8_e4m3fn, which PyTorch's _scaled_mm enables only in ROCm >= "
                              f"{need[0]}.{need[1]} builds (this is ROCm {_device.hip_version()})")
        K, N = spec.in_features, spec.out_features
        if K % 16 or N % 16:
            return Verdict.no(f"torch._scaled_mm needs in_features and out_features to be multiples of 16; got K={K}, N={N}")
        fmt = archs.SUPPORTED[arch].fp8
        plan = "tensorwise" if spec.scheme.group_size == 0 else choose_plan(False, arch, spec.dtype)
        return Verdict.yes(f"{fmt}, {plan} scaling; {act_quant_how()}")

    def prepare(self, w: FloatWeights) -> None:
        N = self.out_features
        self.arch = _device.device_props(self.spec.device).arch
        self.fnuz = archs.SUPPORTED[self.arch].fp8 == "float8_e4m3fnuz"
        s = w.scales.to(torch.float32).reshape(N)
        per_tensor = self.spec.scheme.group_size == 0 or bool((s == s[0]).all())
        self.plan = choose_plan(per_tensor, self.arch, self.spec.dtype)
        isc = w.input_scale.reshape(1)
        codes = w.codes
        if self.fnuz:  # same bytes, half the value: the weight scale doubles, and so does the activation scale
            codes, s = _fp8.e4m3fn_to_e4m3fnuz(codes, s)
            codes = codes.view(torch.uint8)
            isc = isc * 2
            if not bool(torch.isfinite(isc).all()):
                raise CheckpointError(f"layer {self.spec.name!r}: twice the input_scale overflows {isc.dtype}")
        self.fp8_dtype = torch.float8_e4m3fnuz if self.fnuz else torch.float8_e4m3fn
        self.qmax = 224.0 if self.fnuz else 448.0
        self.act_quant = "triton" if triton_available() else "torch"
        self.register_buffer("w_fp8", codes.contiguous())
        self.register_buffer("w_scale", s[:1].clone() if self.plan == "tensorwise" else s.reshape(1, N).contiguous())
        self.register_buffer("input_scale", isc.clone())
        self.register_buffer("input_scale_f32", isc.to(torch.float32).clone())
        self.register_buffer("unit_scale", torch.ones(1, dtype=torch.float32, device=isc.device) if self.plan == "fold" else None)
        # (row-wise: weight scale x input scale; scale_a is ones)
        self.register_buffer("col_scale", rowwise_scale_b(s, isc) if self.plan == "rowwise" else None)

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_quant == "triton":
            x8 = FP8_QUANT_OP(x, self.input_scale, self.fnuz)
        else:
            x8 = quantize_static(x, self.input_scale, self.qmax, self.fp8_dtype)
        w8t = self.w_fp8.view(self.fp8_dtype).t()
        if self.plan == "tensorwise":
            return torch._scaled_mm(x8, w8t, scale_a=self.input_scale_f32, scale_b=self.w_scale, bias=self.bias, out_dtype=x.dtype)
        if self.plan == "rowwise":
            return torch._scaled_mm(x8, w8t, scale_a=unit_rows(x.shape[0], x.device), scale_b=self.col_scale, bias=self.bias,
                                    out_dtype=x.dtype)
        y = torch._scaled_mm(x8, w8t, scale_a=self.input_scale_f32, scale_b=self.unit_scale, out_dtype=torch.float32) * self.w_scale
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(x.dtype)
