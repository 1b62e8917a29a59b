"""``cuda.fp8_scaled_mm``: FP8_STATIC (E4M3 weights and activations, static input scale) on FP8 tensor cores.

Activations are quantized on the fly exactly as the reference does (``fpquant.fp8_static_quantize_input``:
``clamp(x / input_scale, +-448)`` rounded to ``float8_e4m3fn``, the division in the promoted dtype of ``x`` and
the stored scale, as AutoRound's module does), then ``torch._scaled_mm`` multiplies the two FP8 operands with
fp32 accumulation and applies ``input_scale * weight_scale`` in its epilogue, rounding once to the output dtype.
FP8 x FP8 products are exact in fp32, so the result is the reference ``fp8(x) * s_in @ (fp8(W) * s_w)^T`` up to
fp32 accumulation order and the final rounding.  No float copy of the weight exists: the checkpoint's FP8 bytes are
kept (as uint8, viewed as ``float8_e4m3fn`` per call) and passed transposed, i.e. column-major, as cuBLASLt wants.

How the scales reach ``_scaled_mm`` (``plan``, chosen once per layer at ``prepare``):

* ``tensorwise``: one weight scale (``group_size 0``, or per-channel scales that are all equal): both scales are
  fp32 singletons; the bias is fused.  Works on every FP8 GPU.
* ``rowwise``: per-channel weight scales: ``scale_a`` fp32 ``[M, 1]`` of ones (a view of a shared column,
  :func:`quantlinear_triton.scaled_mm.unit_rows`), ``scale_b`` fp32 ``[1, N]`` the weight scales times the input scale
  (``col_scale``, the product the small-M GEMV uses too); the bias is fused.  The input scale repeated into ``[M, 1]``
  per call (``expand(M, 1).contiguous()``) was a launch of its own: on an H100, 4096 x 4096 at M = 1024 took 36.4 us
  with it and 35.0 without (1.49x -> 1.54x cuBLAS fp16), outputs bit-identical on all six benchmark shapes at M = 1024
  and 4096 (``results/h100-fp8-scale-rows-2026-11-26.*``).  sm90 runs it in cuBLASLt (cuBLAS >= 12.9), sm89 / sm100+ in PyTorch's
  CUTLASS kernel.  Used from torch 2.10 on (fp16 output on the CUTLASS path arrived in 2.10, PR #166744).  With
  fp16 output a bias is always passed (zeros when the layer has none): before PR #187569 the CUTLASS kernel's
  no-bias branch wrote bf16 values whatever the output dtype; a zero bias takes the fp16 branch, adds exactly 0.
* ``fold``: per-channel scales where row-wise is not used (torch < 2.10): a tensor-wise GEMM with a unit weight
  scale and fp32 output, then ``* weight_scale (+ bias)`` and the cast (one fused elementwise op under
  ``torch.compile``).  Same fp32 arithmetic as the row-wise epilogue, one extra ``[M, N]`` fp32 round trip.

Constraints (``aten/src/ATen/native/cuda/ScaledBlas.cpp`` ``_scaled_mm_out_cuda``, ``RowwiseScaledMM.cu``,
``torch/_meta_registrations.py`` ``_check_scaled_mm_sizes``; torch 2.10-2.13): compute capability 8.9 or 9.0+;
``mat1`` row-major, ``mat2`` column-major; ``K`` and ``N`` multiples of 16 (any ``M``); scales fp32; a bias must
be bf16/fp16 matching a bf16/fp16 output, and no bias with an fp32 output.  Activations in fp32 are refused
(fp32 output forbids the fused bias, and the CUTLASS row-wise kernel rejects fp32 output before PR #187569).

Activation quantization (``act_quant``, fixed at ``prepare``):

* ``triton`` (whenever Triton is installed): the custom op ``torch.ops.quantlinear_cuda.fp8_quant_static``
  (:mod:`quantlinear_cuda.fp8_act_ops`, kernel :mod:`quantlinear_triton.fp8_act`): one memory-bound launch (reads
  x once, writes the FP8 codes), bit-exact with the reference for every fp16 / bf16 value (checked exhaustively in
  Triton's interpreter; tests/test_cuda_scaled_mm_gpu.py checks it on the GPU, eager and compiled).  The torch ops took 159 us at M=4096, K=4096 and 532 us at K=14336 on an H100
  (2026-11-25), more than the FP8 GEMM saves; one pass over 3 bytes an element is ~20-60 us there.  Being an opaque
  custom op, ``torch.compile`` keeps its rounding: Inductor fuses plain torch ops and, with its default
  ``emulate_precision_casts=False``, drops the rounding of the quotient to fp16 / bf16, so the compiled torch form
  gave codes that differ from the reference on the GPU.
* ``torch`` (Triton missing): :func:`quantize_static`, the reference's three torch ops (under ``torch.compile`` the
  explicit form below, exact in eager and on the CPU, not guaranteed under Inductor on a GPU: see above).

The verdict (``explain``) says which is used.

Small M (``small_m``, at most :data:`SMALL_M` = 16 rows, 32 where K > N; ``QUANTLINEAR_FP8_SMALL_M`` to change, 0 to
turn off):
cuBLASLt's FP8 GEMM is slow for decode-sized M (H100, 2026-11-25: 52.6 us at M=1 on K x N = 14336 x 4096, slower
than the dense fp16 GEMM's 45.4 us, and 29.6 us on 4096 x 14336 where the weight-read floor is 19.7 us).  Those calls
run ``cuda.triton_fp``'s FP8 GEMV instead (its own bit-exact activation quantization, exact FP8 x FP8 products in
fp32, the weight scale times the input scale as one fp32 row scale, one rounding: the same arithmetic up to the
order of the fp32 sums).  Both paths read one copy of the weight: ``w_fp8`` holds the GEMV's slab words as bytes
(:func:`quantlinear_triton.fp_packing.pack_slabs`; K padded to whole 128-channel tiles), and the GEMM path
quantizes the activation straight into the same channel order (``fp8_quant_static(..., slab=32)``): a GEMM over K
does not depend on the order of K when both operands share it.  Where the Triton kernel cannot run the layer
(no Triton), ``w_fp8`` keeps the checkpoint's order and every M takes ``_scaled_mm``.  (``QUANTLINEAR_FP8_SMALL_M=0``
only routes every M to ``_scaled_mm``; the bytes stay in slab order.)

``torch._scaled_mm`` is an aten op with a meta kernel: ``torch.compile(fullgraph=True)`` and CUDA graphs take the
whole ``compute`` as is.

Fast accumulation (the default; ``QUANTLINEAR_FP8_FAST_ACCUM=0`` turns it off, read once per layer at ``prepare``):
``use_fast_accum=True`` lets Hopper's FP8 tensor cores skip the periodic promotion of the partial sums to full fp32,
as vLLM's sm90 FP8 GEMMs do (every ``sm90_fp8_config_*`` in ``csrc/quantization/cutlass_w8a8/c3x`` uses a
``...FP8FastAccum`` kernel schedule) and torchao's float8 linear does for its output GEMM (``Float8LinearConfig``:
``gemm_config_output = Float8GemmConfig(use_fast_accum=True)``).  Measured on an H100 (torch 2.11, row-wise, fp16 out,
GEMM alone, K x N in 4096 x 14336, 8192 x 28672, 14336 x 4096, M = 1024 / 4096): 1.67-1.89x cuBLAS fp16 ``F.linear``
instead of 1.48-1.76x; through the layer (activation quantization included) 1.52-1.87x instead of 1.37-1.56x.  The
cost is a max relative error against the exact product of the same FP8 operands of 4.6e-3..9.8e-3 (fp16) /
5.6e-3..1.2e-2 (bf16) instead of 3.6e-4..4.9e-4 (fp16) / 2.1e-3..3.3e-3 (bf16, its own rounding): 5-40x smaller than
what quantizing the activations to E4M3 already does to the output (2.3e-2..3.3e-2 against the product with the
unquantized activations, same runs).  Set ``QUANTLINEAR_FP8_FAST_ACCUM=0`` for fp32-exact sums (what the CPU
plugin and the small-M GEMV compute); ``explain`` says which is used.

Test-only: :data:`CPU_STANDS_IN` lets CPU layers stand for CUDA ones (with ``device.device_props`` simulated);
torch's CPU ``_scaled_mm`` or ``tests/fake_scaled_mm.py`` (a fake of the CUDA op's contract) then runs them.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from quantlinear import LayerSpec, QuantLinearError, Verdict, fpquant
from quantlinear.formats import FloatWeights
from quantlinear_triton.fp_layers import layer_problem, run_float
from quantlinear_triton.ops import PlanCache, view_once
from quantlinear_triton.runtime import env_on, triton_available
from quantlinear_triton.scaled_mm import FP8ScaledMMBase, fp8_static_reason, quantize_static, rowwise_scale_b, unit_rows

from .. import fp_ops
from ..fp8_act_ops import FP8_QUANT_OP, how as act_quant_how
from .common import nvidia_device
from .triton_fp import TritonFPLinear, fp8_decode_for

#: Test-only: CPU layers stand in for CUDA layers (selection sees a CUDA device; compute runs on the CPU).
CPU_STANDS_IN: bool = False

MIN_CAPABILITY = (8, 9)
#: First torch whose row-wise ``_scaled_mm`` takes fp16 outputs on every path (CUTLASS: PR #166744).
ROWWISE_MIN_TORCH = (2, 10)
FP8_MAX = 448.0
#: ``use_fast_accum`` for ``_scaled_mm``: on unless this is ``0`` (module docstring).  Read at ``prepare``.
FAST_ACCUM_ENV = "QUANTLINEAR_FP8_FAST_ACCUM"
#: Calls with at most this many rows run the Triton FP8 GEMV instead of ``_scaled_mm`` (module docstring): 16, and 32
#: for layers with more inputs than outputs (measured: 6-16% faster there at M = 32, 2-13% slower on the wide
#: shapes); read at ``prepare`` from ``QUANTLINEAR_FP8_SMALL_M`` (a number overrides both; 0: always ``_scaled_mm``).
SMALL_M = 16
SMALL_M_K_HEAVY = 32
SMALL_M_ENV = "QUANTLINEAR_FP8_SMALL_M"


def fast_accum_on() -> bool:
    """Whether ``_scaled_mm`` runs with fast accumulation (``QUANTLINEAR_FP8_FAST_ACCUM``, default on)."""
    return env_on(FAST_ACCUM_ENV, default="1")


def small_m_limit(in_features: int = 0, out_features: int = 1) -> int:
    """The largest M the small-M path takes for a layer of this shape (``QUANTLINEAR_FP8_SMALL_M``, else
    :data:`SMALL_M`, or :data:`SMALL_M_K_HEAVY` where ``in_features > out_features``)."""
    raw = os.environ.get(SMALL_M_ENV, "").strip()
    try:
        return max(0, int(raw)) if raw else (SMALL_M_K_HEAVY if in_features > out_features else SMALL_M)
    except ValueError:
        raise QuantLinearError(f"{SMALL_M_ENV}={raw!r}: expected a number of rows (0 turns the small-M path off)") from None

VERIFIED = ("torch 2.13's CPU _scaled_mm and tests/fake_scaled_mm.py (a fake of the CUDA op's checks); the fused activation "
            "quantization over every fp16/bf16 value in Triton's interpreter; on an H100 (2026-11-26): the fused "
            "quantization (hardware E4M3 conversion) for every fp16/bf16 value, the small-M GEMV and the slab-ordered "
            "_scaled_mm path in tests/test_cuda_scaled_mm_gpu.py and test_triton_fp8_act.py")


def torch_version() -> tuple[int, int]:
    """``(major, minor)`` of the running torch (read through here so tests can simulate other releases)."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def scaled_mm_reason() -> str | None:
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no torch._scaled_mm / float8_e4m3fn"
    return None


def choose_plan(per_tensor: bool, version: tuple[int, int] | None = None) -> str:
    """``tensorwise`` for one weight scale; per-channel: ``rowwise`` from torch 2.10, else ``fold`` (module docstring)."""
    if per_tensor:
        return "tensorwise"
    return "rowwise" if (version or torch_version()) >= ROWWISE_MIN_TORCH else "fold"


def all_equal(scales: torch.Tensor) -> bool:
    s = scales.reshape(-1)
    return bool((s == s[0]).all())


class FP8ScaledMMLinear(FP8ScaledMMBase):
    name = "cuda.fp8_scaled_mm"
    priority = 70
    device_families = frozenset({"cuda"})
    verified = VERIFIED

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> Verdict:
        if spec.device.type == "cpu" and CPU_STANDS_IN:
            spec = replace(spec, device=torch.device("cuda"))
        if spec.dtype == torch.float32:
            v = super().can_implement(replace(spec, dtype=torch.bfloat16))
            if not v:
                return v
            return Verdict.no("float32 activations: _scaled_mm would need an fp32 output, which takes no fused bias and "
                              "which the CUTLASS row-wise kernel (sm89/sm100+) rejects before torch PR #187569; "
                              "run the model in bf16 or fp16")
        return super().can_implement(spec)

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        props, reason = nvidia_device(spec)
        reason = reason or scaled_mm_reason() or fp8_static_reason(spec)
        if reason:
            return Verdict.no(reason)
        if props.capability < MIN_CAPABILITY:
            return Verdict.no(f"torch._scaled_mm needs FP8 tensor cores, compute capability 8.9 (Ada) or 9.0+; "
                              f"{props.name} is {props.arch}")
        K, N = spec.in_features, spec.out_features
        if K % 16 or N % 16:
            return Verdict.no(f"torch._scaled_mm needs in_features and out_features to be multiples of 16 "
                              f"(cuBLASLt FP8 operand alignment); got K={K}, N={N}")
        act = act_quant_how() + ("; fast accumulation (QUANTLINEAR_FP8_FAST_ACCUM=0: fp32-exact sums)" if fast_accum_on()
                                 else "; fp32-exact accumulation (QUANTLINEAR_FP8_FAST_ACCUM=0)")
        lim = small_m_limit(spec.in_features, spec.out_features)
        if lim and triton_available() and TritonFPLinear.can_implement(spec):
            act += f"; M <= {lim}: cuda.triton_fp's FP8 GEMV on the same weight bytes"
        if spec.scheme.group_size == 0:
            return Verdict.yes(f"tensor-wise scaled FP8 GEMM; {act}")
        plan = choose_plan(False)
        how = "cuBLASLt" if props.capability[0] == 9 else "PyTorch's CUTLASS kernel"
        return Verdict.yes(f"row-wise scaled FP8 GEMM ({how}); {act}" if plan == "rowwise" else
                           f"tensor-wise FP8 GEMM with the per-channel scale in an fp32 epilogue (torch {torch.__version__} "
                           f"< {ROWWISE_MIN_TORCH[0]}.{ROWWISE_MIN_TORCH[1]}); {act}")

    def prepare(self, w: FloatWeights) -> None:
        N = self.out_features
        per_tensor = self.spec.scheme.group_size == 0 or all_equal(w.scales)
        self.plan = choose_plan(per_tensor)
        self.act_quant = "triton" if triton_available() else "torch"
        self.fast_accum = fast_accum_on()
        self.small_m, self.slab = 0, 0
        if self.act_quant == "triton" and TritonFPLinear.can_implement(self.spec):
            # w_fp8: the GEMV's slab words as bytes (one copy for both paths).  The layout depends on what is installed
            # and on the device, never on QUANTLINEAR_FP8_SMALL_M, so a prepared state dict means the same either way
            self._prepare_gemv(w)
        else:
            self.register_buffer("w_fp8", w.codes.contiguous())  # uint8 [N, K]; a float8 view per call
        ws = w.scales.to(torch.float32).reshape(N)
        self.register_buffer("w_scale", ws[:1].clone() if self.plan == "tensorwise" else ws.reshape(1, N).contiguous())
        isc = w.input_scale.reshape(1)
        # row-wise: the input scale folded into the column scales (scale_a is then ones: no per-call [M, 1] copy)
        self.register_buffer("col_scale", rowwise_scale_b(ws, isc) if self.plan == "rowwise" else None)
        self.register_buffer("input_scale", isc.clone())  # stored dtype: the quantization divides by it as AutoRound does
        self.register_buffer("input_scale_f32", isc.to(torch.float32).clone())
        self.register_buffer("unit_scale", torch.ones(1, dtype=torch.float32, device=isc.device) if self.plan == "fold" else None)
        need_zero = self.plan == "rowwise" and self.bias is None and self.spec.dtype == torch.float16
        self.register_buffer("zero_bias", torch.zeros(N, dtype=torch.float16, device=isc.device) if need_zero else None)

    def _prepare_gemv(self, w: FloatWeights) -> None:
        """Set up the small-M path: ``cuda.triton_fp``'s FP8 GEMV (activation quantization included) on the same bytes."""
        from quantlinear_triton.fp_packing import prepare_float

        meta, t = prepare_float(w, fpquant.act_quant_kind(self.spec.scheme), fp8_elem=fp8_decode_for(self.spec))
        self.meta, self.slab, self.small_m = meta, meta.slab, small_m_limit(self.in_features, self.out_features)
        self.register_buffer("w_fp8", t["qweight"].view(torch.uint8))  # [N, K padded to 128]: channels in slab order
        self.register_buffer("gemv_row_scales", t["row_scales"])  # weight scale x input scale, fp32 [N]
        self.problem = layer_problem(meta, self.spec.dtype, self.w_fp8.device)
        self._plans = PlanCache()  # the GEMV path's eager launch plans by M
        self._w32 = None  # (w_fp8, its int32 view), made on the first GEMV call

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.small_m:
            b = self._buffers
            w = b["w_fp8"]
            if torch.compiler.is_compiling():
                w32 = w.view(torch.int32)
            else:  # one int32 view per weight storage: the launch plans know it by identity
                self._w32 = view_once(self._w32, w, torch.int32)
                w32 = self._w32[1]
            return run_float(fp_ops, x, self.meta, self.problem, w32, None, b["gemv_row_scales"], b.get("bias"),
                             b["input_scale"], None, self._plans)
        if self.act_quant == "triton":
            x8 = FP8_QUANT_OP(x, self.input_scale, False, self.slab)
        else:
            x8 = quantize_static(x, self.input_scale)
        w8t = self.w_fp8.view(torch.float8_e4m3fn).t()
        plan, fast = self.plan, self.fast_accum
        if plan == "tensorwise":
            return torch._scaled_mm(x8, w8t, scale_a=self.input_scale_f32, scale_b=self.w_scale, bias=self.bias, out_dtype=x.dtype,
                                    use_fast_accum=fast)
        if plan == "rowwise":
            bias = self.bias if self.bias is not None else self.zero_bias
            return torch._scaled_mm(x8, w8t, scale_a=unit_rows(x.shape[0], x.device), scale_b=self.col_scale, bias=bias,
                                    out_dtype=x.dtype, use_fast_accum=fast)
        y = torch._scaled_mm(x8, w8t, scale_a=self.input_scale_f32, scale_b=self.unit_scale, out_dtype=torch.float32,
                             use_fast_accum=fast) * self.w_scale
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(x.dtype)
