"""Launch configurations of the float kernels: a problem key and a space for the shared tuner.

The machinery is :mod:`quantlinear_triton.tune`'s (memory -> user cache -> shipped table -> tuning
-> heuristic); this module adds what differs for the float schemes:

* :class:`FPProblem`, keyed ``fp|<element>|<scale>|s<slab>|<dtype>|N..|K..|M..`` so that its
  entries can never be confused with the int kernels' (``w4|...``) in a shared cache file;
* :class:`FPSpace`: the deterministic default table below and the candidates tuning measures.
  Run-time tuning of the float kernels is **off** unless ``QUANTLINEAR_<FAMILY>_TUNE=1``
  (``<FAMILY>`` is the space's family, e.g. ``CUDA_FP``): nothing has been measured on a GPU yet,
  and a benchmark should not spend minutes tuning on first use.  Tables go to
  ``~/.cache/quantlinear/<family>-tune-<arch>.json`` and ship as ``tuned/fp-<arch>.json``.

Default table (per M bucket; ``units`` = SMs or CUs; shaped after the int kernels' H100 table where not measured):

========  =====================================================================================
M         configuration
========  =====================================================================================
1..16     ``mmv`` (:mod:`.kernels_mmv`, tensor cores) for fp16 MXFP4 / NVFP4 where the space's ``mmv`` predicate takes
          the device (CUDA sm_80+): :meth:`FPSpace.mmv_config`; a layer without ``mmv_sigma`` takes the rows below
1         ``gemv``: BN=64 rows, split-K until ~4 programs per unit, 128 lanes; ``gemv16`` (the
          paired-fp16 decode with fp16 sums of 4 products) instead for fp16 E2M1/E0M4 and
          hardware-decoded E4M3 (sm89+) where the space has ``paired_fp16`` (CUDA): 4-bit codes
          with BN=128 rows and 256 lanes and split-K until ~8 programs per unit (measured on an H100:
          the best of a BN / split / warps sweep on the benchmark shapes; MX's 32-slabs used BN=64 /
          128 lanes until their scale path became one integer multiply-add, after which 128 rows
          were 1-6% faster); FP8 with ``gemv``'s tiles
2..512    ``tc`` (:mod:`.fp_kernels_tc`, the register-A wgmma kernel) where the space's ``tc`` predicate takes
          the device (CUDA: Hopper, where it was measured) and the activations are fp16 / bf16:
          :meth:`FPSpace.tc_config` (H100, MXFP4 / NVFP4 / MXFP8 / FPW8A16, two shapes: 0.7-1.5x the time of the
          ``dot`` kernel at M = 4..32, e.g. NVFP4 M = 16 38.5 us instead of 72.1 us on 4096 x 14336; 0.7-1.2x
          cuBLAS fp16 at M = 64, 1.0-1.15x at M = 128, 1.4-1.6x at M = 256, where ``dot`` took 0.7-2.1x, 1.1-3.9x,
          1.9-4.0x and ``dqmm`` 2.3-2.9x)
2..64     otherwise ``dot`` with SWAP (W x^T): BM=max(16, M bucket), BN=64, split-K to ~2 programs per unit
65..128   otherwise ``dot`` ``large_tile`` (CUDA 128x128, fp32 64x128; shrunk to fit ``max_shared``),
          split-K (at most 4) to ~1 program per unit
> 128     otherwise (and from 1024 rows on CUDA) ``dqmm`` (dequantize into a temporary, then cuBLAS; 1.4-1.6x
          cuBLAS at M = 1024, where ``tc`` took 1.6-2.1x) where the space has ``dqmm`` (CUDA), the device is
          real and ``QUANTLINEAR_<FAMILY>_DQMM`` / ``QUANTLINEAR_CUDA_DQMM`` is not 0; else the large ``dot``
========  =====================================================================================

``gemv16`` options: ``psum`` 4 (default) or 1 (every fp16 product converted to fp32 on its own);
``fold`` 1 (default) / 0: with 4-bit activations (MX E2M1, NVFP4) whose blocks are the weight's, the
per-call path quantizes them into unscaled values + block scales and the GEMV folds the activation
scale into the weight's (``fp_kernels.fold_fits``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import tune as _tune
from .fp_packing import E0M4, E2M1, E4M3_NV, ELEMENT_NAMES
from .tune import bucket, split_for, unique

_SCALE_NAMES = {0: "row", 1: "e8m0", 2: "e4m3"}


@dataclass(frozen=True)
class FPProblem:
    """What a float launch configuration depends on, besides M and the device."""

    elem: int
    scale: int
    slab: int
    bits: int
    dtype: str  # "float16" | "bfloat16" | "float32"
    N: int
    K: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.elem, self.scale, self.slab, self.bits, self.dtype, self.N, self.K)))

    def __hash__(self) -> int:  # looked up on every call: hash once
        return self._hash

    @property
    def tile_k(self) -> int:
        return self.slab * (32 // self.bits)

    @property
    def k_tiles(self) -> int:
        return -(-self.K // self.tile_k)

    def key(self, b: int) -> str:
        return f"fp|{ELEMENT_NAMES[self.elem]}|{_SCALE_NAMES[self.scale]}|s{self.slab}|{self.dtype}|N{self.N}|K{self.K}|M{b}"


def dot_shared_bytes(p: FPProblem, BM: int, BN: int) -> int:
    """Shared memory / LDS of the dot kernel with one pipeline stage of activations (measured model:
    every plane's activation slab of a tile, plus one plane of weights; Triton 3.9, gfx942 and sm90/2)."""
    e = 4 if p.dtype == "float32" else 2
    return BM * p.tile_k * e + BN * p.slab * e


class FPSpace(_tune.Settings):
    """One plugin's float-kernel space: its device properties and how to read them.

    ``units(props)``: SMs / CUs; ``wave(props)``: lanes per warp/wavefront; ``max_shared(props)``:
    bytes one program may use (None: no limit applied); ``large_tile``: the dot tile beyond 64 rows.
    """

    def __init__(self, family: str, tuned_dir: Path, device_props: Callable[[torch.device], Any], *,
                 units: Callable[[Any], int], wave: Callable[[Any], int] = lambda p: 32,
                 max_shared: Callable[[Any], int | None] = lambda p: None, large_tile: tuple[int, int] = (128, 128),
                 stages: int = 3, extra: Callable[[Any, dict], dict] | None = None, paired_fp16: bool = False,
                 dqmm: bool = False, dqmm_envs: tuple[str, ...] = (), tc: Callable[[Any], bool] | None = None,
                 mmv: Callable[[Any], bool] | None = None) -> None:
        super().__init__(family, tuned_dir)
        #: where the tensor-core decode kernel (:mod:`.kernels_mmv`, ``kernel: mmv``) takes MXFP4 fp16 layers of up to 16
        #: rows: a predicate of the device properties (CUDA sm_80+, compiled)
        self.mmv = mmv or (lambda props: False)
        #: where the tensor-core kernel (:mod:`.fp_kernels_tc`, register-A wgmma) is the default for 2..512 rows and a
        #: tuning candidate: a predicate of the device properties (the devices it was measured on)
        self.tc = tc or (lambda props: False)
        #: ``gemv16`` (PTX fp16x2 decode) is the M = 1 default for fp16 4-bit codes
        self.paired_fp16 = paired_fp16
        #: dequantize-then-BLAS may be chosen for large M; ``dqmm_envs``: more switches that forbid it with "0"
        self.dqmm, self.dqmm_envs = dqmm, tuple(dqmm_envs)
        self._device_props = device_props
        self.units, self.wave, self.max_shared, self.large_tile, self.stages = units, wave, max_shared, large_tile, stages
        self.extra = extra or (lambda props, cfg: cfg)

    #: what :func:`.fp_kernels.launch` and :func:`.fp_ops.run_fp_gemm` take (stored configurations are checked against it)
    kernels = frozenset({"gemv", "gemv16", "dot", "tc", "dqmm", "mmv"})

    def device_props(self, device: torch.device):
        return self._device_props(device)

    def shipped_path(self, arch: str) -> Path:
        return self.tuned_dir / f"fp-{arch}.json"  # beside the int kernels' tables, never mixed with them

    def tuning_enabled(self) -> bool:  # off by default (see the module docstring)
        return os.environ.get(self.env_tune, "0").strip().lower() not in ("0", "off", "false", "no", "")

    def dqmm_enabled(self) -> bool:
        off = ("0", "off", "false", "no")
        return self.dqmm and all(os.environ.get(e, "1").strip().lower() not in off for e in (self.env_dqmm, *self.dqmm_envs))

    def gemv16_default(self, p: FPProblem) -> bool:
        return self.paired_fp16 and p.dtype == "float16" and p.elem in (E2M1, E0M4, E4M3_NV)

    def _warps(self, props, lanes: int) -> int:
        return max(1, lanes // self.wave(props))

    def _fit(self, p: FPProblem, props, BM: int, BN: int) -> int:
        limit = self.max_shared(props)
        while limit is not None and BM > 16 and dot_shared_bytes(p, BM, BN) > limit:
            BM //= 2
        return BM

    def gemv(self, p: FPProblem, props, BM: int, BN: int, split: int | None = None, lanes: int = 128,
             kernel: str = "gemv", per_unit: int = 4) -> dict:
        nb = -(-p.N // BN)
        return {"kernel": kernel, "BM": BM, "BN": BN, "split_k": split or split_for(nb, per_unit * self.units(props), p.k_tiles),
                "warps": self._warps(props, lanes), "stages": 2}

    def dot(self, p: FPProblem, props, M: int, BM: int, BN: int, target: int, cap: int = 16, swap: bool = True,
            lanes: int = 128) -> dict:
        BM = self._fit(p, props, BM, BN)
        tiles = -(-M // BM) * -(-p.N // BN)
        cfg = {"kernel": "dot", "BM": BM, "BN": BN, "split_k": split_for(tiles, target, p.k_tiles, cap=cap),
               "warps": self._warps(props, lanes), "stages": self.stages, "swap": swap, "group_m": 8}
        return self.extra(props, cfg)

    def mmv_default(self, p: FPProblem, props) -> bool:
        """``mmv`` applies to the problem: E2M1 codes with E8M0 scales per 32 (MXFP4) or E4M3 scales per 16 (NVFP4),
        fp16 activations, a device the space's ``mmv`` predicate takes.  (Per layer it also needs ``mmv_sigma``:
        :func:`.fp_packing.mx_sigma` / :func:`.fp_packing.nv_sigma`.)"""
        return (p.elem == E2M1 and (p.scale, p.slab) in ((1, 32), (2, 16)) and p.dtype == "float16"
                and self.mmv(props))

    @staticmethod
    def mmv_config(p: FPProblem, M: int, units: int, **over) -> dict:
        """``mmv``'s default: 4 warps of 16 rows, K split until there are about 4 programs per unit up to 8 rows (one
        token tile), 2 beyond; the next tile's words loaded ahead (``pf``) from 2 rows on.  On an H100
        (``benchmarks/mmv_fp_check.py --sweep``, six shapes, M = 1..16) that split was the best of half / twice it at M = 1
        on five shapes; prefetching cost 1-3% at M = 1.  Measured cells where another candidate wins ship in the table."""
        cfg = {"kernel": "mmv", "R": 1, "warps": 4, "pf": M > 1}
        cfg.update(over)
        if "split_k" not in cfg:
            per_unit = 4 if M <= 8 else 2
            cfg["split_k"] = split_for(-(-p.N // (16 * cfg["R"] * cfg["warps"])), per_unit * units, -(-p.K // 256))
        return cfg

    def default_config(self, p: FPProblem, M: int, props, allow_dqmm: bool = True, mmv: bool = True) -> dict:
        u, b = self.units(props), bucket(M)
        if b <= 16 and mmv and self.mmv_default(p, props):
            return self.mmv_config(p, M, u)
        if b == 1:
            if self.gemv16_default(p) and p.bits == 4:  # 128 rows, 256 lanes, ~8 programs per unit (H100)
                return self.gemv(p, props, 1, 128, lanes=256, kernel="gemv16", per_unit=8)
            return self.gemv(p, props, 1, 64, kernel="gemv16" if self.gemv16_default(p) else "gemv")
        if b <= 512 and p.dtype != "float32" and self.tc(props):
            return self.tc_config(p, b, u)
        if b <= 64:
            return self.dot(p, props, M, max(16, b), 64, 2 * u)
        if b >= 256 and allow_dqmm and not props.simulated and self.dqmm_enabled():
            return {"kernel": "dqmm", "BN": 64, "warps": 4}
        BM, BN = self.large_tile if p.dtype != "float32" else (self.large_tile[0] // 2, self.large_tile[1])
        return self.dot(p, props, M, BM, BN, u, cap=4, lanes=256)

    @staticmethod
    def tc_config(p: FPProblem, b: int, units: int, **over) -> dict:
        """The tc kernel's measured default (H100, fp_variants.py --tc-sweep / --split-sweep, 2026-11-26) for M bucket
        ``b``.

        Rows: 16-row tiles up to 16 rows, 64 up to 64, then all of the bucket's rows in one tile (128, or 256 with
        128-channel k-steps from M = 256).  Weight rows a program: 128 (8 warps), but 64 (4 warps) for codes other
        than 32-channel-block 4-bit ones (NVFP4, FP8) at M <= 16 and M = 128.  Split-K: the largest power of two
        (at most 8) that keeps programs x BN within 2.5 (M <= 64) or 1.2 (beyond) waves of 128-row programs -- e.g.
        at M = 256 split 4 on 14336 x 4096 (32 output tiles), 2 on 28672 x 8192, 1 on 4096 x 14336: within 18% of
        the best of 1/2/4/8 on 60 measured cells (4 shapes, MXFP4 / NVFP4 / FPW8A16, M = 16..512; at the best split
        on 50), where a split of at most 2 left the K-heavy shapes 2-4.5x behind.
        """
        wide = p.bits == 4 and p.slab >= 32
        narrow = (b <= 16 or b == 128) and not wide
        cfg = {"kernel": "tc", "BN": 64 if narrow else 128, "BM": 16 if b <= 16 else min(max(b, 64), 256),
               "BK": 256 if b <= 128 else 128, "warps": 4 if narrow else 8, "stages": 2, "group_m": 8, "prefetch": 1,
               "split_k": 1}
        tiles = -(-p.N // cfg["BN"]) * -(-b // cfg["BM"])
        budget = (2.5 if b <= 64 else 1.2) * units * 128 / cfg["BN"]
        steps = -(-p.K // cfg["BK"])
        while cfg["split_k"] < 8 and tiles * cfg["split_k"] * 2 <= budget and steps // (cfg["split_k"] * 2) >= 2:
            cfg["split_k"] *= 2
        cfg.update(over)
        return cfg

    @staticmethod
    def refine(ranked: list[dict], clusters: bool | None = None) -> list[dict]:
        """The tuner's second round: :func:`.tune.mmv_refine`'s twins of the fastest ``mmv`` configurations, and the
        ``px`` twins of the two fastest with the warps splitting K (the quantized activations read as B-register pairs,
        :func:`.kernels_mmv.reads_pairs`; the same launch for a layer that does not quantize its activations)."""
        ks = [c for c in ranked if c.get("kernel") == "mmv" and c.get("ks") and not c.get("px")][:2]
        return _tune.unique(_tune.mmv_refine(ranked, clusters) + [dict(c, px=True) for c in ks])

    def candidates(self, p: FPProblem, M: int, props) -> list[dict]:
        u, b = self.units(props), bucket(M)
        out: list[dict] = []
        if b <= 8:
            for BN in (16, 32, 64, 128):
                base = split_for(-(-p.N // BN), 4 * u, p.k_tiles)
                for sp in sorted({max(1, base // 2), base, min(16, base * 2)}):
                    out.append(self.gemv(p, props, b, BN, sp))
                    if self.gemv16_default(p):
                        out.append(self.gemv(p, props, 1, BN, sp, kernel="gemv16"))
        if 2 <= b <= 64:
            for BN, swap, lanes in ((32, True, 128), (64, True, 128), (128, True, 128), (128, True, 256), (64, False, 128)):
                out.append(self.dot(p, props, M, max(16, b), BN, 2 * u, swap=swap, lanes=lanes))
        if b >= 64:
            for BM, BN, lanes in ((64, 64, 128), (64, 128, 128), (128, 128, 256), (128, 64, 256), (64, 256, 256)):
                for swap in (True, False):
                    out.append(self.dot(p, props, M, BM, BN, u, cap=4, swap=swap, lanes=lanes))
            if self.dqmm_enabled():
                out.append({"kernel": "dqmm", "BN": 64, "warps": 4})
        if b <= 16 and self.mmv_default(p, props):
            for warps in (4, 8):
                d = self.mmv_config(p, M, u, warps=warps)
                out += [d, dict(d, split_k=max(1, d["split_k"] // 2)), dict(d, split_k=d["split_k"] * 2)]
            out += [self.mmv_config(p, M, u, R=2), self.mmv_config(p, M, u, pf=False)]
            if M > 8:  # two token tiles: each also with evict_first weight loads (as one tile always has)
                out = _tune.with_evict_first(out)
            if M == 1:  # the warps splitting K (ks), no split over programs: won at M = 1 on the short-K shapes
                # (results/h100-mmv-fp-ks-2026-11-26.json, h100-mmv-nvfp4-ks-2026-11-26.json)
                out += _tune.mmv_ks_candidates()
            if p.scale == 2:  # NVFP4: its scale load named (``sv``), so that the second round tries the other one
                out = [_tune.with_scale_load(c) for c in out]
        if 2 <= b <= 512 and p.dtype != "float32" and self.tc(props):
            base = self.tc_config(p, b, u)
            out += [base, dict(base, BN=64, warps=4), dict(base, BN=128, warps=8), dict(base, stages=3),
                    dict(base, split_k=1 if base["split_k"] > 1 else 2)]
            out += [dict(base, BM=64, BK=256)] if b >= 64 else [dict(base, BM=64)]
        return unique(out)


def make_tuner(space: FPSpace) -> _tune.Tuner:
    return _tune.Tuner(space)


__all__ = ["FPProblem", "FPSpace", "dot_shared_bytes", "make_tuner"]
