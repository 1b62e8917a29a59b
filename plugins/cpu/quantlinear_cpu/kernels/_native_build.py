"""Build and load the plugin's C kernels (``csrc/*.c``) on the machine that runs them.

Why compile at run time: PyTorch's packed int4/int8 CPU ops are vectorized for bf16
activations only (their fp32 and fp16 paths are scalar, 20-50x slower), so exact fp32 needs
a kernel of our own.  The C file uses no Python C API and no torch headers, so ``cc`` builds
it in about a second; the library is cached per (source, compiler flags, CPU flags) under
``$QUANTLINEAR_CPU_CACHE`` (default ``~/.cache/quantlinear-cpu``) and loaded with ctypes.
``-march=native`` is safe because the build happens where the code runs.  OpenMP comes from
the ``libgomp.so.1`` that torch has already loaded (same soname), so the kernel shares
torch's thread pool and ``torch.set_num_threads`` instead of starting a second pool.

Set ``QUANTLINEAR_CPU_NO_NATIVE=1`` to disable native kernels (they then report why).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

_CSRC = Path(__file__).with_name("csrc")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_lock = threading.Lock()
_cache: dict[str, "ctypes.CDLL | str"] = {}


def _cache_dir() -> Path:
    d = os.environ.get("QUANTLINEAR_CPU_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "quantlinear-cpu"


def _cpu_tag() -> str:
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + ":" + hashlib.sha1(flags.encode()).hexdigest()[:12]


def load(name: str) -> "ctypes.CDLL | str":
    """The loaded library for ``csrc/<name>.c``, or a string saying why it is unavailable."""
    with _lock:
        if name not in _cache:
            _cache[name] = _build_and_load(name)
        return _cache[name]


def _build_and_load(name: str) -> "ctypes.CDLL | str":
    if os.environ.get("QUANTLINEAR_CPU_NO_NATIVE", "") not in ("", "0"):
        return "native kernels disabled by QUANTLINEAR_CPU_NO_NATIVE"
    if platform.system() != "Linux":
        return f"native kernels are built on Linux only, not {platform.system()}"
    src = _CSRC / f"{name}.c"
    if not src.is_file():
        return f"source {src} is missing"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return "no C compiler (cc/gcc) on PATH to build the native kernel"
    import torch  # noqa: F401  (loads torch's libgomp first, so ours resolves to it)

    key = hashlib.sha1(src.read_bytes() + " ".join([cc, *_FLAGS, _cpu_tag()]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"{name}-{key}.so"
    if not out.is_file():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
            os.close(fd)
            r = subprocess.run([cc, *_FLAGS, "-o", tmp, str(src)], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                os.unlink(tmp)
                return f"building {src.name} with {cc} failed: {r.stderr.strip()[-300:]}"
            os.replace(tmp, out)  # atomic: concurrent builders race harmlessly
        except (OSError, subprocess.SubprocessError) as e:
            return f"building {src.name} failed: {e}"
    try:
        return ctypes.CDLL(str(out))
    except OSError as e:
        return f"loading {out} failed: {e}"
