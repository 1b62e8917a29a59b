"""Launch configurations of the GGUF kernels: a problem key and a space for the shared tuner.

The machinery is :mod:`quantlinear_triton.tune`'s (memory -> user cache -> shipped table -> tuning
-> heuristic); this module adds what differs for llama.cpp's block types:

* :class:`GGUFProblem`, keyed ``gguf|<type>|<dtype>|N..|K..|M..`` so that its entries can never be
  confused with the int (``w4|...``) or float (``fp|...``) kernels' in a shared cache file;
* :class:`GGUFSpace`: the deterministic default table below and the candidates tuning measures.
  Run-time tuning is **off** unless ``QUANTLINEAR_<FAMILY>_TUNE=1`` (``<FAMILY>`` is the space's
  family, e.g. ``CUDA_GGUF``): a benchmark should not spend minutes tuning on first use.  Tables
  go to ``~/.cache/quantlinear/<family>-tune-<arch>.json`` and ship as ``tuned/gguf-<arch>.json``.

Default table (per M bucket; ``units`` = SMs; written before any GPU measurement, from the
instruction counts of the kernels compiled for sm90 and H100's limits):

========  =====================================================================================
M         configuration
========  =====================================================================================
1         ``gemv16`` for fp16 activations (codes decoded as fp16 pairs, fp16x2 products), ``gemv``
          otherwise: 64 rows x 8 sub-blocks per program step (4 warps, 4 rows per thread), split-K
          until ~4 programs per unit
2..256    ``dot``: BM = max(16, M bucket) (128-row tiles from 128), split-K to ~2 programs per unit
> 256     (fp16/bf16) ``dqmm``: dequantize into a temporary, then the vendor BLAS (measured on an H100:
          ``dot`` wins clearly at M = 64 and ties at 256; dqmm is 0.82-0.97x cuBLAS at 4096);
          fp32: ``dot`` 128 x 128 (8 warps), split-K (at most 4) to ~1 program per unit
========  =====================================================================================

``gemv16`` with ``MR`` > 1 (``MR`` rows of x per program, the weights decoded once for them) is a
tuning candidate for fp16 M = 2..32; measured on an H100 it loses to ``dot`` at M = 16 (Q4_K
595 vs 204 us on 8192x28672), so it is not a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import tune as _tune
from .gguf_packing import SUB, SUPER
from .tune import bucket, split_for, unique

#: M bucket from which fp16/bf16 layers dequantize into a temporary and call the vendor BLAS by default.
#: H100 (gguf_variants.py, 2026-11-25): at M = 64 ``dot`` takes half of dqmm's time (Q4_K 68 vs 124 us on
#: 4096x14336), at M = 256 they are within 10% either way, at M = 4096 dqmm is 0.82-0.97x cuBLAS.
DQMM_FROM = 512


@dataclass(frozen=True)
class GGUFProblem:
    """What a GGUF launch configuration depends on, besides M and the device."""

    qtype: str
    dtype: str  # "float16" | "bfloat16" | "float32"
    N: int
    K: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.qtype, self.dtype, self.N, self.K)))

    def __hash__(self) -> int:  # looked up on every call: hash once
        return self._hash

    @property
    def k_tiles(self) -> int:
        """GEMV K tiles (8 sub-blocks, 256 channels)."""
        return -(-self.K // SUPER)

    @property
    def subs(self) -> int:
        return self.K // SUB

    def key(self, b: int) -> str:
        return f"gguf|{self.qtype}|{self.dtype}|N{self.N}|K{self.K}|M{b}"


class GGUFSpace(_tune.Settings):
    """One plugin's GGUF-kernel space: its device properties and how to read them (``units``: SMs / CUs)."""

    def __init__(self, family: str, tuned_dir: Path, device_props: Callable[[torch.device], Any], *,
                 units: Callable[[Any], int], wave: int = 32) -> None:
        super().__init__(family, tuned_dir)
        self._device_props = device_props
        self.units, self.wave = units, wave

    def device_props(self, device: torch.device):
        return self._device_props(device)

    def shipped_path(self, arch: str) -> Path:
        return self.tuned_dir / f"gguf-{arch}.json"  # beside the int kernels' tables, never mixed with them

    def tuning_enabled(self) -> bool:  # off by default (see the module docstring)
        return os.environ.get(self.env_tune, "0").strip().lower() not in ("0", "off", "false", "no", "")

    def gemv(self, p: GGUFProblem, props, BN: int, warps: int = 4, split: int | None = None, kernel: str = "gemv",
             MR: int = 1, M: int = 1) -> dict:
        """A GEMV configuration (``kernel``: ``gemv``, or ``gemv16`` for fp16 with ``MR`` rows of x per program)."""
        nb = -(-p.N // BN) * -(-M // MR)
        cfg = {"kernel": kernel, "BN": BN, "split_k": split or split_for(nb, 4 * self.units(props), p.k_tiles), "warps": warps,
               "stages": 1}
        if MR > 1:
            cfg["MR"] = MR
        return cfg

    def dot(self, p: GGUFProblem, props, M: int, BM: int, BN: int, target: int, cap: int = 16, warps: int = 4,
            stages: int = 3, split: int | None = None) -> dict:
        tiles = -(-M // BM) * -(-p.N // BN)
        return {"kernel": "dot", "BM": BM, "BN": BN, "split_k": split or split_for(tiles, target, max(1, p.subs // 8), cap=cap),
                "warps": warps, "stages": stages, "group_m": 8}

    def default_config(self, p: GGUFProblem, M: int, props, allow_dqmm: bool = True) -> dict:
        u, b = self.units(props), bucket(M)
        if b == 1:
            return self.gemv(p, props, 64, kernel="gemv16" if p.dtype == "float16" else "gemv")
        if b <= 64:
            return self.dot(p, props, M, max(16, b), 128, 2 * u)
        if b >= DQMM_FROM and allow_dqmm and p.dtype != "float32" and self.dqmm_enabled() and not getattr(props, "simulated", False):
            return {"kernel": "dqmm", "BN": 64, "spp": 8, "warps": 4}
        return self.dot(p, props, M, 128, 128, u, cap=4, warps=8)

    def candidates(self, p: GGUFProblem, M: int, props) -> list[dict]:
        u, b = self.units(props), bucket(M)
        out: list[dict] = []
        if b <= 4:
            for BN, warps in ((32, 2), (64, 4), (128, 4), (128, 8), (256, 8)):
                base = split_for(-(-p.N // BN), 4 * u, p.k_tiles)
                for sp in sorted({max(1, base // 2), base, min(16, base * 2)}):
                    out.append(self.gemv(p, props, BN, warps, sp))
                if p.dtype == "float16" and b == 1:
                    out.append(self.gemv(p, props, BN, warps, base, kernel="gemv16"))
                    if warps == 4:  # fp16 sums over a sub-block's words too (16 products per fp16 sum)
                        out.append(dict(self.gemv(p, props, BN, warps, base, kernel="gemv16"), hsum=True))
        if p.dtype == "float16" and 2 <= b <= 32:  # several rows of x per program: weights decoded once for them
            for MR, BN in sorted({(min(b, 4), 32), (min(b, 8), 16)}):
                out.append(self.gemv(p, props, BN, 4, kernel="gemv16", MR=MR, M=M))
        if 2 <= b <= 64:
            for BN, warps in ((64, 4), (128, 4), (128, 8), (256, 8)):
                for BM in sorted({16, max(16, b)}):
                    out.append(self.dot(p, props, M, BM, BN, 2 * u, warps=warps))
        if b >= 64:
            for BM, BN, warps in ((64, 128, 4), (128, 128, 8), (128, 256, 8), (64, 256, 8)):
                out.append(self.dot(p, props, M, BM, BN, u, cap=4, warps=warps))
            if p.dtype != "float32" and self.dqmm_enabled():
                out.append({"kernel": "dqmm", "BN": 64, "spp": 8, "warps": 4})
        return unique(out)


def make_tuner(space: GGUFSpace) -> _tune.Tuner:
    return _tune.Tuner(space)


__all__ = ["GGUFProblem", "GGUFSpace", "make_tuner"]
