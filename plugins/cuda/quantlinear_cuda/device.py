"""What the kernels need to know about a device, in one place that tests can replace.

Every capability check in this plugin reads :func:`device_props` and :func:`triton_available`
through this module (``device.device_props(...)``), so a test can monkeypatch either to
simulate an sm75 card, an sm90 card, a ROCm build or a machine without Triton on a CPU-only
CI machine.

Test-only switch: with ``TRITON_INTERPRET=1`` in the environment *and*
``QUANTLINEAR_CUDA_CPU_INTERPRET=1`` (or :data:`CPU_INTERPRET` set True), the Triton kernels
accept layers whose device is the CPU and run them through Triton's interpreter, so their
numerics can be tested without a GPU.  It is meant for tests: the interpreter is orders of
magnitude slower than anything else.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from quantlinear_triton.runtime import interpreting, triton_available  # noqa: F401  (patched by tests here)

#: Test-only override of the CPU-interpreter switch (None: read QUANTLINEAR_CUDA_CPU_INTERPRET).
CPU_INTERPRET: bool | None = None


@dataclass(frozen=True)
class DeviceProps:
    """The few device facts kernel selection, tuning and benchmarks use."""

    name: str
    capability: tuple[int, int]
    hip: bool = False
    sm_count: int = 132
    l2_bytes: int = 50 * 1024 * 1024
    total_memory: int = 80 * 1024**3
    simulated: bool = False

    @property
    def arch(self) -> str:
        """``sm90``-style name (``gfx``-less: ROCm devices are refused before this matters)."""
        return f"sm{self.capability[0]}{self.capability[1]}"


#: What the Triton interpreter pretends to be (test-only CPU mode).
INTERPRETER_PROPS = DeviceProps("triton-interpreter", (9, 0), sm_count=4, l2_bytes=1 << 20, simulated=True)


def cpu_interpret_enabled() -> bool:
    """True when Triton kernels may run CPU layers through the interpreter (tests only)."""
    if not interpreting():
        return False
    if CPU_INTERPRET is not None:
        return bool(CPU_INTERPRET)
    return os.environ.get("QUANTLINEAR_CUDA_CPU_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _cuda_props(index: int) -> DeviceProps:
    p = torch.cuda.get_device_properties(index)
    l2 = int(getattr(p, "L2_cache_size", 0) or getattr(p, "l2_cache_size", 0) or 50 * 1024 * 1024)
    return DeviceProps(
        name=p.name,
        capability=(p.major, p.minor),
        hip=bool(getattr(torch.version, "hip", None)),
        sm_count=p.multi_processor_count,
        l2_bytes=l2,
        total_memory=p.total_memory,
    )


def device_props(device: "torch.device | str") -> DeviceProps:
    """Properties of ``device``; raises RuntimeError when there is no such CUDA device."""
    d = torch.device(device)
    if cpu_interpret_enabled() and (d.type == "cpu" or not torch.cuda.is_available()):
        return INTERPRETER_PROPS
    if d.type != "cuda":
        raise RuntimeError(f"{d} is not a CUDA device")
    if not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA device is available to this PyTorch build ({torch.__version__})")
    index = d.index if d.index is not None else torch.cuda.current_device()
    return _cuda_props(index)
