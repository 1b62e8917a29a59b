"""The checks every ROCm Triton kernel of this plugin makes, written once.

``arch_verdict`` answers "is this a ROCm device whose gfx architecture a kernel family accepts"
(also used by the tinygemm kernel); ``TritonRocmKernel`` adds what every Triton kernel needs (a
listed architecture, Triton installed, and CPU tensors standing in for the device only under
Triton's interpreter).  A kernel class then states only its own layout requirements in
``layout_reason``.
"""

from __future__ import annotations

from quantlinear import LayerSpec, Verdict

from .. import archs
from .. import device as _device


def arch_verdict(spec: LayerSpec, refusal) -> Verdict:
    """Yes when ``spec.device`` is a ROCm device whose gfx arch ``refusal(arch)`` accepts; otherwise why not."""
    try:
        props = _device.device_props(spec.device)
    except Exception as e:
        return Verdict.no(f"cannot use {spec.device}: {e}")
    reason = refusal(props.arch)
    return Verdict.no(f"{props.name} is {reason}") if reason else Verdict.yes()


class TritonRocmKernel:
    """Mixin (first base) of the plugin's Triton kernels: device checks + ``layout_reason`` of the kernel."""

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        v = arch_verdict(spec, archs.triton_refusal)
        if not v:
            return v
        if not _device.triton_available():
            return Verdict.no("Triton is not installed (ROCm wheels of PyTorch bring pytorch-triton-rocm)")
        if spec.device.type == "cpu" and not _device.interpreting():
            return Verdict.no("a CPU tensor stands in for the ROCm device only under TRITON_INTERPRET=1 (tests)")
        reason = cls.layout_reason(spec)
        return Verdict.no(reason) if reason else Verdict.yes()

    @classmethod
    def layout_reason(cls, spec: LayerSpec) -> str | None:
        """Why this layer's shape/scheme does not fit the kernel's layout, or None."""
        return None
