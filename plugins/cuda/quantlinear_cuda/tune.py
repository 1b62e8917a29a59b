"""Launch configurations of the CUDA plugin: per GPU architecture (``sm90``), layer shape and M bucket.

The tuner, its cache and the problem key are shared (:mod:`quantlinear_triton.tune`, whose
docstring gives the lookup order); this module is the CUDA *space* it is parameterized by:
``sm<major><minor>`` table keys, the heuristic and the candidates below (shaped after H100
measurements, ``tuned/sm90.json``), and the switches ``QUANTLINEAR_CUDA_TUNE``,
``QUANTLINEAR_CUDA_TUNE_CACHE`` (``~/.cache/quantlinear/cuda-tune-<arch>.json``) and
``QUANTLINEAR_CUDA_DQMM``.

Kernels a configuration can name: ``gemv`` (CUDA cores, decode), ``gemv16`` (the same for 2/4/8-bit
codes and fp16 activations, dequantizing two codes per instruction in fp16x2, and for 2/4-bit codes
and bf16 activations, in bf16x2 with fp32 products -- ``pair: False``: the same schedule with the
exact fp32 decode, no inline assembly; one row of x per
program: a configuration with ``BM`` > 1 runs ``gemv`` with those tiles), ``dot`` (tensor
cores, dequantize in registers), ``dot16`` (``dot`` with the fp16x2 dequantization) and ``dqmm`` (large M only: dequantize the layer into a temporary
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


def gemv16_fits(p: Problem) -> bool:
    """The paired GEMV applies: 2/4/8-bit codes with fp16 or 2/4-bit codes with bf16 activations, runs of VPW/2 slabs in one group."""
    from quantlinear_triton.packing import GEMV16_BITS, slabs_per_group

    return p.bits in GEMV16_BITS.get(getattr(torch, p.dtype), ()) and slabs_per_group(p.bits, p.slab, p.group_size, p.K) % (16 // p.bits) == 0


def dot16_fits(p: Problem) -> bool:
    """The paired-fp16 tensor-core kernel applies: 4-bit codes, fp16 activations, groups of >= 4 slabs."""
    return p.bits == 4 and p.dtype == "float16" and gemv16_fits(p)


def mmv_device(props: "_device.DeviceProps") -> bool:
    """The tensor-core decode kernel (Gluon, ``mma.sync``) compiles for this device: sm_80+ CUDA, not the interpreter's
    simulated device (the Gluon kernel does not interpret), not ROCm.  Int and float layers ask the same question."""
    return not props.simulated and not props.hip and props.capability >= (8, 0)


def mmv_fits(p: Problem, props: "_device.DeviceProps") -> bool:
    """The tensor-core decode kernel (``kernel: mmv``, :mod:`quantlinear_triton.kernels_mmv`) applies: 32-word slabs,
    4-bit codes (fp16 / bf16) or 8-bit codes (fp16), groups of 128 x 2^k channels (or one per row), an sm_80+ GPU
    running compiled kernels (not the interpreter's simulated device: the Gluon kernel does not interpret)."""
    from quantlinear_triton import kernels_mmv

    return (mmv_device(props)
            and kernels_mmv.fits(p.bits, p.slab, p.group_size, p.K, getattr(torch, p.dtype), 1))


def mmv_config(p: Problem, M: int, sms: int, **over) -> dict:
    """``mmv``'s default: 4 warps of 16 rows sharing each K tile's staged activations, K split until there are about
    2 programs per multiprocessor.  On an H100 (``benchmarks/mmv_check.py --sweep``, 24 cells: six shapes, M = 2, 4,
    8, 16; results/h100-mmv-sweep4-2026-11-26.json) it is within 7.4% of the best candidate everywhere, 2.5% on
    geometric mean; 8 warps at the same rule were 7% / 30% off."""
    cfg = {"kernel": "mmv", "R": 1, "warps": 4, "pf": True}
    cfg.update(over)
    if "split_k" not in cfg:
        cfg["split_k"] = _split_for(-(-p.N // (16 * cfg["R"] * cfg["warps"])), 2 * sms, mmv_steps(p))
    return cfg


def mmv_steps(p: Problem) -> int:
    """``mmv``'s K steps: 256 channels each (one 4-bit slab, two 8-bit ones), what its split-K divides."""
    return -(-p.K // 256)


def mmv_candidates(p: Problem, M: int, sms: int) -> list[dict]:
    """What the tuner measures of ``mmv``: 8 and 4 warps at their default split, half and twice it, and 2 row groups
    per warp; at M = 9..16 each of them also with ``evict_first`` weight loads, and the 4-warp default without the
    prefetch (:func:`quantlinear_triton.tune.with_evict_first`); at M = 1 also the warps splitting K (``ks``,
    :func:`quantlinear_triton.tune.mmv_ks_candidates`), which won on the short-K shapes
    (``results/h100-mmv-ks-2026-11-26.txt``); at M <= 2 also ``ks`` with 8 warps, each step's
    activation loads issued first (``xh``) and 96 or 128 registers a thread (``maxnreg``), which won on 4096 x 4096
    (``results/h100-session14-probes-2026-11-26.txt``).  (``early`` twins of the fastest come in a second round,
    :func:`refine`.)"""
    out = []
    for warps in (8, 4):
        d = mmv_config(p, M, sms, warps=warps)
        out.append(d)
        for sp in (d["split_k"] // 2, d["split_k"] * 2):
            if 1 <= sp and mmv_steps(p) // sp >= 2:
                out.append(dict(d, split_k=sp))
    out.append(mmv_config(p, M, sms, R=2, warps=4))
    if M > 8:  # two token tiles: each also with evict_first weight loads, and the 4-warp default without the prefetch
        out = _tune.with_evict_first(out + [mmv_config(p, M, sms, pf=False)])
    if M == 1 and p.bits == 4:
        out.extend(_tune.mmv_ks_candidates())
    if M <= 2 and p.bits == 4:  # 8 warps splitting K with the step's activations loaded first, under a register budget
        out.extend({"kernel": "mmv", "R": 1, "warps": 8, "pf": False, "split_k": 1, "ks": True, "xh": True, "maxnreg": r}
                   for r in (96, 128))
    return _tune.unique(out)


#: the tuner's second round: ``early`` twins of the fastest ``mmv`` configurations, and their cluster twins where the
#: current device runs clusters
refine = _tune.mmv_refine


def tc_fits(p: Problem) -> bool:
    """The large-M tensor-core kernel (``kernel: tc``, :mod:`quantlinear_triton.kernels_tc`) applies: fp16/bf16, a
    word's codes split into an even number of planes (every width but 6 bits)."""
    return p.dtype in ("float16", "bfloat16") and (32 // p.bits) % 2 == 0


def tc_config(p: Problem, M: int, sms: int, **over) -> dict:
    """The tc kernel's measured default: 128 x 128 tiles, a 256-channel k-step, 8 warps, 2 stages, paired
    dequantization (fp16x2; bf16x2 for bf16), split-K 2 when the output tiles do not fill the GPU once."""
    cfg = {"kernel": "tc", "BN": 128, "BM": 128, "BK": 256, "warps": 8, "stages": 2, "group_m": 8,
           "dq": 2 if p.dtype == "bfloat16" else 1, "prefetch": 1, "split_k": 1}
    cfg.update(over)
    if "split_k" not in over and -(-p.N // cfg["BN"]) * -(-M // cfg["BM"]) < sms:
        cfg["split_k"] = 2
    return cfg


def wg_fits(p: Problem, props: "_device.DeviceProps") -> bool:
    """The Hopper prefill kernel (``kernel: wg``, :mod:`quantlinear_triton.kernels_wg`) applies: an sm_90 GPU running
    compiled kernels (wgmma is Hopper's alone; the Gluon kernel does not interpret), 4-bit codes in 32-word slabs,
    groups of 128 x 2^k channels (or one per row), fp16 / bf16 activations, K a multiple of 8 (TMA row stride)."""
    from quantlinear_triton import kernels_wg

    return (not props.simulated and not props.hip and props.capability[0] == 9
            and kernels_wg.fits(p.bits, p.slab, p.group_size, p.K, getattr(torch, p.dtype)))


def wg_config(p: Problem, M: int, sms: int, **over) -> dict:
    """``wg``'s default: 256-token tiles (64 / 128 up to M = 64 / 128, with two code planes a step), 8 warps of 16 weight rows,
    4 activation stages, K split until the output tiles cover the GPU once.  On an H100 (fp16, W4 g128; CUDA graphs;
    ``benchmarks/wg_variants.py``) this default is 0.99-1.09x cuBLAS fp16's time at M = 256 on five of the six
    benchmark shapes (1.4-1.5x on 4096 x 4096, where split-K's reduction costs more than it saves: the tuned table
    takes 128-token tiles split in two there) and 0.65-0.87x at M = 128 (1.25-1.4x on 4096 x 4096)."""
    small = M <= 128
    cfg = {"kernel": "wg", "BM": 64 if M <= 64 else 128 if small else 256, "warps": 8, "stages": 4,
           "planes": 2 if small else 1, "group_m": 8, "split_k": 1}
    cfg.update(over)
    if "split_k" not in over:
        tiles = -(-p.N // (16 * cfg["warps"])) * -(-M // cfg["BM"])
        if tiles < 0.75 * sms:
            cfg["split_k"] = max(1, min(8, p.k_tiles // 2, round(sms / tiles)))
    return cfg


#: dqmm's dequantization launch: 32 rows by one 256-channel slab tile a program.  On an H100 the pass alone took 1.05-1.12x
#: its bytes' floor where 64 rows by four tiles took 1.13-1.23x (M = 4096 layers, results/h100-dqmm-probe-2026-11-26.json;
#: 18.0 -> 15.3 us on 4096 x 4096); the whole layer at M = 4096, two steady rounds on twelve fp16 / bf16 cells, 0.7% faster
#: on average (0.95-1.03x, within the rounds' noise; h100-dqmm-launch-ab-2026-11-26.txt), outputs identical
DQMM_DEFAULT = {"kernel": "dqmm", "BN": 32, "tpp": 1, "warps": 4}


def default_config(p: Problem, M: int, props: "_device.DeviceProps", allow_dqmm: bool = True) -> dict:
    """Deterministic heuristic configuration (no measurement).

    Shaped after what tuning picked on an H100 (``tuned/sm90.json``): the CUDA-core GEMV for
    one row, ``mmv`` up to 16 rows, the tensor-core kernels with 16/64-row tiles up to 64, on
    Hopper ``wg`` from 33 to 1024 rows (``tc`` elsewhere from 65 to 512), and dequantize-then-cuBLAS
    beyond, where the product is compute-bound.
    """
    sms = props.sm_count
    b = bucket(M)
    if b == 1:
        BN = 64
        nb = -(-p.N // BN)
        if gemv16_fits(p):  # paired GEMV: 1.2-1.7x faster than the fp32 GEMV on an H100 (4-bit fp16)
            return {"kernel": "gemv16", "BM": 1, "BN": BN, "split_k": _split_for(nb, 4 * sms, p.k_tiles), "warps": 4, "stages": 3}
        return {"kernel": "gemv", "BM": 1, "BN": BN, "split_k": _split_for(nb, 4 * sms, p.k_tiles), "warps": 4, "stages": 2}
    if b <= 16 and mmv_fits(p, props):
        # the tensor-core decode kernel: 1.1-2.0x faster than dot16 / dot at M = 2..16 on an H100
        return mmv_config(p, M, sms)
    if b >= 64 and wg_fits(p, props) and (b <= 1024 or not allow_dqmm):
        # the Hopper prefill kernel (kernels_wg; H100, through the layer with the tuned table): 0.49-0.77x cuBLAS fp16
        # at M = 64, 0.59-0.73x at 128, 0.92-1.05x at 256 and 0.98-1.02x at 1024 on five of six shapes (tc: 1.3-2.0x at
        # 256); from M = 2048 dequantize-then-cuBLAS (0.97-1.11x at 4096)
        return wg_config(p, M, sms)
    if b <= 64:
        BM, BN = max(16, b), 64
        tiles = -(-M // BM) * -(-p.N // BN)
        if dot16_fits(p):  # paired-fp16 dequantization: 5-13% faster than ``dot`` at M=16 on an H100 (4-bit fp16)
            return {"kernel": "dot16", "BM": BM, "BN": BN, "split_k": _split_for(tiles, 2 * sms, p.k_tiles), "warps": 4,
                    "stages": 3, "swap": True, "group_m": 8}
        return {"kernel": "dot", "BM": BM, "BN": BN, "split_k": _split_for(tiles, 2 * sms, p.k_tiles), "warps": 4,
                "stages": 3, "swap": True, "scale_w": False, "group_m": 8}
    if tc_fits(p) and (b <= 512 or props.simulated or not allow_dqmm):
        # the large-M tensor-core kernel (kernels_tc): 1.34-1.65x cuBLAS fp16 at M=256 on an H100, where dot16 took
        # 2.2-3.0x and dequantize-then-cuBLAS 1.95-2.2x; from M=1024 dequantize-then-cuBLAS is faster (1.31-1.38x vs 1.48+)
        return tc_config(p, M, sms)
    if b <= 256 or props.simulated or not allow_dqmm:
        BM, BN = 128, 128
        tiles = -(-M // BM) * -(-p.N // BN)
        return {"kernel": "dot", "BM": BM, "BN": BN, "split_k": _split_for(tiles, sms, p.k_tiles, cap=4), "warps": 8,
                "stages": 3, "swap": True, "scale_w": False, "group_m": 8}
    return dict(DQMM_DEFAULT)


def candidates(p: Problem, M: int, props: "_device.DeviceProps", wide: bool = False) -> list[dict]:
    """Configurations :func:`tune_problem` measures for one (problem, M bucket).

    ``wide``: a larger space for offline tuning (``benchmarks/int_perf.py --stages gtune``): at M = 1
    more split-K values per tile shape (a quarter to four times the heuristic's) and, for bf16, both
    decodes of the paired GEMV at every tile shape.
    """
    sms = props.sm_count
    b = bucket(M)
    out: list[dict] = []

    def splits(programs: int, target: int, n: int = 3) -> list[int]:
        s = _split_for(programs, target, p.k_tiles)
        if wide and b == 1:
            opts = [x for x in (s // 4, s // 2, s, s * 2, s * 4) if 1 <= x <= 32 and p.k_tiles // x >= 2] or [s]
            return sorted(set(opts + [max(1, s // 2)]))
        opts = [s, max(1, s // 2), min(16, s * 2) if p.k_tiles // (s * 2) >= 2 else s]
        return sorted(set(opts[:n]))

    if b == 1 and gemv16_fits(p):
        # paired GEMV (2/4/8-bit fp16, 2/4-bit bf16): two codes per mask/or
        shapes = ((16, 4, 2), (32, 4, 2), (32, 4, 3), (64, 4, 3), (64, 4, 4), (64, 8, 3), (128, 4, 3), (128, 8, 3), (256, 8, 3))
        for BN, warps, stages in shapes:
            nb = -(-p.N // BN)
            for sp in splits(nb, 4 * sms):
                out.append({"kernel": "gemv16", "BM": 1, "BN": BN, "split_k": sp, "warps": warps, "stages": stages})
        if p.dtype == "bfloat16":
            # the same schedule with the exact fp32 decode (one mask/or and one FMA per code, no inline assembly)
            for BN, warps, stages in (shapes if wide else ((32, 4, 2), (64, 4, 3), (128, 8, 3))):
                nb = -(-p.N // BN)
                for sp in splits(nb, 4 * sms):
                    out.append({"kernel": "gemv16", "BM": 1, "BN": BN, "split_k": sp, "warps": warps, "stages": stages, "pair": False})
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
    if b <= 16 and mmv_fits(p, props):
        out.extend(mmv_candidates(p, M, sms))
    if 2 <= b <= 64 and dot16_fits(p):
        BM = max(16, b)
        # (BN=32 swapped and BN=64 unswapped compile to mma.sync on sm90; BN>=64 swapped to wgmma, which
        # ptxas reports serialized in this kernel -- measure both)
        for BN, warps, swap in ((64, 4, True), (128, 4, True), (128, 8, True), (32, 4, True), (64, 4, False)):
            tiles = -(-M // BM) * -(-p.N // BN)
            for sp in splits(tiles, 2 * sms, 2):
                out.append({"kernel": "dot16", "BM": BM, "BN": BN, "split_k": sp, "warps": warps, "stages": 3, "swap": swap, "group_m": 8})
    if b >= 64 and dot16_fits(p):
        # paired-fp16 dequantization (half the instructions per code) feeding the same tensor-core tiles
        for BM, BN, warps, stages, swap in ((64, 128, 4, 4, True), (128, 128, 8, 3, True), (64, 256, 8, 3, True),
                                            (128, 256, 8, 3, True), (128, 128, 8, 3, False)):
            if b == 64 and BM != 64:
                continue
            tiles = -(-M // BM) * -(-p.N // BN)
            sp = _split_for(tiles, sms, p.k_tiles, cap=4)
            for s_ in sorted({sp, max(1, sp // 2)}):
                out.append({"kernel": "dot16", "BM": BM, "BN": BN, "split_k": s_, "warps": warps, "stages": stages, "swap": swap,
                            "group_m": 8})
    if b >= 64:
        # tensor-core tiles up to 128 x 256, deeper pipelines (BM is the token side, BN the weight side)
        # (128 x 128 with 4 stages needs more than the 227 KB of shared memory of an H100)
        shapes = [(64, 128, 4, 4, True, False), (64, 128, 8, 4, True, False), (128, 128, 8, 3, True, False),
                  (128, 128, 8, 3, True, True), (128, 128, 8, 3, False, True),
                  (128, 64, 4, 3, False, False), (64, 256, 8, 3, True, False), (64, 256, 8, 4, True, False),
                  (128, 256, 8, 3, True, True), (128, 256, 8, 3, True, False)]
        if b == 64:
            shapes = [sh for sh in shapes if sh[0] == 64]
        for BM, BN, warps, stages, swap, scale_w in shapes:
            tiles = -(-M // BM) * -(-p.N // BN)
            sp = _split_for(tiles, sms, p.k_tiles, cap=4)
            for s in sorted({sp, max(1, sp // 2)}):
                out.append({"kernel": "dot", "BM": BM, "BN": BN, "split_k": s, "warps": warps, "stages": stages, "swap": swap,
                            "scale_w": scale_w, "group_m": 8})
    if b >= 64 and tc_fits(p):
        # the large-M tensor-core kernel: its default, 256-token tiles (64- and 128-channel k-steps), split-K 2, and
        # for bf16 the fp32 dequantization (one rounding per weight instead of two)
        M0 = max(M, b)
        out.append(tc_config(p, M0, sms))
        out.append(tc_config(p, M0, sms, BM=256, BK=64, stages=4))
        out.append(tc_config(p, M0, sms, BM=256, BK=128, stages=2))
        out.append(tc_config(p, M0, sms, split_k=2))
        if p.dtype == "bfloat16":
            out.append(tc_config(p, M0, sms, dq=0))
    if b >= 64 and wg_fits(p, props):
        # the Hopper prefill kernel: its default, 128- and 256-token tiles with one or two planes a step, split-K halved
        # and doubled
        M0 = max(M, b)
        d = wg_config(p, M0, sms)
        out.append(d)
        for BM, planes in ((128, 2), (128, 1), (256, 1), (256, 2), (64, 2)):
            out.append(wg_config(p, M0, sms, BM=BM, planes=planes))
        for sp in (d["split_k"] // 2, d["split_k"] * 2):
            if 1 <= sp <= p.k_tiles // 2:
                out.append(wg_config(p, M0, sms, split_k=sp, BM=d["BM"], planes=d["planes"]))
        # 64-token tiles under a 128-register cap (two programs a multiprocessor), whole and split along K: at M = 64
        # on an H100 0.50-0.58x cuBLAS's time on the 117 MB shapes where the uncapped tile took 0.64-1.03x
        if M0 <= 256:
            for sp in (1, 2, 4):
                if sp <= max(1, p.k_tiles // 2):
                    out.append(wg_config(p, M0, sms, BM=64, planes=2, maxnreg=128, split_k=sp))
            out.append(wg_config(p, M0, sms, BM=64, planes=2, split_k=2 if p.k_tiles >= 4 else 1))
    if b >= 64 and p.dtype != "float32" and dqmm_enabled():
        # dequantize into a temporary, then cuBLAS: wins where the GEMM is compute-bound
        out.append(dict(DQMM_DEFAULT))
        out.append({"kernel": "dqmm", "BN": 64, "tpp": 4, "warps": 4})
    return _tune.unique(out)


#: the kernel names :func:`quantlinear_triton.kernels.launch` takes (stored configurations are checked against them)
kernels = frozenset({"gemv", "gemv16", "dot", "dot16", "tc", "mmv", "wg", "dqmm"})


def config_reason(p: Problem, cfg: object) -> str | None:
    """Why a stored configuration (user cache, shipped table) cannot be used: :func:`quantlinear_triton.tune.config_reason`,
    then for ``wg`` its own tile / step / warp set (:func:`quantlinear_triton.kernels_wg.config_reason`)."""
    why = _tune.config_reason(cfg, kernels)
    if why is None and cfg["kernel"] == "wg":
        from quantlinear_triton import kernels_wg

        why = kernels_wg.config_reason(cfg)
    return why


class Tuner(_tune.Tuner):
    """The shared tuner over this module's space (looked up at call time, so tests can patch it)."""

    def __init__(self) -> None:
        super().__init__(sys.modules[__name__])


TUNER = Tuner()
