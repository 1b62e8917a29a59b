"""``rocm.triton``: the shared Triton weight-only int kernels (2/3/4/8-bit x fp16/bf16/fp32) on AMD GPUs.

Not run on AMD hardware (see README.md): numerics were checked in Triton's interpreter with the
launch configurations of every listed architecture, and the kernels cross-compiled for them.

The kernels, the slab layout and the dispatch on M are the CUDA plugin's (library
``quantlinear_triton``); this class adds the ROCm checks and the launch configurations for
CDNA2/3/4 and RDNA3/4 (:mod:`..tune`), chosen by the gfx architecture of the device.
"""

from __future__ import annotations

import torch

from quantlinear import LayerSpec, Verdict
from quantlinear_triton.layers import TritonSlabBase

from .. import archs
from .. import device as _device
from .. import ops


def arch_verdict(spec: LayerSpec, refusal) -> Verdict:
    """Yes when ``spec.device`` is a ROCm device whose gfx arch ``refusal(arch)`` accepts; otherwise why not."""
    try:
        props = _device.device_props(spec.device)
    except Exception as e:
        return Verdict.no(f"cannot use {spec.device}: {e}")
    reason = refusal(props.arch)
    return Verdict.no(f"{props.name} is {reason}") if reason else Verdict.yes()


class RocmTritonLinear(TritonSlabBase):
    name = "rocm.triton"
    priority = 60
    device_families = frozenset({"rocm"})
    ops_module = ops
    verified = _device.VERIFIED

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        v = arch_verdict(spec, archs.triton_refusal)
        if not v:
            return v
        if not _device.triton_available():
            return Verdict.no("Triton is not installed (ROCm wheels of PyTorch bring pytorch-triton-rocm)")
        if spec.device.type == "cpu" and not _device.interpreting():
            return Verdict.no("a CPU tensor stands in for the ROCm device only under TRITON_INTERPRET=1 (tests)")
        reason = cls.slab_reason(spec)
        return Verdict.no(reason) if reason else Verdict.yes()
