"""Static FP8 activation quantization in one Triton launch, bit-exact with the reference.

:func:`quantize_static` returns the ``float8_e4m3fn`` codes of ``clamp(x / scale, +-448)``, byte for byte what
``quantlinear.fpquant.fp8_static_quantize_input`` (``torch.clamp(x / s, -448, 448).to(torch.float8_e4m3fn)``)
gives in eager torch, for ``x`` of any float dtype (fp16 / bf16 / fp32, 2-D, any row stride) and a one-element
``scale`` (fp16 / bf16 / fp32):

1. the quotient: eager torch divides in fp32 (``opmath``) and rounds once to the result dtype
   (``torch.result_type(x, scale)``: bf16 / fp16 divided by a bf16 / fp16 scale of the same dtype stays in it,
   fp16 by bf16 or anything by fp32 is fp32).  The kernel divides in IEEE fp32 (``div_rn``; Triton's ``/`` is the
   approximate ``div.full.f32``), then rounds to fp16 with the hardware's round-to-nearest-even cast, or to bf16
   with an integer round-to-nearest-even on the fp32 bits (the interpreter has no bf16 arithmetic);
2. the clamp to +-448 (exact: done on the magnitude's bits, an integer ``min``; inf becomes 448);
3. the E4M3 rounding, to nearest, ties to even, subnormals included, done on the bits: normal values round the fp32
   mantissa to 3 bits (``bits + 0x7FFFF + lsb``, the carry walks into the exponent), values below 2^-6 become
   ``rne(|q| * 2^9)`` (0..8; 8 is the smallest normal's code).  The sign of zero is kept.  NaN stays NaN
   (``0x7F`` with the quotient's sign bit).  The sign of a NaN is the one thing not reproduced: torch itself does not
   fix it (a NaN rounded to bf16 on the CPU is ``0x7FC0`` in the scalar loop, ``0xFFFF`` in the vectorized one; CUDA's
   division returns the canonical positive NaN), so tests compare NaN codes as "a NaN".  This bit path runs
   everywhere (interpreter, AMD, NVIDIA before sm_89) and gives the same bytes on each.

On NVIDIA sm_89+ (:func:`native_ok`) steps 2-3 are the hardware's ``cvt.rn.satfinite.e4m3x2.f32`` (nearest even;
``satfinite`` saturates to +-448 exactly as the clamp does, inf included; NaN becomes ``0x7F``) and the bf16 rounding
is ``cvt.rn.bf16.f32``: the same codes for every fp16 / bf16 value (GPU tests), in fewer instructions.  Measured on an
H100 (2026-11-25, ``plugins/cuda/benchmarks/fp8_quant_bench.py``): 63.0 us instead of 76.2 us at M=4096, K=14336
fp16 (1.07x the 3-bytes-an-element floor instead of 1.29x); the bit path was bound by its integer instructions.

``slab`` > 0 writes the codes in the byte order of the float kernels' slab words (:func:`to_slab_order`): the CUDA
FP8 layer keeps one weight copy, in that order, for its Triton GEMV and for ``_scaled_mm``.

``fnuz=True`` gives ``float8_e4m3fnuz`` codes of ``clamp(x / scale, +-224)`` as ``.to(torch.float8_e4m3fnuz)``
does (the ROCm plugin's gfx942 encoding: called with the doubled scale ``2 s``, each byte equals the reference's
e4m3fn byte): the fnuz grid is the fn grid halved, so the code of ``a`` is the fn code of ``2 a``; a zero is
always ``0x00`` (fnuz has no -0) and NaN is ``0x80``.

Checked over every fp16 and bf16 bit pattern and several scales in ``tests/test_triton_fp8_act.py`` (interpreter)
and the CUDA plugin's GPU tests.  One launch; inputs are read once (2 bytes) and codes written once (1 byte):
memory-bound.  Where Triton cannot run on ``x``'s device (no Triton, or CPU tensors without the interpreter)
:func:`quantize_static` runs the reference's three torch ops instead.
"""

from __future__ import annotations

import functools

import torch

from .runtime import interpreting, triton_available

try:  # the kernel needs Triton; the torch path below does not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without Triton
    triton = None
    tl = None

FP8_MAX = 448.0
FNUZ_MAX = 224.0
#: ``cvt.rn.satfinite.e4m3x2.f32`` (PTX ISA 7.8) needs sm_89
NATIVE_MIN_CAPABILITY = (8, 9)
#: dtype codes of the kernel's constexprs: 0 fp32, 1 fp16, 2 bf16
_KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def reference(x: torch.Tensor, scale: torch.Tensor, fnuz: bool = False) -> torch.Tensor:
    """The pure-torch form (eager): ``clamp(x / scale, +-qmax).to(fp8)``."""
    qmax, dt = (FNUZ_MAX, torch.float8_e4m3fnuz) if fnuz else (FP8_MAX, torch.float8_e4m3fn)
    return torch.clamp(x / scale, -qmax, qmax).to(dt)


def usable(x: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether the Triton kernel runs for these operands (else :func:`quantize_static` uses :func:`reference`)."""
    if triton is None or not triton_available():
        return False
    if x.dim() != 2 or scale.numel() != 1 or x.dtype not in _KIND or scale.dtype not in _KIND:
        return False
    if torch.result_type(x, scale) not in _KIND:
        return False
    return x.is_cuda or (interpreting() and x.device.type == "cpu")


if triton is not None:

    @triton.jit
    def _fp8_static_quant_kernel(x_ptr, s_ptr, y_ptr, M, K, stride_xm, stride_xk, stride_ym, KO,
                                 X_KIND: tl.constexpr, S_KIND: tl.constexpr, PROMO: tl.constexpr, FNUZ: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, NATIVE: tl.constexpr = False,
                                 SLAB: tl.constexpr = 0):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)  # over KO (K, or K padded to whole tiles)
        mask = (rows[:, None] < M) & (cols[None, :] < K)  # padding channels load 0: code 0
        offs = rows[:, None].to(tl.int64) * stride_xm + cols[None, :] * stride_xk
        if X_KIND == 2:  # bf16 passed as its int16 bits: exact widening, no bf16 load (the interpreter's is wrong)
            x = (tl.load(x_ptr + offs, mask=mask, other=0).to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        srow = tl.zeros([BLOCK_M], dtype=tl.int32)
        if S_KIND == 2:
            s = (tl.load(s_ptr + srow).to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            s = tl.load(s_ptr + srow).to(tl.float32)
        q = tl.math.div_rn(x, tl.broadcast_to(s[:, None], (BLOCK_M, BLOCK_K)))  # IEEE fp32 quotient, as eager's opmath
        if PROMO == 1:  # round once to fp16 (cvt.rn / numpy: nearest even, overflow to inf)
            q = q.to(tl.float16).to(tl.float32)
        elif PROMO == 2 and NATIVE:  # round once to bf16: the hardware's cvt.rn.bf16.f32
            q = q.to(tl.bfloat16).to(tl.float32)
        elif PROMO == 2:  # round once to bf16: nearest even on the bits (overflow carries to inf); NaN -> +NaN
            b = tl.where(q != q, 0x7FC00000, q.to(tl.int32, bitcast=True))
            q = ((b + 0x7FFF + ((b >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
        if NATIVE:  # sm_89+: the hardware's E4M3 conversion (nearest even; satfinite = the clamp; NaN -> 0x7F)
            code = _e4m3_native(q)
        else:
            code = _e4m3_bits(q, FNUZ)
        if SLAB:  # byte 4p + j of tile t takes channel t*4*SLAB + j*SLAB + p: [.., 4 (j), SLAB (p)] -> [.., p, j] in
            # registers (Triton converts the layout through shared memory), then contiguous stores.  Gathering the
            # channels on the load side instead (2-byte loads) took 2.1x as long on an H100 (fp8_quant_bench.py)
            code = tl.reshape(tl.permute(tl.reshape(code, (BLOCK_M, BLOCK_K // (4 * SLAB), 4, SLAB)), (0, 1, 3, 2)),
                              (BLOCK_M, BLOCK_K))
        yoffs = rows[:, None].to(tl.int64) * stride_ym + cols[None, :]
        tl.store(y_ptr + yoffs, code, mask=(rows[:, None] < M) & (cols[None, :] < KO))

    @triton.jit
    def _e4m3_native(q):
        """``cvt.rn.satfinite.e4m3x2.f32`` on pairs, four codes a register: byte ``i`` is element ``i`` of the pack."""
        return tl.inline_asm_elementwise(
            "{ .reg .b16 lo, hi;\n"
            "cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1;\n"
            "cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3;\n"
            "mov.b32 $0, {lo, hi}; }",
            "=r,r,r,r,r", [q], dtype=tl.uint8, is_pure=True, pack=4)

    @triton.jit
    def _e4m3_bits(q, FNUZ: tl.constexpr):
        """The E4M3 (or fnuz) code of ``q`` (fp32) computed on its bits (module docstring, steps 2-3): any backend."""
        bits = q.to(tl.int32, bitcast=True)
        neg = bits < 0
        a = bits & 0x7FFFFFFF
        nan = a > 0x7F800000
        if FNUZ:
            a = tl.minimum(a, 0x43600000)  # clamp |q| to 224 (inf included)
            a = (a.to(tl.float32, bitcast=True) * 2.0).to(tl.int32, bitcast=True)  # fnuz code of |q| == fn code of 2|q|
        else:
            a = tl.minimum(a, 0x43E00000)  # clamp |q| to 448 (inf included)
        af = a.to(tl.float32, bitcast=True)
        sub = (af * 512.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000  # below 2^-6: rne(|q| / 2^-9), 0..8
        nrm = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - 960  # 3 mantissa bits, nearest even; exponent bias 127 -> 7
        code = tl.where(a < 0x3C800000, sub, nrm)
        if FNUZ:
            code = tl.where(nan, 0x80, tl.where(neg & (code != 0), code | 0x80, code))
        else:
            code = tl.where(nan, 0x7F, code) | tl.where(neg, 0x80, 0)
        return code.to(tl.uint8)


def _config(M: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps): up to 8192 elements a program, at most 1024 along a row."""
    bk = min(1024, triton.next_power_of_2(max(K, 16)))
    bm = max(1, min(8192 // bk, triton.next_power_of_2(max(M, 1))))
    return bm, bk, (8 if bm * bk >= 8192 else 4)


@functools.lru_cache(maxsize=16)
def _native_on(device_index: int) -> bool:
    major, minor = torch.cuda.get_device_capability(device_index)
    return (major, minor) >= NATIVE_MIN_CAPABILITY


def native_ok(x: torch.Tensor, fnuz: bool = False) -> bool:
    """The hardware E4M3 conversion applies: a compiled (not interpreted) NVIDIA kernel on sm_89+, e4m3fn codes."""
    return (not fnuz and x.is_cuda and torch.version.hip is None and not interpreting()
            and _native_on(x.get_device()))


def slab_width(K: int, slab: int) -> int:
    """Columns of the codes in slab order: ``K`` padded to whole tiles of ``4 * slab`` channels (``slab`` 0: ``K``)."""
    return K if not slab else -(-K // (4 * slab)) * (4 * slab)


def to_slab_order(codes: torch.Tensor, slab: int) -> torch.Tensor:
    """Natural-order codes ``[M, K]`` -> ``[M, slab_width(K, slab)]`` in the byte order of slab words (zero padded).

    The byte view of :func:`quantlinear_triton.fp_packing.pack_slabs`'s int32 words of FP8 codes: channel
    ``k = t*4*slab + j*slab + p`` sits at byte ``4p + j`` of tile ``t``.  A GEMM over K is unchanged when both operands
    are reordered alike, so ``_scaled_mm`` can multiply activations in this order with the weight's slab words viewed as
    bytes (one weight copy for the GEMV and the GEMM).
    """
    if not slab:
        return codes
    M, K = codes.shape
    KO = slab_width(K, slab)
    u = torch.zeros((M, KO), dtype=torch.uint8, device=codes.device)
    u[:, :K] = codes.view(torch.uint8)
    return u.view(M, KO // (4 * slab), 4, slab).transpose(2, 3).reshape(M, KO).view(codes.dtype)


def quantize_static(x: torch.Tensor, scale: torch.Tensor, fnuz: bool = False, native: bool | None = None,
                    config: tuple[int, int, int] | None = None, slab: int = 0) -> torch.Tensor:
    """``clamp(x / scale, +-448).to(float8_e4m3fn)`` (``fnuz``: ``+-224``, ``float8_e4m3fnuz``), bit-exact, contiguous.

    One Triton launch where :func:`usable`; otherwise the reference's torch ops.  ``slab`` > 0 writes the codes in the
    byte order of slab words (:func:`to_slab_order`, ``[M, slab_width(K, slab)]``).  ``native`` (default: where
    :func:`native_ok`) converts with the hardware's instructions instead of on the bits; ``config`` overrides
    ``(BLOCK_M, BLOCK_K, num_warps)`` (benchmarks).
    """
    if not usable(x, scale):
        return to_slab_order(reference(x, scale, fnuz).contiguous(), slab)
    M, K = x.shape
    KO = slab_width(K, slab)
    y = torch.empty((M, KO), dtype=torch.float8_e4m3fnuz if fnuz else torch.float8_e4m3fn, device=x.device)
    if M == 0 or K == 0:
        return y.zero_()
    xk, sk = _KIND[x.dtype], _KIND[scale.dtype]
    promo = _KIND[torch.result_type(x, scale)]
    xa = x.view(torch.int16) if xk == 2 else x
    sa = scale.reshape(1)
    sa = sa.view(torch.int16) if sk == 2 else sa
    yb = y.view(torch.uint8)
    bm, bk, warps = config or _config(M, KO)
    if slab and bk % (4 * slab):
        raise ValueError(f"fp8_act: BLOCK_K={bk} must hold whole tiles of {4 * slab} channels for slab order")
    nat = native_ok(x, fnuz) if native is None else bool(native)
    grid = (-(-M // bm), -(-KO // bk))
    consts = {"X_KIND": xk, "S_KIND": sk, "PROMO": promo, "FNUZ": bool(fnuz), "BLOCK_M": bm, "BLOCK_K": bk, "NATIVE": nat,
              "SLAB": int(slab)}
    options = {"num_warps": warps}
    ints = (M, K, x.stride(0), x.stride(1), KO, KO)
    try:  # the shared low-overhead launcher (eager decode calls are host-bound); same kernel, same stream
        from .launch import launch

        launch(_fp8_static_quant_kernel, grid, (xa, sa, yb), ints, (), consts,
               ("fp8_static_quant", xk, sk, promo, bool(fnuz), bm, bk, warps, nat, int(slab)), options, out=yb)
    except (ImportError, TypeError):  # a launcher with another interface: the plain launch
        _fp8_static_quant_kernel[grid](xa, sa, yb, *ints, **consts, **options)
    return y


__all__ = ["FNUZ_MAX", "FP8_MAX", "native_ok", "quantize_static", "reference", "slab_width", "to_slab_order", "usable"]
