"""A faithful fake of the Intel XPU APIs the quantlinear XPU plugin calls, for machines without XPU.

What is faked, and from which source (see ../README.md for commits):

* ``aten._convert_weight_to_int4pack`` (XPU): torch-xpu-ops ``src/ATen/native/xpu/WeightInt4Pack.cpp``
  and ``sycl/WeightInt4PackKernel.cpp`` -- every check, and the exact output layout.
* ``aten._weight_int4pack_mm_with_scales_and_zeros`` (XPU): PyTorch ``aten/src/ATen/native/mkldnn/xpu/Blas.cpp``
  (``_weight_int4pack_mm_xpu``) and ``detail/WoQMatmul.cpp`` (``woq_matmul_int4``, whose cached
  oneDNN path asserts on fp32 activations) -- every check; plus the conditions the real op does
  *not* check but silently relies on (it would read memory wrongly), raised here as
  ``FakeContractError`` so a kernel that violates them fails loudly.
* ``aten._weight_int8pack_mm`` (XPU): ``Blas.cpp`` ``_weight_int8pack_mm_xpu``.
* ``intel_extension_for_pytorch`` 2.8.10+xpu's ``llm.quantization.IPEXWeightOnlyQuantizedLinear.from_weight``
  (``woq_linear.py`` and ``nn/utils/_quantize_convert.py``): GPTQ_GEMM forced symmetric (zero 8),
  AWQ_GEMM with raw zeros and IPEX's own AWQ->GPTQ repacking, and the import-time version guard
  (the real one calls ``os._exit(127)``; the fake raises ``FakeProcessExit`` so a test can see it).

The ops are registered with ``torch.library`` for the CPU dispatch key (so CPU tensors stand in
for XPU tensors) and for the XPU key (so ``torch._C._dispatch_has_kernel_for_dispatch_key`` sees
an XPU build).  Results are computed in fp32 from the unpacked integers and returned in the
activation dtype.  Nothing here reads the plugin's code: it only models the vendor APIs.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from enum import IntEnum
from pathlib import Path

import torch
from torch import nn

import quantlinear.devices
import quantlinear.select


class FakeContractError(RuntimeError):
    """A condition the vendor op relies on without checking (the real op would compute garbage)."""


class FakeProcessExit(BaseException):
    """Stands for ``os._exit(127)``, which the real IPEX calls on a torch/IPEX version mismatch."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)  # TORCH_CHECK raises RuntimeError (c10::Error) in Python


def _contract(cond: bool, msg: str) -> None:
    if not cond:
        raise FakeContractError("[unchecked by the real op; it would read memory wrongly] " + msg)


def _common_device(name: str, *tensors: torch.Tensor) -> None:
    devs = {t.device for t in tensors}
    _check(len(devs) == 1, f"Expected all tensors to be on the same device, but found {sorted(map(str, devs))} ({name})")


# ---- reference (un)packing, written from the vendor code, independent of the plugin -------------------
def unpack_xpu_int4(B: torch.Tensor, K: int) -> torch.Tensor:
    """int32 ``[N, K/8]`` as made by the XPU packer -> codes ``[N, K]`` (int64).

    oneDNN reads the buffer as u4 ``[K, N]`` with strides ``{1, K}``: element (k, n) is nibble
    ``n*K + k``; nibble ``i`` lies in byte ``i // 2`` (low nibble when ``i`` is even); bytes fill
    the int32 words little-endian.  So word ``j`` of row ``n`` holds k = 8j..8j+7 at bits 4*(k-8j).
    """
    w = B.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=B.device)
    q = (w.unsqueeze(-1) >> shifts) & 0xF  # [N, K/8, 8]
    return q.reshape(B.shape[0], -1)[:, :K]


# ---- the fake aten XPU kernels ------------------------------------------------------------------------
def convert_weight_to_int4pack(self: torch.Tensor, innerKTiles: int) -> torch.Tensor:
    fn = "_convert_weight_to_int4pack_xpu"
    _check(self.dim() == 2, f"{fn} : expect weight to be 2D tensor.")
    _check(self.dtype == torch.uint8, f"{fn} : expect weight to be kByte.")
    _check(innerKTiles in (2, 4, 8), f"{fn} : innerKTiles need to be 2, 4, or 8, got {innerKTiles}")
    weight = self.contiguous()
    N, K = weight.shape[0], weight.shape[1] * 2
    _check(K % 8 == 0, "The K dimension of int4 GEMM should be a multiple of 8.")
    # WeightToInt4PackKernelFunctor: word (n, j) = sum_i byte[n, 4j+i] << (8 i)
    b = weight.to(torch.int64).reshape(N, K // 8, 4)
    word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)
    word = torch.where(word >= 2**31, word - 2**32, word)
    return word.to(torch.int32)


def weight_int4pack_mm_with_scales_and_zeros(A, B, qGroupSize, qScale, qZeros):
    fn = "_weight_int4pack_mm_xpu"
    N = B.size(0)
    _check(A.dtype in (torch.bfloat16, torch.float16, torch.float32), f"{fn} : expect A to be either 32-bit or 16-bit float tensor.")
    _check(A.is_contiguous(), f"{fn} : expect A to be contiguous.")
    _check(A.dim() == 2, f"{fn} : expect A to be 2D tensor.")
    _check(B.dtype == torch.int32, f"{fn} : expect B to be int32 tensor.")
    _check(qZeros.dtype == torch.int8, f"{fn} : expect qZeros to be int8 tensor currently.")
    _check(B.dim() == 2, f"{fn} : expect B to 2d tensor.")
    _check(qGroupSize > 1 and qGroupSize % 32 == 0, f"{fn} : expect qGroupSize to be multiple of 32 and greater than 1, got {qGroupSize}")
    _check(qScale.dim() == 2 and qScale.size(1) == N, f"{fn}: expect qScale to be 2d tensor with sizes [:, {N}]")
    _check(qZeros.dim() == 2 and qZeros.size(1) == N, f"{fn}: expect qZeros to be 2d tensor with sizes [:, {N}]")
    _common_device("_weight_int4pack_mm_with_scales_and_zeros", A, B, qScale, qZeros)
    # woq_matmul_int4 -> woq_matmul_int4_impl_cache (pri_cache defaults to true)
    if A.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"Unsupported data type for int4 matmul: {str(A.dtype).replace('torch.', '').capitalize()}")
    M, K = A.shape
    G = K // qGroupSize
    _contract(B.size(1) * 8 == K, f"B must be [N, K/8] = [{N}, {K // 8}], got {tuple(B.shape)}")
    _contract(B.stride(1) == 1, f"B must be row-contiguous (ldb = B.stride(0) * 8), strides {B.stride()}")
    _contract(K % qGroupSize == 0, f"K={K} must be a multiple of qGroupSize={qGroupSize} (num_groups = K / qGroupSize)")
    _contract(tuple(qScale.shape) == (G, N) and qScale.is_contiguous(), f"qScale must be contiguous [{G}, {N}], got {tuple(qScale.shape)} strides {qScale.stride()}")
    _contract(tuple(qZeros.shape) == (G, N) and qZeros.is_contiguous(), f"qZeros must be contiguous [{G}, {N}], got {tuple(qZeros.shape)} strides {qZeros.stride()}")
    _contract(qScale.dtype == A.dtype, f"qScale dtype {qScale.dtype} must equal A's {A.dtype} (fp32 scales need pytorch#194692)")
    q = unpack_xpu_int4(B, K).to(torch.float32)  # [N, K]
    gi = torch.arange(K, device=A.device) // qGroupSize
    z = qZeros.to(torch.float32).t().index_select(1, gi)
    s = qScale.to(torch.float32).t().index_select(1, gi)
    return (A.to(torch.float32) @ ((q - z) * s).t()).to(A.dtype)


def weight_int8pack_mm(A, B, scales):
    fn = "_weight_int8pack_mm_xpu"
    K = A.size(1) if A.dim() == 2 else A.size(-1)
    _check(A.dtype in (torch.bfloat16, torch.float16, torch.float32), " : expect A to be either 32-bit or 16-bit float tensor.")
    _check(A.dim() == 2, f"{fn} : expect A to be 2D tensor.")
    _check(A.stride(1) == 1, " : A must be contiguous on the last dimension.")
    _check(B.dtype == torch.int8, " : expect B to be int8 tensor.")
    _check(B.is_contiguous(), " : expect B to be contiguous.")
    _check(B.size(1) == K, f" : expect B.size(1) == {K}")
    N = B.size(0)
    _check(scales.dim() == 1 and scales.size(0) == N, f" : expect scales to be 1d tensor with size {N}")
    _common_device("_weight_int8pack_mm", A, B, scales)
    _contract(scales.dtype.is_floating_point, f"scales must be a float tensor (oneDNN converts them to f32), got {scales.dtype}")
    w = B.to(torch.float32) * scales.to(torch.float32).unsqueeze(1)  # quantized_matmul: weight_scales.to(kFloat)
    return (A.to(torch.float32) @ w.t()).to(A.dtype)


FAKE_OPS = {
    "_convert_weight_to_int4pack": convert_weight_to_int4pack,
    "_weight_int4pack_mm_with_scales_and_zeros": weight_int4pack_mm_with_scales_and_zeros,
    "_weight_int8pack_mm": weight_int8pack_mm,
}


@contextlib.contextmanager
def fake_xpu_ops(ops=tuple(FAKE_OPS)):
    """Register the fake XPU kernels (CPU and XPU dispatch keys) for the duration of the block."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
            warnings.filterwarnings("ignore", message=".*other operators may also be overridden.*")
            for name in ops:
                lib.impl(name, FAKE_OPS[name], "CPU")
                lib.impl(name, FAKE_OPS[name], "XPU")
        yield
    finally:
        lib._destroy()


# ---- the simulated device -------------------------------------------------------------------------------
def _family_cpu_is(fam: str):
    real = quantlinear.devices.device_family

    def device_family(device):
        d = torch.device(device)
        return fam if d.type == "cpu" else real(d)

    return device_family


@contextlib.contextmanager
def simulate_xpu(*, ops=tuple(FAKE_OPS), available: bool = True):
    """CPU tensors play XPU tensors: ``device="cpu"`` maps to family "xpu", torch.xpu reports a device,
    and the fake aten XPU kernels are registered.  Everything is undone on exit."""
    import pytest

    fam = _family_cpu_is("xpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantlinear.devices, "device_family", fam)
        mp.setattr(quantlinear.select, "device_family", fam)
        mp.setattr(torch.xpu, "is_available", lambda: available)
        mp.setattr(torch.xpu, "device_count", lambda: 1 if available else 0)
        mp.setattr(torch.xpu, "get_device_name", lambda device=None: "Intel(R) Data Center GPU Max 1550 (fake)")
        # torch.compile saves/restores the RNG state of every available device (_dynamo.utils.preserve_rng_state)
        rng = {"state": torch.zeros(16, dtype=torch.uint8)}
        mp.setattr(torch.xpu, "get_rng_state", lambda device="xpu": rng["state"].clone())
        mp.setattr(torch.xpu, "set_rng_state", lambda new_state, device="xpu": rng.update(state=new_state.clone()))
        quantlinear.select.clear_cache()
        try:
            with fake_xpu_ops(ops):
                yield
        finally:
            quantlinear.select.clear_cache()


# ---- a fake intel_extension_for_pytorch (2.8.10+xpu API) -------------------------------------------------
class QuantMethod(IntEnum):
    GPTQ_GEMM = 0
    AWQ_GEMM = 1


class QuantDtype(IntEnum):
    INT4 = 0
    FP8_E5M2 = 1
    FP8_E4M3FN = 2


REVERSE_AWQ_PACK_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def _unpack_cols(qmatrix: torch.Tensor) -> torch.Tensor:  # IPEX unpack(direction="column")
    shifts = torch.arange(0, 32, 4, device=qmatrix.device)
    im = torch.bitwise_right_shift(qmatrix[:, :, None], shifts[None, None, :]).view(qmatrix.shape[0], -1)
    return im.to(torch.int8) & 0x0F


def _pack_rows(imatrix: torch.Tensor) -> torch.Tensor:  # IPEX pack(direction="row")
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=imatrix.device)
    im = (imatrix.to(torch.int8) & 0x0F).view(imatrix.shape[0] // 8, 8, -1)
    return torch.bitwise_left_shift(im, shifts[None, :, None]).sum(dim=1).to(torch.int32)


def _pack_cols(imatrix: torch.Tensor) -> torch.Tensor:  # IPEX pack(direction="column")
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=imatrix.device)
    im = (imatrix.to(torch.int8) & 0x0F).view(-1, imatrix.shape[1] // 8, 8)
    return torch.bitwise_left_shift(im, shifts[None, None, :]).sum(dim=-1).to(torch.int32)


def fast_awq_to_gptq(qweight: torch.Tensor, qzeros: torch.Tensor):
    """IPEX's AWQ -> GPTQ repacking (nn/utils/_quantize_convert.py), step for step."""
    izeros = _unpack_cols(qzeros)
    iweights = _unpack_cols(qweight)
    izeros = izeros.view(-1, 8)[:, REVERSE_AWQ_PACK_ORDER].view(izeros.shape)
    iweights = iweights.view(-1, 8)[:, REVERSE_AWQ_PACK_ORDER].view(iweights.shape)
    return _pack_rows(iweights), _pack_cols(izeros)


#: device types the fake IPEX treats as XPU (the tests add "cpu" while simulating)
IPEX_XPU_TYPES = {"xpu"}


class FakeXPUWeightOnlyQuantizedLinear(nn.Module):
    """IPEX's XPU ``WeightOnlyQuantizedLinear`` after ``from_weight``: GPTQ-order codes, scales, zeros."""

    def __init__(self, qweight, scales, qzeros, in_features, out_features, blocksize, bias):
        super().__init__()
        self.in_features, self.out_features, self.blocksize = in_features, out_features, blocksize
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("qzeros", qzeros)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check(x.shape[-1] == self.in_features, f"input has {x.shape[-1]} features, expected {self.in_features}")
        _common_device("mm_int4", x, self.qweight, self.scales)
        K, N = self.in_features, self.out_features
        shifts = torch.arange(0, 32, 4, device=x.device)
        q = ((self.qweight[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(-1, N)[:K].to(torch.float32)  # [K, N]
        gi = torch.arange(K, device=x.device) // self.blocksize
        if self.qzeros.numel() == 1:  # oneDNN symmetric: broadcast scalar zero point 8
            z = self.qzeros.to(torch.float32)
        else:
            z = _unpack_cols(self.qzeros).to(torch.float32)[:, :N].index_select(0, gi)
        s = self.scales.to(torch.float32).index_select(0, gi)
        y = x.to(torch.float32) @ ((q - z) * s)
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(x.dtype)


class IPEXWeightOnlyQuantizedLinear(nn.Module):
    def __init__(self, woq_linear_impl):
        super().__init__()
        self.woq_linear_impl = woq_linear_impl

    @classmethod
    def from_weight(cls, qweight, scales, zero_points, in_features, out_features, qconfig=None, bias=None,
                    group_size=-1, g_idx=None, quant_method=QuantMethod.GPTQ_GEMM, dtype=QuantDtype.INT4, **kwargs):
        device_type = qweight.device.type
        assert device_type in {"cpu", "xpu"}, "Device type not supported."
        if device_type not in IPEX_XPU_TYPES:
            raise NotImplementedError("fake IPEX models only the XPU implementation")
        assert dtype == QuantDtype.INT4 or dtype in (QuantDtype.FP8_E5M2, QuantDtype.FP8_E4M3FN)
        assert quant_method in [QuantMethod.GPTQ_GEMM, QuantMethod.AWQ_GEMM], "IPEX only support GPTQ_GEMM and AWQ_GEMM as quantization method for now."
        if dtype != QuantDtype.INT4:
            raise NotImplementedError("fake IPEX models only INT4")
        if g_idx is not None:
            raise NotImplementedError("fake IPEX does not model GPTQShuffle (act-order)")
        K, N = in_features, out_features
        blocksize = group_size if group_size != -1 else K
        _check(K % blocksize == 0, f"fake IPEX: in_features={K} is not a multiple of group_size={blocksize}")
        G = K // blocksize
        _check(qweight.dtype == torch.int32, f"qweight must be int32, got {qweight.dtype}")
        _check(scales.dtype in (torch.float16, torch.float32), f"scale_dtype only support 'fp32', 'fp16', got {scales.dtype}")
        _check(tuple(scales.shape) == (G, N), f"scales must be [{G}, {N}], got {tuple(scales.shape)}")
        if quant_method == QuantMethod.GPTQ_GEMM:
            _check(tuple(qweight.shape) == (K // 8, N), f"GPTQ qweight must be [K/8, N] = [{K // 8}, {N}], got {tuple(qweight.shape)}")
            # XPU GPTQ is symmetric: the given zero points are replaced by the constant 8 (oneDNN)
            qzeros = torch.tensor([8], dtype=torch.int8, device=qweight.device)
        else:
            _check(tuple(qweight.shape) == (K, N // 8), f"AWQ qweight must be [K, N/8] = [{K}, {N // 8}], got {tuple(qweight.shape)}")
            _check(zero_points is not None and zero_points.dtype == torch.int32 and tuple(zero_points.shape) == (G, N // 8),
                   f"AWQ qzeros must be int32 [{G}, {N // 8}], got {None if zero_points is None else (zero_points.dtype, tuple(zero_points.shape))}")
            qweight, qzeros = fast_awq_to_gptq(qweight, zero_points)
        impl = FakeXPUWeightOnlyQuantizedLinear(qweight.contiguous(), scales.contiguous(), qzeros, K, N, blocksize, bias)
        return cls(impl)

    def forward(self, x, bias=None, **kwargs):
        return self.woq_linear_impl(x)


def _populate_ipex(pkg) -> None:
    """Called by the generated package's __init__: builds ``llm.quantization`` like the real layout."""
    import types

    llm = types.ModuleType(pkg.__name__ + ".llm")
    quant = types.ModuleType(pkg.__name__ + ".llm.quantization")
    quant.IPEXWeightOnlyQuantizedLinear = IPEXWeightOnlyQuantizedLinear
    quant.QuantMethod = QuantMethod
    quant.QuantDtype = QuantDtype
    llm.quantization = quant
    pkg.llm = llm
    sys.modules[llm.__name__] = llm
    sys.modules[quant.__name__] = quant


_IPEX_INIT = """
import re, sys, torch
import fake_xpu
__version__ = {version!r}
_t = re.match(r"(\\d+\\.\\d+).*", torch.__version__)
_i = re.match(r"(\\d+\\.\\d+).*", __version__)
if _t is None or _i is None or _t.group(1) != _i.group(1):
    fake_xpu.IPEX_IMPORT_EXITS.append(__version__)
    raise fake_xpu.FakeProcessExit(127)  # the real package: print(...); os._exit(127)
fake_xpu._populate_ipex(sys.modules[__name__])
"""

#: versions whose import would have terminated the process (filled by the fake package)
IPEX_IMPORT_EXITS: list[str] = []


@contextlib.contextmanager
def fake_ipex(version: str, root: Path | None = None, *, treat_cpu_as_xpu: bool = True):
    """An importable fake ``intel_extension_for_pytorch`` distribution ``version`` on sys.path.

    Its ``__init__`` performs IPEX's import-time check: when its major.minor differs from torch's,
    the real package prints an error and calls ``os._exit(127)``; the fake records the version in
    ``IPEX_IMPORT_EXITS`` and raises ``FakeProcessExit``.  Undone on exit.
    """
    import shutil
    import tempfile

    if root is None:  # a temporary directory of its own, removed on exit (one per use: thousands in a full run)
        tmp = Path(tempfile.mkdtemp(prefix="fake_ipex_"))
        try:
            with fake_ipex(version, tmp, treat_cpu_as_xpu=treat_cpu_as_xpu) as site:
                yield site
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return

    import pytest

    root = Path(root)
    site = root / ("site-" + version.replace("+", "_"))
    pkg = site / "intel_extension_for_pytorch"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(_IPEX_INIT.format(version=version))
    dist = site / f"intel_extension_for_pytorch-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: intel-extension-for-pytorch\nVersion: {version}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        for name in [m for m in sys.modules if m == "intel_extension_for_pytorch" or m.startswith("intel_extension_for_pytorch.")]:
            mp.delitem(sys.modules, name)
        if treat_cpu_as_xpu:
            mp.setattr(sys.modules[__name__], "IPEX_XPU_TYPES", {"xpu", "cpu"})
        try:
            yield site
        finally:
            for name in [m for m in sys.modules if m == "intel_extension_for_pytorch" or m.startswith("intel_extension_for_pytorch.")]:
                del sys.modules[name]
