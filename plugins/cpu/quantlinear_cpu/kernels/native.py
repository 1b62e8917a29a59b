"""Weight-only GEMM computed in fp32 for any 2-8 bit int scheme, in a small C kernel of our own.

Why it exists: PyTorch's packed CPU ops (``_weight_int4pack_mm_for_cpu``,
``_weight_int8pack_mm``) are vectorized for bf16 activations only; with fp32 activations
they run a scalar loop (3 ms for a 2048x2048 layer at M=1, slower than dense fp32), and
computing fp32 through the bf16 op rounds the output to bf16 (~3e-3 relative error).  This
kernel keeps fp32 activations, fp32 accumulation and fp32 output (error ~1e-6 relative to the
fp32 dequantized reference) while reading only the packed codes: 0.5 byte per weight for
2-4 bits, 1 byte for 5-8 bits, against 4 for dense fp32.

It computes ``y = sum_g s[n,g] * (x_g . q[n,g]) - (z*s)[n,g] * sum(x_g)``, blocked over 16
output channels so one AVX-512 register holds 16 outputs (no horizontal sums), two k per
16-byte load (4-bit codes of k and k+1 share a byte, so decoding needs no shuffle), two
accumulators per row, and up to 8 activation rows sharing each decoded weight vector.  Any
even group size works, including a partial last group.

bf16/fp16 activations are widened to fp32 (exact) and the fp32 result is rounded once at
the end, so they are more accurate than the bf16 torch ops (which round scales and
activations too) and, measured on a 2-core AVX-512 CPU, as fast at M=1 (W4) and 2-3x faster
for 8-bit and for M >= 16; the torch-op kernels (``cpu.int4pack``, ``cpu.int4x2``,
``cpu.int8pack``) remain the picks where this kernel cannot be built.

See ``csrc/woq_gemm_f32.c`` and ``_native_build`` (built on first use with the system C
compiler; unavailable, with the reason, when that fails).
"""

from __future__ import annotations

import ctypes

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict

from . import _native_build

LANES = 16


_fn = None


def _gemm():
    """The C entry point, or a string saying why it is unavailable (built once per process)."""
    global _fn
    if _fn is None:
        lib = _native_build.load("woq_gemm_f32")
        if isinstance(lib, str):
            return lib
        fn = lib.woq_gemm_f32
        P, I64, I = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        fn.argtypes = [P, I64, I64, P, P, P, P, I64, I, I, I, P]
        fn.restype = I
        _fn = fn
    return _fn


class NativeF32Linear(QuantLinear):
    name = "cpu.native_f32"
    priority = 40
    device_families = frozenset({"cpu"})
    bits = frozenset({2, 3, 4, 5, 6, 7, 8})
    #: computed in fp32 whatever the activation dtype (see module docstring)
    dtypes = frozenset({torch.float32, torch.bfloat16, torch.float16})
    out_features_multiple = LANES
    #: codes are decoded in pairs of k
    in_features_multiple = 2

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        if spec.group_size % 2:
            return Verdict.no(f"group_size={spec.group_size} is odd (codes are decoded in pairs of input channels)")
        fn = _gemm()
        return Verdict.no(fn) if isinstance(fn, str) else Verdict.yes()

    def prepare(self, w: IntWeights) -> None:
        N, K = self.out_features, self.in_features
        nb = N // LANES
        self.nibble = self.spec.scheme.bits <= 4
        q = w.qweight.view(nb, LANES, K).transpose(1, 2)  # [NB, K, 16]
        if self.nibble:  # [NB, K/2, 16]: byte = code of k even | code of k odd << 4
            codes = q[:, 0::2] | (q[:, 1::2] << 4)
        else:
            codes = q
        s = w.scales.to(torch.float32)
        zs = w.zeros.to(torch.float32) * s
        G = s.shape[1]
        self.num_groups = G
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("block_scales", s.view(nb, LANES, G).transpose(1, 2).contiguous())
        self.register_buffer("block_zs", zs.view(nb, LANES, G).transpose(1, 2).contiguous())

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        args = (x.float(), self.codes, self.block_scales, self.block_zs, self.out_features, self.spec.group_size, self.nibble)
        if torch.compiler.is_compiling():
            y = torch.ops.quantlinear_cpu.woq_gemm_f32(*args)
        else:
            y = _woq_gemm_f32(*args)  # eager: skip the custom-op dispatcher (~10 us a call)
        return y.to(x.dtype)  # fp32 accumulation, one rounding at the end


def _woq_gemm_f32(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, zs: torch.Tensor, n: int, group_size: int, nibble: bool) -> torch.Tensor:
    M, K = x.shape
    y = torch.empty(M, n, dtype=torch.float32)
    if M == 0:
        return y
    xsum = torch.empty(M, scales.shape[1], dtype=torch.float32)
    rc = _gemm()(x.data_ptr(), M, K, codes.data_ptr(), scales.data_ptr(), zs.data_ptr(), y.data_ptr(), n, group_size, int(nibble), torch.get_num_threads(), xsum.data_ptr())
    if rc:
        raise RuntimeError(f"cpu.native_f32: native kernel returned {rc}")
    return y


@torch.library.custom_op("quantlinear_cpu::woq_gemm_f32", mutates_args=())
def _woq_gemm_f32_op(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, zs: torch.Tensor, n: int, group_size: int, nibble: bool) -> torch.Tensor:
    """The same kernel as an opaque op, so torch.compile(fullgraph=True) can trace layers using it."""
    return _woq_gemm_f32(x.contiguous(), codes, scales, zs, n, group_size, nibble)


@_woq_gemm_f32_op.register_fake
def _(x, codes, scales, zs, n, group_size, nibble):
    return x.new_empty(x.shape[0], n, dtype=torch.float32)
