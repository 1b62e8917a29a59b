"""What the XPU kernels ask about the runtime, in one place (tests replace the answers by
patching ``torch.xpu.is_available`` and by registering fake XPU kernels; see tests/fake_xpu.py)."""

from __future__ import annotations

import torch

from quantlinear import Verdict

#: Where the code of this plugin was checked, shown by each kernel's ``verified`` attribute.
VERIFIED = "against fakes only (tests/fake_xpu.py), not on Intel hardware"


def xpu_available() -> tuple[bool, str]:
    """(available, reason if not). Never raises: a broken driver is a reason, not a crash."""
    mod = getattr(torch, "xpu", None)
    if mod is None:
        return False, f"torch {torch.__version__} has no torch.xpu module"
    try:
        if mod.is_available():
            return True, ""
    except Exception as e:  # a broken Level Zero / driver install
        return False, f"torch.xpu.is_available() raised {type(e).__name__}: {e}"
    build = getattr(torch.version, "xpu", None)
    why = "this is not an XPU build of PyTorch" if not build else "no XPU device is visible (driver, ZE_AFFINITY_MASK?)"
    return False, f"torch.xpu.is_available() is False: {why} (torch {torch.__version__})"


def has_xpu_kernel(op: str) -> bool:
    """True when ``aten::<op>`` exists and has a kernel registered for the XPU dispatch key."""
    if not hasattr(torch.ops.aten, op):
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", "XPU"))
    except Exception:
        return False


def require_ops(*ops: str) -> Verdict:
    """Yes when XPU is available and every aten op has an XPU kernel; otherwise why not."""
    ok, why = xpu_available()
    if not ok:
        return Verdict.no(why)
    for op in ops:
        if not hasattr(torch.ops.aten, op):
            return Verdict.no(f"torch {torch.__version__} has no aten.{op}")
        if not has_xpu_kernel(op):
            return Verdict.no(f"torch {torch.__version__} has aten.{op} but no XPU kernel for it (not an XPU build?)")
    return Verdict.yes()
