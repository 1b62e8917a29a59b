"""Launch configurations of the CUDA plugin: per GPU architecture (``sm90``), layer shape and M bucket.

The tuner, its cache and the problem key are shared (:mod:`quantlinear_triton.tune`, whose
docstring gives the lookup order); this module is the CUDA *space* it is parameterized by:
``sm<major><minor>`` table keys, the heuristic and the candidates below (shaped after H100
measurements, ``tuned/sm90.json``), and the switches ``QUANTLINEAR_CUDA_TUNE``,
``QUANTLINEAR_CUDA_TUNE_CACHE`` (``~/.cache/quantlinear/cuda-tune-<arch>.json``) and
``QUANTLINEAR_CUDA_DQMM``.

Kernels a configuration can name: ``gemv`` (CUDA cores, decode), ``dot`` (tensor cores,
dequantize in registers) and ``dqmm`` (large M only: dequantize the layer into a temporary
float weight, then cuBLAS; the temporary lives for one call; ``QUANTLINEAR_CUDA_DQMM=0``
forbids it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from quantlinear_triton import tune as _tune
from quantlinear_triton.tune import CACHE_VERSION, M_BUCKETS, Problem, bucket  # noqa: F401
from quantlinear_triton.tune import split_for as _split_for

from . import device as _device

SETTINGS = _tune.Settings("cuda", Path(__file__).parent / "tuned")
ENV_TUNE = SETTINGS.env_tune
ENV_CACHE = SETTINGS.env_cache
#: "0" forbids the dequantize-then-cuBLAS path (it allocates a temporary float weight per call)
ENV_DQMM = SETTINGS.env_dqmm
tuning_enabled = SETTINGS.tuning_enabled
dqmm_enabled = SETTINGS.dqmm_enabled
cache_path = SETTINGS.cache_path
shipped_path = SETTINGS.shipped_path


def device_props(device: torch.device) -> "_device.DeviceProps":
    return _device.device_props(device)


def default_config(p: Problem, M: int, props: "_device.DeviceProps", allow_dqmm: bool = True) -> dict:
    """Deterministic heuristic configuration (no measurement).

    Shaped after what tuning picked on an H100 (``tuned/sm90.json``): the CUDA-core GEMV for
    one row, the tensor-core kernel with a 16/64-row tile and split-K up to 256 rows, and
    dequantize-then-cuBLAS beyond, where the product is compute-bound.
    """
    sms = props.sm_count
    b = bucket(M)
    if b == 1:
        BN = 64
        nb = -(-p.N // BN)
        return {"kernel": "gemv", "BM": 1, "BN": BN, "split_k": _split_for(nb, 4 * sms, p.k_tiles), "warps": 4, "stages": 2}
    if b <= 64:
        BM, BN = max(16, b), 64
        tiles = -(-M // BM) * -(-p.N // BN)
        return {"kernel": "dot", "BM": BM, "BN": BN, "split_k": _split_for(tiles, 2 * sms, p.k_tiles), "warps": 4,
                "stages": 3, "swap": True, "scale_w": False, "group_m": 8}
    if b <= 256 or props.simulated or not allow_dqmm:
        BM, BN = 128, 128
        tiles = -(-M // BM) * -(-p.N // BN)
        return {"kernel": "dot", "BM": BM, "BN": BN, "split_k": _split_for(tiles, sms, p.k_tiles, cap=4), "warps": 8,
                "stages": 3, "swap": True, "scale_w": False, "group_m": 8}
    return {"kernel": "dqmm", "BN": 64, "tpp": 4, "warps": 4}


def candidates(p: Problem, M: int, props: "_device.DeviceProps") -> list[dict]:
    """Configurations :func:`tune_problem` measures for one (problem, M bucket)."""
    sms = props.sm_count
    b = bucket(M)
    out: list[dict] = []

    def splits(programs: int, target: int, n: int = 3) -> list[int]:
        s = _split_for(programs, target, p.k_tiles)
        opts = [s, max(1, s // 2), min(16, s * 2) if p.k_tiles // (s * 2) >= 2 else s]
        return sorted(set(opts[:n]))

    if b <= 8:
        for BN, warps in ((16, 4), (32, 4), (64, 4), (128, 8)):
            nb = -(-p.N // BN) * -(-M // b)
            for sp in splits(nb, 4 * sms):
                out.append({"kernel": "gemv", "BM": b, "BN": BN, "split_k": sp, "warps": warps, "stages": 2})
    if b <= 64:
        BM = max(16, b)
        variants = ((64, True, 4), (128, True, 4), (128, True, 8), (256, True, 8), (32, True, 4), (64, False, 4))
        if b < 2:
            variants = ((64, True, 4), (128, True, 8))
        for BN, swap, warps in variants:
            tiles = -(-M // BM) * -(-p.N // BN)
            for sp in splits(tiles, 2 * sms, 2):
                out.append({"kernel": "dot", "BM": BM, "BN": BN, "split_k": sp, "warps": warps, "stages": 3, "swap": swap,
                            "scale_w": False, "group_m": 8})
    if b >= 128:
        shapes = [(64, 128, 4, 4, True, False), (128, 128, 8, 3, True, False), (128, 128, 8, 3, True, True),
                  (128, 128, 8, 3, False, True), (128, 64, 4, 3, False, False), (64, 256, 8, 3, True, False),
                  (128, 256, 8, 3, True, True)]
        for BM, BN, warps, stages, swap, scale_w in shapes:
            tiles = -(-M // BM) * -(-p.N // BN)
            sp = _split_for(tiles, sms, p.k_tiles, cap=4)
            out.append({"kernel": "dot", "BM": BM, "BN": BN, "split_k": sp, "warps": warps, "stages": stages, "swap": swap,
                        "scale_w": scale_w, "group_m": 8})
    if b >= 64 and p.dtype != "float32" and dqmm_enabled():
        # dequantize into a temporary, then cuBLAS: wins where the GEMM is compute-bound
        out.append({"kernel": "dqmm", "BN": 64, "tpp": 4, "warps": 4})
    return _tune.unique(out)


class Tuner(_tune.Tuner):
    """The shared tuner over this module's space (looked up at call time, so tests can patch it)."""

    def __init__(self) -> None:
        super().__init__(sys.modules[__name__])


TUNER = Tuner()
