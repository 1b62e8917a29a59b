"""Device families: the one place that maps a torch device onto the plugin that serves it.

ROCm builds of PyTorch report their GPUs as ``cuda`` devices; they are told apart by
``torch.version.hip``.  Nothing here imports a vendor package.
"""

from __future__ import annotations

import torch

#: Families served by in-tree plugins; a plugin's entry-point name equals its family.
FAMILIES = ("cuda", "rocm", "xpu", "npu", "cpu")


def device_family(device: "torch.device | str") -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return "rocm" if getattr(torch.version, "hip", None) else "cuda"
    return d.type


def default_device() -> torch.device:
    """The accelerator PyTorch reports as current, else the CPU."""
    acc = getattr(torch, "accelerator", None)
    try:
        if acc is not None and acc.is_available():
            return torch.device(acc.current_accelerator().type)
    except Exception:  # a broken vendor runtime must not break CPU use
        pass
    return torch.device("cpu")
