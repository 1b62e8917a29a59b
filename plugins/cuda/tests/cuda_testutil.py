"""Shared helpers for the CUDA plugin tests (imported as a module, not a conftest)."""

from __future__ import annotations

import torch

GPU = torch.cuda.is_available() and not getattr(torch.version, "hip", None)
DEV = torch.device("cuda") if GPU else torch.device("cpu")


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref| (NaN anywhere fails)."""
    y = y.float()
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


#: tolerance on rel_err per activation dtype (fp32 reference, output rounded to the dtype)
TOL = {torch.float16: 2e-3, torch.float32: 2e-5, torch.bfloat16: 1.6e-2}
