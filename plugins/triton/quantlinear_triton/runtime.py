"""Facts about the Triton installation, answered without importing Triton."""

from __future__ import annotations

import importlib.util
import os


def interpreting() -> bool:
    """``TRITON_INTERPRET`` is on: ``@triton.jit`` functions run in Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """Whether Triton can be imported, without importing it."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def env_on(name: str, default: str = "0") -> bool:
    """A boolean environment switch: anything but ``0/off/false/no/""`` is on."""
    return os.environ.get(name, default).strip().lower() not in ("0", "off", "false", "no", "")
