"""A faithful fake of the ROCm runtime surface the quantlinear ROCm plugin reads, for machines without AMD GPUs.

What is faked, and from which source (README.md gives versions):

* ``torch.version.hip`` (a str on ROCm builds, None elsewhere) and ``torch.cuda.get_device_properties``
  (ROCm builds fill ``gcnArchName`` -- with its feature suffix, ``"gfx942:sramecc+:xnack-"`` --, ``warp_size``
  (64 on CDNA/GCN, 32 on RDNA), ``shared_memory_per_block`` (LDS per workgroup: 64 KiB, 160 KiB on gfx950),
  ``multi_processor_count`` (compute units)); ``torch.cuda.current_device`` / ``device_count``.
* ``aten._scaled_mm`` as built for ROCm (hipBLASLt): which FP8 formats each gfx arch takes, the ROCm-version gates,
  tensor-wise / row-wise scaling and their checks (see the comment above :func:`scaled_mm`).
* ``aten._convert_weight_to_int4pack`` and ``aten._weight_int4pack_mm`` as built for ROCm, from PyTorch's
  ``aten/src/ATen/native/cuda/int4mm.cu`` (``USE_ROCM`` branches): every ``TORCH_CHECK``, the
  ``isCDNA2orLater`` gate (substring match of gfx90a/gfx942/gfx950 in ``gcnArchName``), the ROCm packed
  layout (n-tiles of 16, 64 lanes, written flat into the ``[ceil(N/8), K/(16*ikt), 32, ikt/2]`` tensor
  that CUDA fills with its own layout), and the bf16 dequantization ``(q - 8) * s + zero``.  Conditions the
  real op relies on without checking (it would read or write out of bounds) raise ``FakeContractError``.

CPU tensors stand in for ROCm tensors while :func:`simulate_rocm` is active (device family ``cpu`` maps to
``rocm``; the fake ops are registered for the CPU dispatch key).  Results are computed in fp32 from the
unpacked integers.  Nothing here reads the plugin's code: it only models PyTorch's ROCm build.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch

import quantlinear.devices
import quantlinear.select

HIP_VERSION = "6.4.43484-123eb5128"  # the form torch.version.hip takes on ROCm wheels


class FakeContractError(RuntimeError):
    """A condition the ROCm op relies on without checking (the real op would read or write out of bounds)."""


@dataclass(frozen=True)
class FakeDeviceProperties:
    """The fields of ``torch._C._CudaDeviceProperties`` (torch 2.13 stubs) a ROCm build fills."""

    name: str
    gcnArchName: str
    warp_size: int
    shared_memory_per_block: int
    multi_processor_count: int
    total_memory: int
    major: int
    minor: int
    L2_cache_size: int
    is_integrated: int = 0


GIB, MIB, KIB = 1024**3, 1024**2, 1024
#: One device per architecture the tests use; numbers from AMD's product specifications.
DEVICES = {
    "gfx90a": FakeDeviceProperties("AMD Instinct MI250X/MI250", "gfx90a:sramecc+:xnack-", 64, 64 * KIB, 110, 64 * GIB, 9, 0, 8 * MIB),
    "gfx942": FakeDeviceProperties("AMD Instinct MI300X", "gfx942:sramecc+:xnack-", 64, 64 * KIB, 304, 192 * GIB, 9, 4, 4 * MIB),
    "gfx950": FakeDeviceProperties("AMD Instinct MI355X", "gfx950:sramecc+:xnack-", 64, 160 * KIB, 256, 288 * GIB, 9, 5, 4 * MIB),
    "gfx1100": FakeDeviceProperties("Radeon RX 7900 XTX", "gfx1100", 32, 64 * KIB, 48, 24 * GIB, 11, 0, 6 * MIB),
    "gfx1201": FakeDeviceProperties("AMD Radeon RX 9070 XT", "gfx1201", 32, 64 * KIB, 32, 16 * GIB, 12, 0, 8 * MIB),
    "gfx906": FakeDeviceProperties("AMD Instinct MI50/MI60", "gfx906:sramecc+:xnack-", 64, 64 * KIB, 60, 32 * GIB, 9, 0, 4 * MIB),
    "gfx908": FakeDeviceProperties("AMD Instinct MI100", "gfx908:sramecc+:xnack-", 64, 64 * KIB, 120, 32 * GIB, 9, 0, 8 * MIB),
}


def _check(cond: bool, msg: str, *, unchecked: bool = False) -> None:
    """TORCH_CHECK (RuntimeError, as c10::Error surfaces in Python), or with ``unchecked`` a FakeContractError."""
    if cond:
        return
    if unchecked:
        raise FakeContractError("[unchecked by the ROCm op; it would access memory out of bounds] " + msg)
    raise RuntimeError(msg)


def _index(device) -> int:
    if isinstance(device, int):
        return device
    d = torch.device(device) if device is not None else torch.device("cuda", 0)
    return d.index if d.index is not None else 0


class _Runtime:
    """The simulated ROCm runtime: one GPU of architecture ``arch``."""

    def __init__(self, arch: str) -> None:
        self.props = DEVICES[arch]
        self.scaled_mm_calls: list[dict] = []  # what the fake _scaled_mm was asked to do (kind, dtypes)

    def get_device_properties(self, device=None):
        i = _index(device)
        if i != 0:
            raise AssertionError(f"Invalid device id {i}")  # torch.cuda._utils._get_device_index message shape
        return self.props

    def is_cdna2_or_later(self) -> bool:  # int4mm.cu: at::detail::getCUDAHooks().isGPUArch({"gfx90a", "gfx942", "gfx950"}, index)
        return any(a in self.props.gcnArchName for a in ("gfx90a", "gfx942", "gfx950"))


_RUNTIME: _Runtime | None = None


# ---- the ROCm int4 layout, written from int4mm.cu (matrix_to_m16n8k16_Bint4_layout) --------------------------
def _layout_indices(n: int, k_half: int, inner_k_tiles: int, rocm: bool):
    """For every int32 word the packer writes: (flat word index, n0, the 4 byte columns ks[0..3]).

    ROCm: n-tiles of 16 rows, 64 lanes, lane t reads row nTile*16 + t%16 and byte columns
    kBase + (t/16)*2 (+1) in each of the two k-tiles of a word; words go flat to
    ((nTile*kSuperTiles + kOuter)*64 + t)*(ikt/2) + innerKTile/2.  CUDA: n-tiles of 8, 32 lanes,
    row nTile*8 + t/4, columns kBase + t%4 (+4), written at out[nTile][kOuter][t][innerKTile/2].
    """
    ntile, lanes = (16, 64) if rocm else (8, 32)
    k_super = -(-(k_half * 2) // (inner_k_tiles * 16))
    n_tiles = -(-n // ntile)
    nt, ko, t, ik = torch.meshgrid(torch.arange(n_tiles), torch.arange(k_super), torch.arange(lanes),
                                   torch.arange(0, inner_k_tiles, 2), indexing="ij")
    base0 = (ko * inner_k_tiles + ik) * 16 // 2
    base1 = base0 + 8
    if rocm:
        n0 = nt * 16 + t % 16
        k0 = base0 + (t // 16) * 2
        k2 = base1 + (t // 16) * 2
        ks = torch.stack([k0, k0 + 1, k2, k2 + 1], -1)
    else:
        n0 = nt * 8 + t // 4
        ks = torch.stack([base0 + t % 4, base0 + t % 4 + 4, base1 + t % 4, base1 + t % 4 + 4], -1)
    flat = ((nt * k_super + ko) * lanes + t) * (inner_k_tiles // 2) + ik // 2
    return flat.reshape(-1), n0.reshape(-1), ks.reshape(-1, 4), n_tiles, k_super


def pack_int4(w: torch.Tensor, inner_k_tiles: int, rocm: bool = True) -> torch.Tensor:
    """uint8 ``[N, K/2]`` -> int32 ``[ceil(N/8), K/(16*ikt), 32, ikt/2]``, as the ROCm (or CUDA) packer writes it."""
    n, k_half = w.shape
    flat, n0, ks, _, k_super = _layout_indices(n, k_half, inner_k_tiles, rocm)
    valid = (n0[:, None] < n) & (ks < k_half)
    v = torch.where(valid, w.to(torch.int64)[n0.clamp(max=n - 1)[:, None], ks.clamp(max=k_half - 1)], 0)
    # v[3]L | v[2]L | v[1]L | v[0]L | v[3]H | v[2]H | v[1]H | v[0]H  (high nibble of byte i at bit 4i)
    word = sum(((v[:, i] & 0xF) << (16 + 4 * i)) | ((v[:, i] >> 4) << (4 * i)) for i in range(4))
    out = torch.zeros(-(-n // 8) * k_super * 32 * (inner_k_tiles // 2), dtype=torch.int64)
    out[flat] = word
    out = torch.where(out >= 2**31, out - 2**32, out)
    return out.to(torch.int32).view(-(-n // 8), k_super, 32, inner_k_tiles // 2)


def unpack_int4(B: torch.Tensor, n: int, k: int, rocm: bool = True) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: codes ``[n, k]`` (int64), even k from the high nibble."""
    inner_k_tiles = B.size(3) * 2
    flat, n0, ks, _, _ = _layout_indices(n, k // 2, inner_k_tiles, rocm)
    word = B.reshape(-1).to(torch.int64)[flat] & 0xFFFFFFFF
    keep = n0 < n
    byte = torch.stack([(((word >> (4 * i)) & 0xF) << 4) | ((word >> (16 + 4 * i)) & 0xF) for i in range(4)], -1)
    w = torch.zeros(n, k // 2, dtype=torch.int64)
    w[n0[keep][:, None].expand(-1, 4), ks[keep]] = byte[keep]
    return torch.stack([w >> 4, w & 0xF], -1).reshape(n, k)


# ---- the fake aten kernels (ROCm build) -----------------------------------------------------------------------
def convert_weight_to_int4pack(self: torch.Tensor, innerKTiles: int) -> torch.Tensor:
    _check(self.dim() == 2, "Expected in.dim() == 2 to be true, but got false.")
    _check(self.dtype == torch.uint8, "Expected in.dtype() == at::kByte to be true, but got false.")
    _check(self.is_contiguous(), "Expected in.is_contiguous() to be true, but got false.")
    _check(innerKTiles in (2, 4, 8), "Expected innerKTiles == 2 || innerKTiles == 4 || innerKTiles == 8 to be true, but got false.")
    _check(_RUNTIME is not None and _RUNTIME.is_cdna2_or_later(),
           "_convert_weight_to_int4pack_cuda is only supported on AMD gpu arch greater than or equal to CDNA2")
    n, k_half = self.shape
    _check((k_half * 2) % (innerKTiles * 16) == 0, "Expected isEvenDivisor(in.size(1) * 2, innerKTiles * kKTileSize) to be true, but got false.")
    # the ROCm packer writes ceil(N/16) tiles of 64 lanes into a tensor sized for ceil(N/8) tiles of 32
    _check(n % 16 == 0, f"N={n} must be a multiple of 16 (ROCm n-tiles are 16 rows; the output is sized for tiles of 8)", unchecked=True)
    return pack_int4(self, innerKTiles, rocm=True)


def weight_int4pack_mm(A: torch.Tensor, B: torch.Tensor, qGroupSize: int, qScaleAndZeros: torch.Tensor) -> torch.Tensor:
    _check(A.device == B.device == qScaleAndZeros.device, "Expected A.device() == B.device() && A.device() == qScaleAndZeros.device() to be true, but got false.")
    _check(_RUNTIME is not None and _RUNTIME.is_cdna2_or_later(),
           "_weight_int4pack_mm_cuda is only supported on AMD gpu arch greater than or equal to CDNA2")
    _check(B.dim() == 4, "Expected B.dim() == 4 to be true, but got false.")
    n = (B.size(0) // 2) * 16  # nTiles = B.size(0) / (kNTileSize / kNTileSizeTensor); n = nTiles * 16
    k = A.size(1)
    k_tiles = -(-k // 16)
    ikt = B.size(3) * 2
    _check(ikt in (2, 4, 8), "Expected B_innerKTiles == 2 || B_innerKTiles == 4 || B_innerKTiles == 8 to be true, but got false.")
    _check(A.dtype == torch.bfloat16, "Expected A.dtype() == at::kBFloat16 to be true, but got false.")
    _check(A.is_contiguous(), "Expected A.is_contiguous() to be true, but got false.")
    _check(A.dim() == 2, "Expected A.dim() == 2 to be true, but got false.")
    _check(B.dtype == torch.int32, "Expected B.dtype() == at::kInt to be true, but got false.")
    _check(B.is_contiguous(), "Expected B.is_contiguous() to be true, but got false.")
    _check(B.size(1) == k // (ikt * 16), "Expected B.size(1) == k / (B_innerKTiles * kKTileSize) to be true, but got false.")
    _check(B.size(2) == 32, "Expected B.size(2) == 32 to be true, but got false.")
    _check(qGroupSize in (32, 64, 128, 256), "Expected qGroupSize == 32 || qGroupSize == 64 || qGroupSize == 128 || qGroupSize == 256 to be true, but got false.")
    _check(qScaleAndZeros.dim() == 3, "Expected qScaleAndZeros.dim() == 3 to be true, but got false.")
    _check(k_tiles * 16 >= qGroupSize and (k_tiles * 16) % qGroupSize == 0,
           "Expected kTiles * kKTileSize >= qGroupSize && isEvenDivisor(kTiles * kKTileSize, qGroupSize) to be true, but got false.")
    _check(qScaleAndZeros.size(1) == n, "Expected qScaleAndZeros.size(1) == n to be true, but got false.")
    _check(qScaleAndZeros.size(2) == 2, "Expected qScaleAndZeros.size(2) == 2 to be true, but got false.")
    _check(k % (ikt * 16) == 0, f"K={k} must be a multiple of innerKTiles*16={ikt * 16} (B holds K/(16*ikt) k-tiles)", unchecked=True)
    _check(qScaleAndZeros.dtype == torch.bfloat16, f"qScaleAndZeros is read as bf16, got {qScaleAndZeros.dtype}", unchecked=True)
    _check(qScaleAndZeros.is_contiguous() and qScaleAndZeros.size(0) == k // qGroupSize,
              f"qScaleAndZeros must be contiguous [K/{qGroupSize}={k // qGroupSize}, {n}, 2], got {tuple(qScaleAndZeros.shape)}", unchecked=True)
    q = unpack_int4(B, n, k, rocm=True).to(torch.float32)
    gi = torch.arange(k) // qGroupSize
    sz = qScaleAndZeros.to(torch.float32)
    s, z = sz[gi, :, 0].t(), sz[gi, :, 1].t()
    w = ((q - 8) * s + z).to(torch.bfloat16).to(torch.float32)  # __hfma2 in bf16: one rounding to bf16
    return (A.to(torch.float32) @ w.t()).to(torch.bfloat16)


# ---- the fake _scaled_mm (ROCm build: hipBLASLt) ---------------------------------------------------------------
# From aten/src/ATen/native/cuda/ScaledBlas.cpp (USE_ROCM branches) and ScaledBlasDeviceUtils.cpp at pytorch/pytorch main:
# scaled_mm_arch_allowed (gfx942; gfx950/gfx1200/gfx1201 from ROCm 6.5), get_joint_scaling (tensor-wise singletons,
# row-wise scale_a [M, 1] / scale_b [1, N] fp32 contiguous), the multiple-of-16 checks, "Float8_e4m3fn is only
# supported for ROCm 6.5 and above", the bias rules, and the row-wise branch (mat_b e4m3fnuz on gfx942 --
# _scaled_mm_is_fnuz() -- e4m3fn elsewhere; "hipblaslt rowwise _scaled_mm only supports BFloat16 output").  Per-arch
# hipBLASLt formats: MI300 matrix cores take only the fnuz FP8 formats, gfx950/RDNA4 only the OCP ones; the other
# combination fails inside hipBLASLt (HIPBLAS_STATUS_NOT_SUPPORTED, reported e.g. by AMD Quark for fnuz on gfx1201).
_FNUZ = (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)
_OCP = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALED_MM_ARCHS = {"gfx942": (6, 0), "gfx950": (6, 5), "gfx1200": (6, 5), "gfx1201": (6, 5)}


class FakeNotModeled(NotImplementedError):
    """A configuration the fake does not model (a test must not pass through it)."""


def _rocm_version() -> tuple[int, int]:
    major, minor = (torch.version.hip or "0.0").split(".")[:2]
    return int(major), int(minor)


def _scaled_kind(a, b, scale_a, scale_b) -> str:
    f8 = a.dtype in _FNUZ + _OCP and b.dtype in _FNUZ + _OCP
    fp32 = scale_a.dtype == torch.float32 and scale_b.dtype == torch.float32
    if f8 and fp32 and scale_a.numel() == 1 and scale_b.numel() == 1:
        return "tensorwise"
    sbt = scale_b.t() if scale_b.dim() == 2 else scale_b
    if (f8 and fp32 and scale_a.dim() == 2 and tuple(scale_a.shape) == (a.shape[0], 1) and scale_a.is_contiguous()
            and sbt.dim() == 2 and tuple(sbt.shape) == (b.shape[1], 1) and sbt.is_contiguous()):
        return "rowwise"
    if scale_a.dtype in (torch.float8_e8m0fnu, torch.float8_e4m3fn):
        raise FakeNotModeled("block-scaled (MX) _scaled_mm on ROCm is not modelled")
    raise RuntimeError("Invalid scaling configuration.\n- For TensorWise scaling, a and b should be float8, scales should be float and "
                       f"singletons.\n- For RowWise scaling, a and b should be float8, scales should be float, scale_a should be ({a.shape[0]}, 1) "
                       f"and scale_b should be (1, {b.shape[1]}), and both should be contiguous.")


def scaled_mm(self, mat2, scale_a, scale_b, bias=None, scale_result=None, out_dtype=None, use_fast_accum=False):
    arch = _RUNTIME.props.gcnArchName.split(":")[0] if _RUNTIME is not None else ""
    rocm = _rocm_version()
    _check(arch in SCALED_MM_ARCHS and rocm >= SCALED_MM_ARCHS[arch],
           "torch._scaled_mm is only supported on CUDA devices with compute capability >= 9.0 or 8.9, or ROCm MI300+")
    _check(self.dim() == 2, "mat1 must be a matrix")
    _check(mat2.dim() == 2, "mat2 must be a matrix")
    _check(self.shape[1] == mat2.shape[0], "mat1 and mat2 shapes cannot be multiplied")
    kind = _scaled_kind(self, mat2, scale_a, scale_b)
    M, K, N = self.shape[0], self.shape[1], mat2.shape[1]
    out_dtype = out_dtype or self.dtype
    _check(scale_result is None or (scale_result.numel() == 1 and scale_result.dtype == torch.float32), "scale_result must be a float scalar")
    _check(bias is None or bias.numel() == N, f"Bias must be size {N} but got {None if bias is None else bias.numel()}")
    _check(K % 16 == 0, f"Expected trailing dimension of mat1 to be divisible by 16 but got mat1 shape: ({M}x{K}).")
    _check(K % 16 == 0 and N % 16 == 0, f"mat2 shape ({K}x{N}) must be divisible by 16")
    for t in (self, mat2):
        if t.dtype == torch.float8_e5m2:
            _check(rocm >= (6, 5), "Float8_e5m2 is only supported for ROCm 6.5 and above")
        if t.dtype == torch.float8_e4m3fn:
            _check(rocm >= (6, 5), "Float8_e4m3fn is only supported for ROCm 6.5 and above")
    want = _FNUZ if arch == "gfx942" else _OCP
    _check(self.dtype in want and mat2.dtype in want,
           f"HIPBLAS_STATUS_NOT_SUPPORTED when calling hipblasLtMatmul ({self.dtype} x {mat2.dtype} on {arch})")
    if bias is not None:
        _check(out_dtype != torch.float32, "Bias is not supported when out_dtype is set to Float32")
        _check(bias.dtype in (torch.bfloat16, torch.float16), f"Bias must be BFloat16 or Half, but got {bias.dtype}")
        _check(out_dtype != torch.bfloat16 or bias.dtype == torch.bfloat16, f"Bias must be BFloat16 to compute {out_dtype} output, but got {bias.dtype}")
        _check(out_dtype != torch.float16 or bias.dtype == torch.float16, f"Bias must be Float16 to compute {out_dtype} output, but got {bias.dtype}")
    _check(self.stride(1) == 1 and mat2.stride(0) == 1, "self must be row_major and mat2 col_major (meta kernel; hipBLASLt FP8 layout)")
    if kind == "rowwise":
        need = torch.float8_e4m3fnuz if arch == "gfx942" else torch.float8_e4m3fn
        if mat2.dtype != need:
            raise ValueError(f"Expected b.dtype() == at::k{str(need).split('.')[-1].capitalize()}, got: {mat2.dtype}")
        if out_dtype != torch.bfloat16:
            raise ValueError(f"hipblaslt rowwise _scaled_mm only supports BFloat16 output but got {out_dtype}")
        if arch != "gfx942":
            raise FakeNotModeled(f"hipBLASLt row-wise FP8 on {arch} is not modelled (documented for MI300 only)")
    _RUNTIME.scaled_mm_calls.append({"kind": kind, "a": self.dtype, "b": mat2.dtype, "out_dtype": out_dtype,
                                     "bias_dtype": None if bias is None else bias.dtype})
    y = (self.to(torch.float64) @ mat2.to(torch.float64)) * scale_a.to(torch.float64).reshape(-1, 1) * scale_b.to(torch.float64).reshape(1, -1)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32).to(out_dtype)


FAKE_OPS = {"_convert_weight_to_int4pack": convert_weight_to_int4pack, "_weight_int4pack_mm": weight_int4pack_mm, "_scaled_mm": scaled_mm}


@contextlib.contextmanager
def fake_rocm_ops():
    """Register the fake ROCm aten kernels for the CPU dispatch key (CPU tensors play ROCm tensors)."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
            warnings.filterwarnings("ignore", message=".*other operators may also be overridden.*")
            for name, fn in FAKE_OPS.items():
                lib.impl(name, fn, "CPU")
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def simulate_rocm(arch: str = "gfx942", *, cpu_is_rocm: bool = True, ops: bool = True, hip: str | None = HIP_VERSION):
    """A ROCm build of PyTorch with one GPU of ``arch``.  With ``cpu_is_rocm`` CPU tensors play its
    tensors (device family ``cpu`` -> ``rocm``) and, with ``ops``, the fake aten int4 kernels run them.
    ``hip=None`` simulates a CUDA build instead (torch.version.hip unset).  Everything is undone on exit."""
    import pytest

    global _RUNTIME
    rt = _Runtime(arch)
    real = quantlinear.devices.device_family

    def device_family(device):
        d = torch.device(device)
        return "rocm" if d.type == "cpu" else real(d)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.version, "hip", hip, raising=False)
        mp.setattr(torch.cuda, "get_device_properties", rt.get_device_properties)
        mp.setattr(torch.cuda, "current_device", lambda: 0)
        mp.setattr(torch.cuda, "device_count", lambda: 1)
        if cpu_is_rocm:
            mp.setattr(quantlinear.devices, "device_family", device_family)
            mp.setattr(quantlinear.select, "device_family", device_family)
        quantlinear.select.clear_cache()
        old, _RUNTIME = _RUNTIME, rt
        try:
            with fake_rocm_ops() if ops else contextlib.nullcontext():
                yield rt
        finally:
            _RUNTIME = old
            quantlinear.select.clear_cache()
