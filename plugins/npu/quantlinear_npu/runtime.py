"""torch_npu discovery without side effects, and the Ascend facts the kernel needs.

* Nothing is imported when torch_npu is not installed (``importlib.util.find_spec`` only).
* torch_npu registers a ``torch.backends`` entry point, so ``import torch`` normally imports it
  already; without CANN that import fails and ``import torch`` itself raises unless
  ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``.  With autoload off, :func:`import_torch_npu` turns such a
  failure into a :class:`quantlinear.PluginError` naming the cause.
* ``torch.npu.is_available()`` and the SoC name are read inside ``try``: a broken driver is a
  reason in a Verdict, never an exception.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

import torch

from quantlinear import PluginError

#: Where this plugin's code was checked, shown by each kernel's ``verified`` attribute.
VERIFIED = "against fakes only (tests/fake_torch_npu.py), not on Ascend hardware"

OPS = ("npu_weight_quant_batchmatmul", "npu_convert_weight_to_int4pack")


def installed() -> bool:
    try:
        return "torch_npu" in sys.modules or importlib.util.find_spec("torch_npu") is not None
    except (ImportError, ValueError):
        return False


def import_torch_npu() -> ModuleType | None:
    """The torch_npu module (imported if installed but not yet imported), or None if not installed."""
    mod = sys.modules.get("torch_npu")
    if mod is not None:
        return mod
    if not installed():
        return None
    try:
        return importlib.import_module("torch_npu")
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # ImportError (CANN libraries), RuntimeError ("Two accelerators..."), SystemExit
        raise PluginError(
            f"torch_npu is installed but cannot be imported: {type(e).__name__}: {e}. "
            "Install and source the matching CANN toolkit (set_env.sh), or uninstall torch-npu; "
            "quantlinear's other plugins are unaffected"
        ) from e


def status() -> tuple[bool, str]:
    """(usable, reason if not): torch_npu imported, its ops registered, an NPU visible."""
    if "torch_npu" not in sys.modules:
        if not installed():
            return False, "torch_npu is not installed (pip install torch-npu==<your torch version>, with the CANN toolkit)"
        return False, "torch_npu is installed but not imported (TORCH_DEVICE_BACKEND_AUTOLOAD=0?): import torch_npu first"
    for op in OPS:
        if not hasattr(torch.ops.npu, op):
            return False, f"this torch_npu has no torch.ops.npu.{op}"
    npu = getattr(torch, "npu", None)
    try:
        if npu is None or not npu.is_available():
            return False, "torch.npu.is_available() is False (no visible Ascend device: driver, ASCEND_RT_VISIBLE_DEVICES?)"
    except Exception as e:
        return False, f"torch.npu.is_available() raised {type(e).__name__}: {e}"
    return True, ""


def soc_name(device: torch.device) -> str:
    """The SoC name torch_npu reports (``Ascend910B3``, ``Ascend910_9392``, ``Ascend310P3``...), or ''."""
    try:
        index = device.index if device.index is not None else torch.npu.current_device()
        return str(torch.npu.get_device_name(index))
    except Exception:
        return ""


# Products of the op's documentation (docs/zh/custom_APIs/torch_npu/torch_npu-npu_weight_quant_batchmatmul.md):
#   Atlas A2 (Ascend910B*) and A3 (Ascend910_93*): fp16/bf16 x, int8 and int4 (int32-packed) weights.
#   Atlas inference cards (Ascend310P*): fp16 x and int8 weights only.
FULL, INT8_FP16 = "A2/A3", "Atlas inference card"


def product(soc: str) -> str | None:
    if soc.startswith("Ascend910B") or soc.startswith("Ascend910_93") or soc.startswith("Ascend950"):
        return FULL
    if soc.startswith("Ascend310P"):
        return INT8_FP16
    return None
