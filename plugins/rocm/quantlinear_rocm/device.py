"""What the ROCm kernels need to know about a device, read from PyTorch's ROCm runtime surface.

ROCm builds of PyTorch report AMD GPUs as ``cuda`` devices; ``torch.version.hip`` is set and
``torch.cuda.get_device_properties(i)`` carries ``gcnArchName`` (``"gfx942:sramecc+:xnack-"``),
``warp_size`` and ``shared_memory_per_block``.  Every check of this plugin reads them through
:func:`device_props` here, so tests replace the runtime (tests/fake_rocm.py), never this module.

Test-only switch: with ``QUANTLINEAR_ROCM_CPU_INTERPRET=1`` (or :data:`CPU_STANDS_IN` set True)
a CPU device stands for GPU 0 of the (simulated) ROCm runtime: the kernels accept CPU layers
and the Triton ones run them through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from quantlinear_triton.runtime import interpreting, triton_available  # noqa: F401  (patched by tests here)

from . import archs

#: Test-only override of the CPU stand-in switch (None: read QUANTLINEAR_ROCM_CPU_INTERPRET).
CPU_STANDS_IN: bool | None = None

#: Where the code of this plugin was checked (shown by each kernel's ``verified`` attribute).
VERIFIED = ("not on AMD hardware: Triton's interpreter on CPU, cross-compilation for gfx targets, "
            "and fakes of the ROCm runtime and aten ops (tests/fake_rocm.py)")


@dataclass(frozen=True)
class RocmProps:
    """The device facts selection, tuning and the launch tables use."""

    name: str
    gcn_arch_name: str
    warp_size: int
    lds_per_block: int
    cu_count: int
    total_memory: int
    simulated: bool = False

    @property
    def arch(self) -> str:
        """``gfx942``: the table key (``gcnArchName`` without features)."""
        return archs.base_arch(self.gcn_arch_name)

    @property
    def info(self) -> "archs.Arch | None":
        return archs.SUPPORTED.get(self.arch)


def hip_version() -> str | None:
    return getattr(torch.version, "hip", None) or None


def cpu_stands_in() -> bool:
    if CPU_STANDS_IN is not None:
        return bool(CPU_STANDS_IN)
    return os.environ.get("QUANTLINEAR_ROCM_CPU_INTERPRET", "0") not in ("", "0")


def _props(index: int, simulated: bool) -> RocmProps:
    p = torch.cuda.get_device_properties(index)
    arch = getattr(p, "gcnArchName", "") or ""
    if not arch:
        raise RuntimeError(f"{p.name} reports no gcnArchName (a ROCm build of PyTorch sets it)")
    return RocmProps(
        name=p.name,
        gcn_arch_name=arch,
        warp_size=int(getattr(p, "warp_size", 0) or 64),
        lds_per_block=int(getattr(p, "shared_memory_per_block", 0) or 64 * 1024),
        cu_count=int(p.multi_processor_count),
        total_memory=int(p.total_memory),
        simulated=simulated,
    )


def device_props(device: "torch.device | str") -> RocmProps:
    """Properties of ``device``; raises RuntimeError when it is not a usable ROCm device."""
    d = torch.device(device)
    if not hip_version():
        raise RuntimeError(f"this is not a ROCm build of PyTorch (torch.version.hip is unset; torch {torch.__version__})")
    if d.type == "cpu" and cpu_stands_in():
        return _props(0, True)
    if d.type != "cuda":
        raise RuntimeError(f"{d} is not a ROCm device (ROCm GPUs are torch 'cuda' devices)")
    try:
        index = d.index if d.index is not None else torch.cuda.current_device()
        return _props(index, False)
    except (AssertionError, RuntimeError) as e:  # CPU builds assert, bad indices raise
        raise RuntimeError(f"no ROCm device {d}: {e}") from None
