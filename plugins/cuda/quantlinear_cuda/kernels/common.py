"""The checks every CUDA kernel of this plugin makes, written once.

``nvidia_device`` answers "may this plugin use that device at all" (not a ROCm build, not a ROCm
device, a CUDA device that exists) and hands back its properties; ``TritonCudaKernel`` adds what
every Triton kernel needs (Triton installed, sm75+, sm80+ for bf16 dots) and the test-only switch
that runs CPU layers through Triton's interpreter.  A kernel class then states only its own
layout requirements in ``layout_reason``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from quantlinear import LayerSpec, Verdict

from .. import device as _device


def rocm_reason() -> str | None:
    hip = getattr(torch.version, "hip", None)
    if hip:
        return f"this is a ROCm build of PyTorch (torch.version.hip={hip}); the CUDA plugin does not run on ROCm devices (use the rocm plugin)"
    return None


def nvidia_device(spec: LayerSpec) -> "tuple[_device.DeviceProps | None, str | None]":
    """``(props, None)`` for an NVIDIA device this plugin may use, else ``(None, why not)``."""
    reason = rocm_reason()
    if reason:
        return None, reason
    try:
        props = _device.device_props(spec.device)
    except Exception as e:
        return None, f"cannot use {spec.device}: {e}"
    if props.hip:
        return None, f"{props.name} is a ROCm/HIP device; the CUDA plugin does not claim ROCm devices"
    return props, None


def triton_reason(spec: LayerSpec, props: "_device.DeviceProps") -> str | None:
    if not _device.triton_available():
        return "Triton is not installed (pip install triton, or quantlinear-cuda[triton])"
    if props.capability < (7, 5):
        return f"{props.name} is {props.arch}; the Triton kernels need compute capability 7.5 or newer"
    if spec.dtype == torch.bfloat16 and props.capability < (8, 0):
        return f"bfloat16 tensor-core dot needs compute capability 8.0+ ({props.name} is {props.arch})"
    return None


class TritonCudaKernel:
    """Mixin (first base) of the plugin's Triton kernels: device checks + ``layout_reason`` of the kernel."""

    @classmethod
    def can_implement(cls, spec: LayerSpec) -> Verdict:
        # Test-only: with TRITON_INTERPRET=1 and the plugin's CPU switch on, CPU layers run
        # through Triton's interpreter (see quantlinear_cuda.device).
        if spec.device.type == "cpu" and _device.cpu_interpret_enabled():
            spec = replace(spec, device=torch.device("cuda"))
        return super().can_implement(spec)  # type: ignore[misc]

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        props, reason = nvidia_device(spec)
        reason = reason or triton_reason(spec, props) or cls.layout_reason(spec)
        return Verdict.no(reason) if reason else Verdict.yes()

    @classmethod
    def layout_reason(cls, spec: LayerSpec) -> str | None:
        """Why this layer's shape/scheme does not fit the kernel's layout, or None."""
        return None
