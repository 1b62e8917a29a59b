"""AMD GPU architectures: what the kernels of this plugin need to know, and which are refused.

Keys are ``gcnArchName`` without its feature suffix (``"gfx942:sramecc+:xnack-"`` -> ``gfx942``).
Sources (README.md lists versions): Triton's AMD backend (``third_party/amd/backend/compiler.py``:
``HIPOptions`` -- ``waves_per_eu``, ``matrix_instr_nonkdim``, ``kpack`` (forced to 1 on gfx950),
warp size 32 for gfx10+ and 64 before; ``lib/TritonAMDGPUToLLVM/TargetUtils.cpp``:
``deduceISAFamily``; ``python/triton/_internal_testing.py``: the targets Triton tests,
``is_hip_cdna*`` = gfx90a/gfx942/gfx950, ``is_hip_rdna3`` = gfx110x/gfx115x,
``is_hip_rdna4`` = gfx120x, ``get_hip_lds_size`` = 160 KiB on gfx950 else 64 KiB), and PyTorch's
``aten/src/ATen/native/cuda/int4mm.cu`` (``isCDNA2orLater``: gfx90a, gfx942, gfx950).
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True)
class Arch:
    name: str
    family: str  # CDNA2 | CDNA3 | CDNA4 | RDNA3 | RDNA4
    products: str
    wave: int  # lanes per wavefront (Triton's num_warps counts wavefronts)
    lds: int  # bytes of LDS one workgroup may use
    matrix: str  # "mfma" (CDNA matrix cores) | "wmma" (RDNA)
    #: kpack=2 is honoured (Triton deprecates it on gfx950 and forces 1)
    kpack2: bool = False
    #: FP8 format of the matrix cores, for a future FP8 kernel (see fp8.py)
    fp8: str | None = None
    #: aten._weight_int4pack_mm runs here (int4mm.cu isCDNA2orLater)
    tinygemm: bool = False

    @property
    def cdna(self) -> bool:
        return self.matrix == "mfma"


_CDNA = dict(wave=64, matrix="mfma")
_RDNA = dict(wave=32, matrix="wmma", lds=64 * KIB)

#: Architectures the Triton kernels get launch configurations for.
SUPPORTED: dict[str, Arch] = {a.name: a for a in (
    Arch("gfx90a", "CDNA2", "Instinct MI210/MI250/MI250X", lds=64 * KIB, kpack2=True, tinygemm=True, **_CDNA),
    Arch("gfx942", "CDNA3", "Instinct MI300X/MI300A/MI325X", lds=64 * KIB, kpack2=True, fp8="float8_e4m3fnuz", tinygemm=True, **_CDNA),
    Arch("gfx950", "CDNA4", "Instinct MI350X/MI355X", lds=160 * KIB, fp8="float8_e4m3fn", tinygemm=True, **_CDNA),
    Arch("gfx1100", "RDNA3", "Radeon RX 7900 XTX/XT, PRO W7900", **_RDNA),
    Arch("gfx1101", "RDNA3", "Radeon RX 7800 XT/7700 XT, PRO W7800", **_RDNA),
    Arch("gfx1102", "RDNA3", "Radeon RX 7600", **_RDNA),
    Arch("gfx1200", "RDNA4", "Radeon RX 9060 XT", fp8="float8_e4m3fn", **_RDNA),
    Arch("gfx1201", "RDNA4", "Radeon RX 9070 XT/9070, AI PRO R9700", fp8="float8_e4m3fn", **_RDNA),
)}

_NOT_TESTED = "not among the targets Triton's AMD backend is tested on (gfx90a/gfx942/gfx950, gfx11, gfx12)"

#: Architectures refused on purpose, with the reason.
REFUSED: dict[str, str] = {
    "gfx900": f"GCN 5 (Vega 10) has no matrix cores and is {_NOT_TESTED}",
    "gfx906": f"GCN 5 (Vega 20: MI50/MI60, Radeon VII) has no matrix cores (MFMA/WMMA); Triton's AMD backend does not "
              f"know its ISA family and it is {_NOT_TESTED}",
    "gfx908": "CDNA1 (MI100): Triton's AMD backend knows the ISA family but it is " + _NOT_TESTED
              + "; refused until validated on an MI100",
    "gfx940": "a pre-production MI300 target that LLVM and Triton's AMD backend no longer map to CDNA3 (use gfx942)",
    "gfx941": "a pre-production MI300 target that LLVM and Triton's AMD backend no longer map to CDNA3 (use gfx942)",
    "gfx1030": f"RDNA2 has no WMMA matrix instructions and is {_NOT_TESTED}",
    "gfx1031": f"RDNA2 has no WMMA matrix instructions and is {_NOT_TESTED}",
    "gfx1032": f"RDNA2 has no WMMA matrix instructions and is {_NOT_TESTED}",
    "gfx1010": f"RDNA1 has no WMMA matrix instructions and is {_NOT_TESTED}",
}


def base_arch(gcn_arch_name: str) -> str:
    """``"gfx942:sramecc+:xnack-"`` -> ``"gfx942"``."""
    return gcn_arch_name.split(":")[0].strip()


def triton_refusal(arch: str) -> str | None:
    """Why the Triton kernels do not run on ``arch``, or None when they have a table for it."""
    if arch in SUPPORTED:
        return None
    if arch in REFUSED:
        return f"{arch}: {REFUSED[arch]}"
    listed = ", ".join(SUPPORTED)
    return f"{arch}: no launch-configuration table for this architecture (tables: {listed})"


def tinygemm_refusal(arch: str) -> str | None:
    """Why ``aten._weight_int4pack_mm`` does not run on ``arch`` (ROCm build), or None."""
    a = SUPPORTED.get(arch)
    if a is not None and a.tinygemm:
        return None
    what = "RDNA (aten: 'TODO: Support RDNA')" if arch.startswith("gfx1") else "older than CDNA2"
    return (f"{arch}: aten._weight_int4pack_mm on ROCm runs only on CDNA2 or later (gfx90a, gfx942, gfx950; "
            f"int4mm.cu isCDNA2orLater); {arch} is {what}")
