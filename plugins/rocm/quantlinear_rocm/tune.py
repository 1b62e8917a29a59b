"""Launch configurations for AMD GPUs: the space the shared tuner (:mod:`quantlinear_triton.tune`) runs over.

Table keys are gfx architectures (``gfx942``); the user cache is
``~/.cache/quantlinear/rocm-tune-<arch>.json`` (``QUANTLINEAR_ROCM_TUNE_CACHE``), run-time tuning
is ``QUANTLINEAR_ROCM_TUNE``, the dequantize-then-hipBLASLt path ``QUANTLINEAR_ROCM_DQMM``.  No
table is shipped (no ``tuned/<arch>.json``): nothing was measured on AMD hardware, so until a GPU
session tunes, the deterministic :meth:`RocmSpace.default_config` runs.

What differs from the CUDA space, and why:

* **num_warps counts wavefronts.**  CDNA wavefronts have 64 lanes (Triton's ``HIPOptions``: warp
  size 64 before gfx10, 32 from gfx10 on), so the same lanes per program take half the warps
  on CDNA that they take on RDNA or NVIDIA: the GEMV runs 128 lanes (2 waves on CDNA, 4 on RDNA),
  the matrix-core kernels 256 lanes (4 waves on CDNA, 8 on RDNA).
* **LDS bounds the activation tile.**  Compiling the shared ``_dot_kernel`` for gfx90a/gfx942/
  gfx1100/gfx1201 with Triton 3.9 puts ``BM * T * e + BN * SLAB * e`` bytes in LDS (``T`` = channels
  of one K tile: 32 words x codes per word; ``e`` = activation bytes): the pipeliner stages all
  ``VPW`` activation slabs of a tile.  gfx950 (async copies on) double-buffers the activations:
  ``2 * BM * T * e + ...``.  So 128 x 128 tiles, the CUDA default beyond 64 rows, need 72 KiB and
  do not fit the 64 KiB of gfx90a/gfx942/RDNA; they fit gfx950's 160 KiB.  :func:`lds_bytes` is
  that model; every configuration here fits it, and tests/test_rocm_compile.py checks the
  compiler's own ``metadata.shared`` for the defaults of every listed architecture.
* **num_stages = 2.**  AMD's stream pipeliner uses 2 stages for a single GEMM loop (AMD's Triton
  tuning guidance; older Triton-AMD releases gained nothing from more); the CUDA space's 3 would
  only add LDS.
* **Matrix-core options** (``HIPOptions`` fields, passed to the launch by the shared kernels):
  ``matrix_instr_nonkdim`` 16 (16x16 MFMA tiles; the skinny tiles have 16 rows) or 32 in
  tuning candidates; ``waves_per_eu`` (occupancy hint; 0 = compiler's choice) 2 for the large
  tiles, {0, 2} in candidates; ``kpack`` 2 only in gfx90a/gfx942 candidates (deprecated on
  gfx950, where Triton forces 1).  RDNA's WMMA path takes none of the MFMA options.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from quantlinear_triton import tune as _tune
from quantlinear_triton.tune import Problem, bucket, split_for, unique

from . import archs
from . import device as _device

#: Wavefront lanes per program: the GEMV, and the matrix-core (dot) kernel.
GEMV_LANES, DOT_LANES = 128, 256
SLAB_WORDS = 32


def _elem(p: Problem) -> int:
    return 4 if p.dtype == "float32" else 2


def lds_bytes(arch: "archs.Arch", p: Problem, BM: int, BN: int) -> int:
    """LDS the dot kernel takes for a BM x BN tile (the model measured with Triton 3.9; see the module docstring)."""
    T = p.slab * p.vpw
    x_buffers = 2 if arch.name == "gfx950" else 1  # Triton: async copies on by default on gfx950
    return x_buffers * BM * T * _elem(p) + BN * p.slab * _elem(p)


def fit_bm(arch: "archs.Arch", p: Problem, want: int, BN: int) -> int | None:
    """The largest power-of-two BM <= ``want`` (and >= 16) whose tile fits the LDS."""
    bm = want
    while bm >= 16:
        if lds_bytes(arch, p, bm, BN) <= arch.lds:
            return bm
        bm //= 2
    return None


@lru_cache(maxsize=None)
def hip_option_names() -> frozenset[str]:
    """``HIPOptions`` fields of the installed Triton (older releases lack some options)."""
    try:
        from triton.backends.amd.compiler import HIPOptions

        return frozenset(HIPOptions.__dataclass_fields__)
    except Exception:
        return frozenset({"waves_per_eu", "matrix_instr_nonkdim", "kpack"})


def _opts(arch: "archs.Arch", nonkdim: int | None = None, waves_per_eu: int | None = None, kpack: int | None = None) -> dict:
    opts = {"waves_per_eu": waves_per_eu}
    if arch.cdna:  # MFMA-only options
        opts.update(matrix_instr_nonkdim=nonkdim, kpack=kpack if arch.kpack2 else None)
    known = hip_option_names()
    return {k: v for k, v in opts.items() if v is not None and k in known}


def _warps(arch: "archs.Arch", lanes: int) -> int:
    return max(1, lanes // arch.wave)


def _dot(arch: "archs.Arch", p: Problem, M: int, BM: int, BN: int, target: int, cap: int = 16, swap: bool = True,
         lanes: int = DOT_LANES, **opts) -> dict:
    tiles = -(-M // BM) * -(-p.N // BN)
    cfg = {"kernel": "dot", "BM": BM, "BN": BN, "split_k": split_for(tiles, target, p.k_tiles, cap=cap),
           "warps": _warps(arch, lanes), "stages": 2, "swap": swap, "scale_w": False, "group_m": 8}
    cfg.update(_opts(arch, **opts))
    return cfg


def _gemv(arch: "archs.Arch", p: Problem, b: int, BN: int, target: int, lanes: int = GEMV_LANES, split: int | None = None) -> dict:
    nb = -(-p.N // BN)
    return {"kernel": "gemv", "BM": b, "BN": BN, "split_k": split or split_for(nb, target, p.k_tiles),
            "warps": _warps(arch, lanes), "stages": 2}


def _arch(props: "_device.RocmProps") -> "archs.Arch":
    a = props.info
    if a is None:  # kernels refuse these in check(); reaching here is a bug
        raise RuntimeError(archs.triton_refusal(props.arch))
    return a


class RocmSpace(_tune.Settings):
    """The ROCm plugin's side of tuning (see the module docstring)."""

    def device_props(self, device: torch.device) -> "_device.RocmProps":
        return _device.device_props(device)

    def default_config(self, p: Problem, M: int, props: "_device.RocmProps", allow_dqmm: bool = True) -> dict:
        a, cus, b = _arch(props), props.cu_count, bucket(M)
        if b == 1:
            return _gemv(a, p, 1, 64, 4 * cus)
        if b <= 64:
            BM = fit_bm(a, p, max(16, b), 64) or 16
            return _dot(a, p, M, BM, 64, 2 * cus, nonkdim=16, waves_per_eu=0)
        if b <= 256 or props.simulated or not allow_dqmm:
            BN = 128
            BM = fit_bm(a, p, 128, BN) or 16
            return _dot(a, p, M, BM, BN, cus, cap=4, nonkdim=16, waves_per_eu=2)
        return {"kernel": "dqmm", "BN": 64, "tpp": 4, "warps": _warps(a, DOT_LANES)}

    def candidates(self, p: Problem, M: int, props: "_device.RocmProps") -> list[dict]:
        a, cus, b = _arch(props), props.cu_count, bucket(M)
        out: list[dict] = []
        if b <= 8:
            for BN in (32, 64, 128):
                for lanes in (GEMV_LANES, 2 * GEMV_LANES):
                    s = split_for(-(-p.N // BN), 4 * cus, p.k_tiles)
                    for sp in sorted({max(1, s // 2), s, min(16, s * 2) if p.k_tiles // (s * 2) >= 2 else s}):
                        out.append(_gemv(a, p, b, BN, 4 * cus, lanes=lanes, split=sp))
        if b <= 64:
            for BN in (32, 64, 128):
                BM = fit_bm(a, p, max(16, b), BN)
                if BM is None:
                    continue
                for swap in (True, False):
                    for wpe in (0, 2):
                        out.append(_dot(a, p, M, BM, BN, 2 * cus, swap=swap, nonkdim=16, waves_per_eu=wpe))
                if a.cdna and BM >= 32 and BN >= 32:
                    out.append(_dot(a, p, M, BM, BN, 2 * cus, nonkdim=32, waves_per_eu=0))
        if b >= 128:
            shapes = {(fit_bm(a, p, want, BN), BN) for BN in (64, 128, 256) for want in (64, 128, 256)}
            for BM, BN in sorted(s for s in shapes if s[0] is not None):
                for nonkdim in (16, 32):
                    for wpe in (0, 2):
                        out.append(_dot(a, p, M, BM, BN, cus, cap=4, nonkdim=nonkdim, waves_per_eu=wpe))
                if a.kpack2:
                    out.append(_dot(a, p, M, BM, BN, cus, cap=4, nonkdim=16, waves_per_eu=2, kpack=2))
        if b >= 64 and p.dtype != "float32" and self.dqmm_enabled():
            out.append({"kernel": "dqmm", "BN": 64, "tpp": 4, "warps": _warps(a, DOT_LANES)})
        return unique(out)


SPACE = RocmSpace("rocm", Path(__file__).parent / "tuned")
TUNER = _tune.Tuner(SPACE)
