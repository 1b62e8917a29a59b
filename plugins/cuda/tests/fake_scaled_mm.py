"""A faithful fake of PyTorch's CUDA ``torch._scaled_mm`` (v1) and ``_scaled_mm_v2`` (NVFP4 two-level), on CPU tensors.

Models PyTorch's CUDA build, not this plugin.  Sources (torch 2.10-2.13 era, read at pytorch/pytorch main):
``aten/src/ATen/native/cuda/ScaledBlas.cpp`` (``_scaled_mm_out_cuda``: the arch gate, ``get_joint_scaling`` with
``is_tensorwise_scaling`` / ``is_rowwise_scaling`` (applied to ``b.t()`` and ``scale_b.t()``) /
``is_blockwise_1x32_scaling`` / ``is_blockwise_1x16_scaling`` (untransposed, numel ``round_up(rows, 128) *
round_up(ceil(K / block), 4)``), the multiple-of-16 checks, dtype and bias rules, the sm90 row-major x column-major
rule, the row-wise dispatch cuBLAS (sm90, cuBLAS >= 12.9) vs CUTLASS (sm89, sm100+, older cuBLAS);
``_scaled_nvfp4_nvfp4``: swizzle, sizes, ``alpha = global_a * global_b``), ``RowwiseScaledMM.cu``
(``check_inputs``, the sm89 kernel, the no-bias output dtype), ``ScaledBlasDeviceUtils.cpp``
(``scaled_mm_arch_allowed``), ``torch/_meta_registrations.py`` (the compile-time checks) and the cuBLAS
documentation's 1D block scaling factors layout (the swizzle, decoded here element by element with its index
formula, independently of the plugin's reshape).

Version facts modelled by :class:`FakeCuda` fields: CUTLASS row-wise on sm89 from torch 2.7 (PR #144348); fp16
output on the CUTLASS row-wise path from 2.10 (PR #166744) whose no-bias branch kept writing bf16 until PR
#187569 (``cutlass_fp16_nobias_fixed``; the real op would return garbage, the fake raises
:class:`FakeContractError`); fp32 output there only after #187569; packed FP4 with E8M0 scales in v1 on CUDA only
in recent main (``mxfp4_v1``); ``_scaled_mm_v2`` from 2.10.  Block-scaled GEMMs need sm100 (cuBLAS).

Results are computed in float64 from the decoded operands and scales, then rounded to the output dtype.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float64)
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)
FP4 = torch.float4_e2m1fn_x2
TW, RW, B1x16, B1x32 = "tensorwise", "rowwise", "blockwise1x16", "blockwise1x32"


class FakeContractError(RuntimeError):
    """The real op would not raise here but would compute something wrong."""


class FakeNotModeled(NotImplementedError):
    """A configuration this fake does not model (so a test cannot pass by accident)."""


@dataclass
class FakeCuda:
    name: str = "NVIDIA H100 80GB HBM3"
    capability: tuple[int, int] = (9, 0)
    torch: tuple[int, int] = (2, 11)
    cublas: tuple[int, int] = (13, 0)
    cutlass_fp16_nobias_fixed: bool = False
    mxfp4_v1: bool = False
    calls: list[dict] = field(default_factory=list)


_ACTIVE: FakeCuda | None = None


def _check(cond: bool, msg: str, exc=RuntimeError) -> None:
    if not cond:
        raise exc(msg)


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def blocked_offset(r: torch.Tensor, c: torch.Tensor, n_col_tiles: int) -> torch.Tensor:
    """cuBLAS "1D block scaling factors layout": byte offset of scale (row r, block column c)."""
    tile = (r // 128) * n_col_tiles + c // 4
    outer, inner = r % 128, c % 4
    return tile * 512 + (outer % 32) * 16 + (outer // 32) * 4 + inner


def unswizzle(flat: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Swizzled scales -> ``[rows, cols]`` (read with :func:`blocked_offset`)."""
    r = torch.arange(rows).unsqueeze(1).expand(rows, cols)
    c = torch.arange(cols).unsqueeze(0).expand(rows, cols)
    return flat.reshape(-1)[blocked_offset(r, c, _round_up(cols, 4) // 4)]


def _decode(t: torch.Tensor) -> torch.Tensor:
    """A row-major ``[R, C]`` operand (fp4: ``[R, C/2]`` packed, low nibble first) in float64."""
    if t.dtype == FP4:
        b = t.contiguous().view(torch.uint8).to(torch.int64)
        return torch.stack((E2M1[b & 15], E2M1[b >> 4]), -1).reshape(t.shape[0], -1)
    return t.to(torch.float64)


def _block_scales(scale: torch.Tensor, rows: int, k: int, block: int) -> torch.Tensor:
    s = unswizzle(scale.contiguous().view(torch.uint8), rows, k // block)
    if scale.dtype == torch.float8_e8m0fnu:
        v = torch.pow(2.0, s.to(torch.float64) - 127.0)
        v[s == 255] = float("nan")
    else:
        v = s.view(torch.float8_e4m3fn).to(torch.float64)
    return v.repeat_interleave(block, dim=1)


def _kind(t: torch.Tensor, scale: torch.Tensor, cfg: FakeCuda, transposed_scale: torch.Tensor) -> set[str]:
    """The scaling types (t, scale) qualifies for, as ScaledBlas.cpp's is_*_scaling predicates."""
    kinds = set()
    rows, cols = t.shape
    f8 = t.dtype in FP8
    if f8 and transposed_scale.dtype == torch.float32 and transposed_scale.numel() == 1:
        kinds.add(TW)
    ts = transposed_scale
    if f8 and ts.dtype == torch.float32 and ts.dim() == 2 and ts.shape == (rows, 1) and ts.is_contiguous():
        kinds.add(RW)
    if t.dtype == FP4 and scale.dtype == torch.float8_e4m3fn and scale.is_contiguous() \
            and scale.numel() == _round_up(rows, 128) * _round_up(-(-(cols * 2) // 16), 4):
        kinds.add(B1x16)
    e8 = scale.dtype == torch.float8_e8m0fnu and scale.is_contiguous()
    if e8 and f8 and scale.numel() == _round_up(rows, 128) * _round_up(-(-cols // 32), 4):
        kinds.add(B1x32)
    if e8 and t.dtype == FP4 and cfg.mxfp4_v1 and scale.numel() == _round_up(rows, 128) * _round_up(-(-(cols * 2) // 32), 4):
        kinds.add(B1x32)
    return kinds


def _joint(a, b, scale_a, scale_b, cfg) -> str:
    ka = _kind(a, scale_a, cfg, scale_a)
    bt = b.t()
    kb_plain = _kind(bt, scale_b, cfg, scale_b.t() if scale_b.dim() == 2 else scale_b)
    for k in (TW, RW, B1x32, B1x16):
        if k in ka and k in kb_plain:
            return k
    if scale_a.dtype == torch.float32 and scale_b.dtype == torch.float32 and scale_a.dim() == 2 and scale_b.dim() == 2:
        def blocks(t, sc):  # is_blockwise_1x128_scaling / is_blockwise_128x128_scaling, shapes only
            r, c = t.shape
            return {k for k, shape in (("1x128", (r, -(-c // 128))), ("128x128", (-(-r // 128), -(-c // 128)))) if tuple(sc.shape) == shape}
        if any(p in blocks(a, scale_a) and q in blocks(bt, scale_b.t()) for p, q in (("128x128", "1x128"), ("1x128", "128x128"), ("1x128", "1x128"))):
            raise FakeNotModeled("DeepSeek-style 1x128 / 128x128 block scaling is not modelled")
    raise RuntimeError(
        "Invalid scaling configuration.\n- For TensorWise scaling, a and b should be float8, scales should be float and singletons.\n"
        f"- For RowWise scaling, a and b should be float8, scales should be float, scale_a should be ({a.shape[0]}, 1) and scale_b "
        f"should be (1, {b.shape[1]}), and both should be contiguous.\nGot a.dtype()={a.dtype}, scale_a.dtype()={scale_a.dtype}, "
        f"scale_a.size()={list(scale_a.shape)}, b.dtype()={b.dtype}, scale_b.dtype()={scale_b.dtype}, scale_b.size()={list(scale_b.shape)}")


def _common_checks(a, b, bias, out_dtype, use_fast_accum, cfg):
    M, Kp, N = a.shape[0], a.shape[1], b.shape[1]
    _check(bias is None or bias.numel() == N, f"Bias must be size {N} but got {None if bias is None else bias.numel()}")
    _check(Kp % 16 == 0, f"Expected trailing dimension of mat1 to be divisible by 16 but got mat1 shape: ({M}x{Kp}).")
    _check(b.shape[0] % 16 == 0 and N % 16 == 0, f"mat2 shape ({b.shape[0]}x{N}) must be divisible by 16")
    _check(a.dtype in FP8 or a.dtype == FP4, f"Expected mat1 to be Float8 or Float4_x2 matrix got {a.dtype}")
    _check(b.dtype in FP8 or b.dtype == FP4, f"Expected mat2 to be Float8 or Float4_x2 matrix got {b.dtype}")
    _check(a.dtype not in (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz) and b.dtype not in (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz),
           "CUDA error: CUBLAS_STATUS_NOT_SUPPORTED (fnuz FP8 formats exist only on AMD MI300)")
    _check(not (a.dtype == torch.float8_e5m2 and b.dtype == torch.float8_e5m2), "Multiplication of two Float8_e5m2 matrices is not supported", ValueError)
    if use_fast_accum:
        _check(a.dtype != FP4 and b.dtype != FP4, "`use_fast_accum` is not supported when `mat1` or `mat2` tensors have the `Float4_e2m1fn_x2` dtype.")
    if bias is not None:
        _check(out_dtype != torch.float32, "Bias is not supported when out_dtype is set to Float32")
        _check(bias.dtype in (torch.bfloat16, torch.float16), f"Bias must be BFloat16 or Half, but got {bias.dtype}")
        _check(out_dtype != torch.bfloat16 or bias.dtype == torch.bfloat16, f"Bias must be BFloat16 to compute {out_dtype} output, but got {bias.dtype}")
        _check(out_dtype != torch.float16 or bias.dtype == torch.float16, f"Bias must be Float16 to compute {out_dtype} output, but got {bias.dtype}")
    # cuBLASLt FP8 (and the meta kernel used under torch.compile): mat1 row-major, mat2 column-major
    _check(a.stride(1) == 1 and a.stride(0) >= max(1, a.shape[1]) and b.stride(0) == 1 and b.stride(1) >= max(1, b.shape[0]),
           "Only multiplication of row-major and column-major matrices is supported by cuBLASLt")
    _check(out_dtype in (torch.bfloat16, torch.float16, torch.float32), f"fake: output dtype {out_dtype} is not modelled", FakeNotModeled)


def _rowwise_path(a, b, scale_a, scale_b, bias, out_dtype, cfg) -> str:
    cutlass = cfg.capability[0] < 9 or cfg.cublas < (12, 9) or cfg.capability[0] >= 10
    if not cutlass:
        return "cublas"
    if cfg.capability == (8, 9) and cfg.torch < (2, 7):
        raise RuntimeError("Rowwise scaling is not currently supported on your device")
    allowed = {torch.bfloat16}
    if cfg.torch >= (2, 10):
        allowed.add(torch.float16)
    if cfg.cutlass_fp16_nobias_fixed:
        allowed.add(torch.float32)
    _check(out_dtype in allowed, "Only bf16, fp16, and fp32 high precision output types are supported for row-wise scaling."
           if len(allowed) > 1 else "Only bf16 high precision output types are supported for row-wise scaling.", ValueError)
    _check(a.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and b.dtype == torch.float8_e4m3fn, "CUTLASS row-wise: a e4m3fn/e5m2, b e4m3fn")
    _check(scale_a.stride(0) == 1 and scale_b.stride(1) == 1, "CUTLASS row-wise: scale strides")
    if bias is not None and bias.dtype == torch.float16:
        _check(out_dtype == torch.float16, "Output should be Float16 when bias is Float16")
    if bias is None and out_dtype == torch.float16 and not cfg.cutlass_fp16_nobias_fixed:
        raise FakeContractError("CUTLASS row-wise kernel without a bias writes bf16 values into an fp16 output "
                                "(no-bias branch hardcoded to bf16 until PR #187569)")
    return "cutlass"


def scaled_mm(self, mat2, scale_a, scale_b, bias=None, scale_result=None, out_dtype=None, use_fast_accum=False):
    cfg = _ACTIVE
    cap = cfg.capability
    _check(cap >= (9, 0) or cap == (8, 9), "torch._scaled_mm is only supported on CUDA devices with compute capability >= 9.0 or 8.9, or ROCm MI300+")
    _check(self.dim() == 2, "mat1 must be a matrix")
    _check(mat2.dim() == 2, "mat2 must be a matrix")
    _check(self.shape[1] == mat2.shape[0], f"mat1 and mat2 shapes cannot be multiplied ({self.shape[0]}x{self.shape[1]} and {mat2.shape[0]}x{mat2.shape[1]})")
    kind = _joint(self, mat2, scale_a, scale_b, cfg)
    _check(scale_result is None or (scale_result.numel() == 1 and scale_result.dtype == torch.float32), "scale_result must be a float scalar")
    out_dtype = out_dtype or self.dtype
    _common_checks(self, mat2, bias, out_dtype, use_fast_accum, cfg)
    path = "cublas"
    if kind == RW:
        path = _rowwise_path(self, mat2, scale_a, scale_b, bias, out_dtype, cfg)
    elif kind in (B1x16, B1x32):
        _check(cap[0] >= 10, f"CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul (block-scaled {kind} needs sm100+)")
    cfg.calls.append({"op": "_scaled_mm", "kind": kind, "path": path, "out_dtype": out_dtype,
                      "bias_dtype": None if bias is None else bias.dtype, "M": self.shape[0], "fast_accum": bool(use_fast_accum)})
    return _compute(self, mat2, kind, [scale_a], [scale_b], bias, out_dtype)


def _compute(a, b, kind, scales_a, scales_b, bias, out_dtype, alpha=None):
    A = _decode(a)
    B = _decode(b.t())
    M, K = A.shape
    N = B.shape[0]
    sa, sb = scales_a[0], scales_b[0]
    if kind in (B1x16, B1x32):
        block = 16 if kind == B1x16 else 32
        A = A * _block_scales(sa, M, K, block)
        B = B * _block_scales(sb, N, K, block)
        y = A @ B.t()
    else:
        y = (A @ B.t()) * sa.to(torch.float64).reshape(-1, 1) * sb.to(torch.float64).reshape(1, -1)
    if alpha is not None:
        y = y * alpha
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32).to(out_dtype)


def scaled_mm_v2(self, mat2, scale_a, scale_recipe_a, swizzle_a, scale_b, scale_recipe_b, swizzle_b, bias=None,
                 output_dtype=None, contraction_dim=(), use_fast_accum=False):
    cfg = _ACTIVE
    _check(cfg.torch >= (2, 10), "torch._scaled_mm_v2 does not exist before torch 2.10", AttributeError)
    cap = cfg.capability
    _check(cap >= (9, 0) or cap == (8, 9), "torch._scaled_mm is only supported on CUDA devices with compute capability >= 9.0 or 8.9, or ROCm MI300+")
    _check(self.dim() == 2 and mat2.dim() == 2, "Inputs must be 2D")
    _check(list(contraction_dim) in ([], [1, 0]), "fake: contraction_dim is not modelled", FakeNotModeled)
    nvfp4 = (self.dtype == FP4 and mat2.dtype == FP4 and len(scale_a) == 2 and len(scale_b) == 2 and list(scale_recipe_a) == [2, 0]
             and list(scale_recipe_b) == [2, 0] and scale_a[0].dtype == torch.float8_e4m3fn and scale_a[1].dtype == torch.float32
             and scale_b[0].dtype == torch.float8_e4m3fn and scale_b[1].dtype == torch.float32)
    _check(nvfp4, f"fake: only the two-level NVFP4 recipe of _scaled_mm_v2 is modelled (got recipes {list(scale_recipe_a)}, "
           f"{list(scale_recipe_b)})", FakeNotModeled)
    _check(len(swizzle_a) == 2 and len(swizzle_b) == 2, "NVFP4 needs 2 swizzle values per operand", ValueError)
    out_dtype = output_dtype or torch.bfloat16
    _common_checks(self, mat2, bias, out_dtype, use_fast_accum, cfg)
    M, N = self.shape[0], mat2.shape[1]
    want_a = _round_up(M, 128) * _round_up(-(-(self.shape[1] * 2) // 16), 4)
    want_b = _round_up(N, 128) * _round_up(-(-(mat2.shape[0] * 2) // 16), 4)
    _check(scale_a[0].numel() == want_a, f"For Blockwise scaling scale_a should have {want_a} elements, got: {scale_a[0].numel()}", ValueError)
    _check(scale_b[0].numel() == want_b, f"For Blockwise scaling scale_b should have {want_b} elements, got: {scale_b[0].numel()}", ValueError)
    _check(swizzle_a[0] == 1 and swizzle_b[0] == 1, "scale_a must be swizzled to SWIZZLE_32_4_4 format", ValueError)
    _check(scale_a[0].is_contiguous() and scale_b[0].is_contiguous(), "For Blockwise scaling both scales should be contiguous", ValueError)
    _check(scale_a[1].numel() == 1 and scale_b[1].numel() == 1, "global scales must be single fp32 values", ValueError)
    _check(cap[0] >= 10, "CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul (NVFP4 needs sm100+)")
    alpha = (scale_a[1].to(torch.float32) * scale_b[1].to(torch.float32)).to(torch.float64).reshape(())
    cfg.calls.append({"op": "_scaled_mm_v2", "kind": B1x16, "path": "cublas", "out_dtype": out_dtype,
                      "bias_dtype": None if bias is None else bias.dtype, "M": M})
    return _compute(self, mat2, B1x16, scale_a, scale_b, bias, out_dtype, alpha)


@contextlib.contextmanager
def fake_cuda_scaled_mm(cfg: FakeCuda | None = None):
    """While active, CPU ``_scaled_mm`` / ``_scaled_mm_v2`` calls run this fake of the CUDA build on device ``cfg``."""
    global _ACTIVE
    cfg = cfg or FakeCuda()
    lib = torch.library.Library("aten", "IMPL")
    old, _ACTIVE = _ACTIVE, cfg
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
            warnings.filterwarnings("ignore", message=".*other operators may also be overridden.*")
            lib.impl("_scaled_mm", scaled_mm, "CPU")
            lib.impl("_scaled_mm_v2", scaled_mm_v2, "CPU")
        yield cfg
    finally:
        _ACTIVE = old
        lib._destroy()
