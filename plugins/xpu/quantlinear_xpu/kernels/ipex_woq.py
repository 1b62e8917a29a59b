"""XPU W4 through intel-extension-for-pytorch's weight-only linear, only where IPEX matches torch [verified: against fakes only, not on hardware].

API written against IPEX ``v2.8.10+xpu`` (``intel_extension_for_pytorch/llm/quantization/woq_linear.py``
and ``nn/utils/_quantize_convert.py``)::

    ipex.llm.quantization.IPEXWeightOnlyQuantizedLinear.from_weight(
        qweight, scales, zero_points, in_features, out_features, qconfig=None, bias=None,
        group_size=-1, g_idx=None, quant_method=QuantMethod.GPTQ_GEMM, dtype=QuantDtype.INT4)

* ``GPTQ_GEMM`` (0): qweight int32 ``[K/8, N]`` (8 codes along K, code ``8r+i`` in bits ``4i``),
  scales ``[G, N]``; the XPU implementation treats GPTQ as *symmetric* and replaces the zero
  points by the constant 8 (oneDNN) or drops them (XeTLA), so only layers whose zeros are all 8
  go this way.
* ``AWQ_GEMM`` (1): qweight int32 ``[K, N/8]`` and qzeros int32 ``[G, N/8]`` in AWQ's
  0-2-4-6-1-3-5-7 interleave, raw zero points; converted inside IPEX to GPTQ order.  Used for
  asymmetric layers (needs N % 8 == 0).

Both layouts are produced by quantlinear's own format packers.

IPEX is archived (no release after 2.8; last XPU tag 2.10.10+xpu) and every build binds one torch
minor: on import it compares versions and calls ``os._exit(127)`` on a mismatch, which no
``try`` can catch.  So this kernel reads the installed distribution's version from its metadata
first and imports IPEX only when ``major.minor`` equals torch's; otherwise it says why not.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata as md
import importlib.util
import re
from typing import Any

import torch

from quantlinear import IntWeights, LayerSpec, QuantLinear, Verdict
from quantlinear.errors import CheckpointError, NoKernelError
from quantlinear.formats import get_format

from .. import device

DIST = "intel-extension-for-pytorch"
MODULE = "intel_extension_for_pytorch"


def _major_minor(version: str) -> str | None:
    m = re.match(r"(\d+\.\d+)", version)  # IPEX's own rule (intel_extension_for_pytorch/__init__.py)
    return m.group(1) if m else None


@functools.lru_cache(maxsize=1)
def ipex_api() -> tuple[Any, str]:
    """``((IPEXWeightOnlyQuantizedLinear, QuantMethod, QuantDtype), "")`` or ``(None, why not)``.

    Cached: call ``ipex_api.cache_clear()`` after installing or removing IPEX in-process.
    """
    try:
        version = md.version(DIST)
    except md.PackageNotFoundError:
        return None, (f"{DIST} is not installed (optional; archived upstream, releases stop at 2.8 for torch 2.8): "
                      "the upstream PyTorch kernel xpu.int4 covers this")
    except Exception as e:
        return None, f"reading {DIST}'s metadata failed: {type(e).__name__}: {e}"
    tv, iv = _major_minor(torch.__version__), _major_minor(version)
    if tv is None or iv != tv:
        return None, (f"{DIST} {version} is built for torch {iv}.*, this is torch {torch.__version__}; "
                      f"IPEX terminates the process (os._exit) when imported with another torch minor, so it is not imported. "
                      f"IPEX is archived (last releases for torch <= 2.8/2.10); use xpu.int4 (upstream PyTorch)")
    if "xpu" not in version.partition("+")[2]:
        return None, f"{DIST} {version} is a CPU build; its XPU weight-only kernels need an XPU build (version '+xpu')"
    if importlib.util.find_spec(MODULE) is None:
        return None, f"{DIST} {version} is installed but its module {MODULE} is missing"
    try:
        q = importlib.import_module(MODULE + ".llm.quantization")
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # ImportError from missing oneAPI runtime libraries, SystemExit...
        return None, f"importing {MODULE} {version} failed: {type(e).__name__}: {e}"
    names = ("IPEXWeightOnlyQuantizedLinear", "QuantMethod", "QuantDtype")
    missing = [n for n in names if not hasattr(q, n)]
    if missing:
        return None, f"{MODULE} {version} has no llm.quantization.{', '.join(missing)}"
    return tuple(getattr(q, n) for n in names), ""


class IPEXWeightOnlyLinear(QuantLinear):
    """XPU W4 through intel-extension-for-pytorch's weight-only linear, only where IPEX matches torch [verified: against fakes only, not on hardware]."""

    name = "xpu.ipex"
    priority = 20
    device_families = frozenset({"xpu"})
    bits = frozenset({4})
    group_sizes = frozenset({32, 64, 128, -1})
    # bf16 is not claimed: IPEX's XeTLA path converts scales and bias to fp16.
    dtypes = frozenset({torch.float16})
    needs_whole_groups = True
    verified = device.VERIFIED

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        ok, why = device.xpu_available()
        if not ok:
            return Verdict.no(why)
        if spec.in_features % 8:
            return Verdict.no(f"in_features={spec.in_features} is not a multiple of 8 (IPEX packs 8 codes per int32 along K)")
        if not spec.scheme.sym and spec.out_features % 8:
            return Verdict.no(f"asymmetric layers go through IPEX's AWQ path, which needs out_features % 8 == 0 (got {spec.out_features})")
        api, why = ipex_api()
        return Verdict.no(why) if api is None else Verdict.yes()

    def prepare(self, w: IntWeights) -> None:
        api, why = ipex_api()
        if api is None:
            raise NoKernelError(f"layer {self.spec.name!r}: kernel {self.name}: {why}")
        linear_cls, quant_method, quant_dtype = api
        K, N, dt = self.in_features, self.out_features, self.spec.dtype
        group = self.spec.group_size if self.spec.num_groups > 1 else -1
        zmin, zmax = int(w.zeros.min()), int(w.zeros.max())
        if zmin == zmax == 8:
            t = get_format("gptq").pack(w, dataclasses.replace(self.spec, format="gptq"))
            mod = linear_cls.from_weight(t["qweight"], t["scales"].to(dt), None, K, N, qconfig=None, bias=None,
                                         group_size=group, g_idx=None, quant_method=quant_method.GPTQ_GEMM, dtype=quant_dtype.INT4)
        else:
            if zmin < 0 or zmax > 15:
                raise CheckpointError(f"layer {self.spec.name!r}: zero points {zmin}..{zmax} do not fit IPEX's 4-bit AWQ zeros")
            if N % 8:
                raise CheckpointError(f"layer {self.spec.name!r}: asymmetric zeros need out_features % 8 == 0 for IPEX's AWQ path")
            t = get_format("awq").pack(w, dataclasses.replace(self.spec, format="awq"))
            mod = linear_cls.from_weight(t["qweight"], t["scales"].to(dt), t["qzeros"], K, N, qconfig=None, bias=None,
                                         group_size=group, g_idx=None, quant_method=quant_method.AWQ_GEMM, dtype=quant_dtype.INT4)
        self.ipex_linear = mod

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return self.ipex_linear(x)
