"""``rocm.triton``: the shared Triton weight-only int kernels (2/3/4/8-bit x fp16/bf16/fp32) on AMD GPUs.

Not run on AMD hardware (see README.md): numerics were checked in Triton's interpreter with the
launch configurations of every listed architecture, and the kernels cross-compiled for them.

The kernels, the slab layout and the dispatch on M are the CUDA plugin's (library
``quantlinear_triton``); this class adds the ROCm checks and the launch configurations for
CDNA2/3/4 and RDNA3/4 (:mod:`..tune`), chosen by the gfx architecture of the device.
"""

from __future__ import annotations

from quantlinear import LayerSpec
from quantlinear_triton.layers import TritonSlabBase

from .. import device as _device
from .. import ops
from .common import TritonRocmKernel


class RocmTritonLinear(TritonRocmKernel, TritonSlabBase):
    name = "rocm.triton"
    priority = 60
    device_families = frozenset({"rocm"})
    ops_module = ops
    verified = _device.VERIFIED

    @classmethod
    def layout_reason(cls, spec: LayerSpec) -> str | None:
        return cls.slab_reason(spec)
