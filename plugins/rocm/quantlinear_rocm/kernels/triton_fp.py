"""``rocm.triton_fp``: the shared float-scheme Triton kernels (MXFP4/8, MXINT4, NVFP4, FP8) on AMD GPUs.

Not run on AMD hardware (see README.md): numerics checked in Triton's interpreter with CPU tensors
playing a simulated device, and the kernels compiled for gfx942.

FP8 weight elements (FPW8A16, FP8_STATIC, MXFP8) are decoded by the matrix cores' own format
where the architecture has one (``archs.Arch.fp8``; issue #6):

* gfx942 (MI300, ``float8_e4m3fnuz``): the checkpoint's e4m3fn bytes are converted once at load
  by :func:`quantlinear_rocm.fp8.e4m3fn_to_e4m3fnuz` (exact: same bytes, -0 -> +0, NaN -> 0x80)
  and decoded with ``tl.float8e4b8``, whose value is half the e4m3fn one; the kernel doubles it
  instead of doubling every scale, so E8M0 / per-channel scales stay as stored;
* gfx950 and RDNA4 (OCP ``float8_e4m3fn``): decoded with ``tl.float8e4nv``;
* elsewhere (gfx90a, RDNA3): the exact integer bit decode (Triton would emulate FP8 there).
"""

from __future__ import annotations

import torch

from quantlinear import LayerSpec
from quantlinear_triton.fp_layers import FloatTritonBase
from quantlinear_triton.fp_packing import E4M3, E4M3_B8, E4M3_NV

from .. import archs
from .. import device as _device
from .. import fp_ops
from ..fp8 import e4m3fn_to_e4m3fnuz
from .common import TritonRocmKernel


def fp8_decode_for(arch: str):
    """(ELEM code, codes transform) for FP8 weights on ``arch``."""
    a = archs.SUPPORTED.get(arch)
    fmt = a.fp8 if a is not None else None
    if fmt == "float8_e4m3fnuz":
        return E4M3_B8, lambda codes: e4m3fn_to_e4m3fnuz(codes)[0].view(torch.uint8)
    if fmt == "float8_e4m3fn":
        return E4M3_NV, None
    return E4M3, None


class RocmTritonFPLinear(TritonRocmKernel, FloatTritonBase):
    name = "rocm.triton_fp"
    priority = 60
    device_families = frozenset({"rocm"})
    ops_module = fp_ops
    verified = _device.VERIFIED

    @classmethod
    def layout_reason(cls, spec: LayerSpec) -> str | None:
        return cls.scheme_reason(spec)

    def fp8_decode(self):
        return fp8_decode_for(_device.device_props(self.spec.device).arch)
