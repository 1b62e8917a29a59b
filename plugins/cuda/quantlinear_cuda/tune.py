"""Launch configurations: per GPU architecture, layer shape and M bucket; tuned, cached on disk.

A configuration picks the kernel (``gemv`` or ``dot``: this is the M dispatch) and its tile
sizes, split-K, warps and pipeline stages.  Lookup order for (arch, problem, M bucket):

1. this process's memory;
2. the user cache file ``~/.cache/quantlinear/cuda-tune-<arch>.json`` (override the path with
   ``QUANTLINEAR_CUDA_TUNE_CACHE=/path.json``, or disable the file with ``=off``);
3. the table shipped with the plugin for that architecture (``tuned/<arch>.json``, measured
   with :func:`tune_problem` on that GPU);
4. tuning now, on the first call of that shape and bucket (``QUANTLINEAR_CUDA_TUNE``, on by
   default on a real GPU; ``0``/``off`` disables it; it never runs while a CUDA graph is being
   captured), written back to the user cache so later processes reuse it;
5. :func:`default_config`, a deterministic heuristic (what tests and tuning-off runs get).

Kernels a configuration can name: ``gemv`` (CUDA cores, decode), ``dot`` (tensor cores,
dequantize in registers) and ``dqmm`` (large M only: dequantize the layer into a temporary
float weight, then cuBLAS; the temporary lives for one call; ``QUANTLINEAR_CUDA_DQMM=0``
forbids it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import device as _device

ENV_TUNE = "QUANTLINEAR_CUDA_TUNE"
ENV_CACHE = "QUANTLINEAR_CUDA_TUNE_CACHE"
#: "0" forbids the dequantize-then-cuBLAS path (it allocates a temporary float weight per call)
ENV_DQMM = "QUANTLINEAR_CUDA_DQMM"
CACHE_VERSION = 1

M_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def bucket(M: int) -> int:
    for b in M_BUCKETS:
        if M <= b:
            return b
    return M_BUCKETS[-1]


@dataclass(frozen=True)
class Problem:
    """What a launch configuration depends on, besides M and the device."""

    bits: int
    slab: int
    group_size: int
    has_zeros: bool
    dtype: str  # "float16" | "bfloat16" | "float32"
    N: int
    K: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.bits, self.slab, self.group_size, self.has_zeros, self.dtype, self.N, self.K)))

    def __hash__(self) -> int:  # looked up on every call: hash once
        return self._hash

    @property
    def vpw(self) -> int:
        return 32 // self.bits

    @property
    def k_tiles(self) -> int:
        return -(-self.K // (self.slab * self.vpw))

    def key(self, b: int) -> str:
        gs = "ch" if self.group_size >= self.K else str(self.group_size)
        return f"w{self.bits}|s{self.slab}|g{gs}|{'asym' if self.has_zeros else 'sym'}|{self.dtype}|N{self.N}|K{self.K}|M{b}"


def _pow2_at_least(v: float) -> int:
    p = 1
    while p < v:
        p *= 2
    return p


def _split_for(programs: int, target: int, k_tiles: int, cap: int = 16) -> int:
    """Smallest power-of-two split reaching ``target`` programs, keeping >= 2 K tiles per split."""
    split = 1
    while programs * split < target and split < cap and k_tiles // (split * 2) >= 2:
        split *= 2
    return split


def dqmm_enabled() -> bool:
    return os.environ.get(ENV_DQMM, "1").strip().lower() not in ("0", "off", "false", "no")


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
    uniq, seen = [], set()
    for c in out:
        k = json.dumps(c, sort_keys=True)
        if k not in seen:
            seen.add(k)
            uniq.append(c)
    return uniq


# ---- the cache -------------------------------------------------------------------------------
def tuning_enabled() -> bool:
    return os.environ.get(ENV_TUNE, "1").strip().lower() not in ("0", "off", "false", "no", "")


def cache_path(arch: str) -> Path | None:
    v = os.environ.get(ENV_CACHE)
    if v is not None:
        if v.strip().lower() in ("", "0", "off", "none", "false"):
            return None
        return Path(v).expanduser()
    return Path.home() / ".cache" / "quantlinear" / f"cuda-tune-{arch}.json"


def shipped_path(arch: str) -> Path:
    return Path(__file__).parent / "tuned" / f"{arch}.json"


def _short(cfg: dict) -> str:
    order = ("kernel", "BM", "BN", "split_k", "warps", "stages", "swap", "scale_w", "tpp")
    return " ".join(f"{k}={cfg[k]}" for k in order if k in cfg)


def _read(path: Path | None) -> dict[str, dict]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION:
            return {}
        return {k: v["config"] if "config" in v else v for k, v in data.get("configs", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


class Tuner:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._fast: dict[tuple, dict] = {}
        self._by_m: dict[tuple, dict] = {}  # (problem, exact M, device index) -> settled config
        self._tables: dict[str, tuple[dict, dict]] = {}  # arch -> (user, shipped)
        self._timings: dict[str, dict] = {}

    def clear(self) -> None:
        with self._lock:
            self._fast.clear()
            self._by_m.clear()
            self._tables.clear()

    def _table(self, arch: str) -> tuple[dict, dict]:
        t = self._tables.get(arch)
        if t is None:
            t = (_read(cache_path(arch)), _read(shipped_path(arch)))
            self._tables[arch] = t
        return t

    def lookup(self, props: "_device.DeviceProps", p: Problem, M: int) -> tuple[dict | None, str]:
        key = p.key(bucket(M))
        user, shipped = self._table(props.arch)
        if key in user:
            return user[key], "cache"
        if key in shipped:
            return shipped[key], "shipped"
        return None, "none"

    def get(self, device: torch.device, p: Problem, M: int, run: Callable[[dict], object] | None = None) -> dict:
        cfg = self._by_m.get((p, M, device.index))
        if cfg is not None:
            return cfg
        cfg = self._get(device, p, M, run)
        if (device, p, bucket(M)) in self._fast and len(self._by_m) < 65536:
            self._by_m[(p, M, device.index)] = cfg
        return cfg

    def _get(self, device: torch.device, p: Problem, M: int, run: Callable[[dict], object] | None) -> dict:
        b = bucket(M)
        fk = (device, p, b)
        cfg = self._fast.get(fk)
        if cfg is not None:
            return cfg
        with self._lock:
            cfg = self._fast.get(fk)
            if cfg is not None:
                return cfg
            props = _device.device_props(device)
            if props.simulated:  # interpreter / simulated device: the deterministic default only
                cfg = self._fast[fk] = default_config(p, M, props)
                return cfg
            cfg, _ = self.lookup(props, p, M)
            settled = True
            if cfg is None:
                if run is not None and self._may_tune(device):
                    cfg = self.tune(props, p, M, run)
                else:
                    cfg = default_config(p, M, props)
                    # tuning is on but blocked right now (graph capture): decide again later
                    settled = not (tuning_enabled() and device.type == "cuda" and not _device.interpreting())
            if settled:
                self._fast[fk] = cfg
            return cfg

    @staticmethod
    def _may_tune(device: torch.device) -> bool:
        if not tuning_enabled() or device.type != "cuda" or _device.interpreting():
            return False
        try:
            if torch.cuda.is_current_stream_capturing():
                return False
        except Exception:
            return False
        return not torch.compiler.is_compiling()

    def tune(self, props: "_device.DeviceProps", p: Problem, M: int, run: Callable[[dict], object],
             cands: list[dict] | None = None, persist: bool = True) -> dict:
        """Time every candidate with ``run(cfg)`` (L2 flushed between calls); keep the fastest."""
        from triton.testing import do_bench

        b = bucket(M)
        best, best_t, results = None, float("inf"), []
        for cfg in cands if cands is not None else candidates(p, M, props):
            try:
                run(cfg)  # compile + warm
                torch.cuda.synchronize()
                t = do_bench(lambda: run(cfg), warmup=5, rep=25, return_mode="median")
            except Exception as e:  # out of resources, unsupported shape...
                results.append({"config": cfg, "error": f"{type(e).__name__}: {str(e)[:160]}"})
                continue
            results.append({"config": cfg, "ms": t})
            if t < best_t:
                best, best_t = cfg, t
        if best is None:
            best = default_config(p, M, props)
        key = p.key(b)
        with self._lock:
            user, _ = self._table(props.arch)
            user[key] = best
            self._timings[key] = {"best_us": best_t * 1e3, "results": results}
            if persist:
                self._write(props)
        return best

    def _write(self, props: "_device.DeviceProps") -> None:
        path = cache_path(props.arch)
        if path is None:
            return
        user, _ = self._table(props.arch)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            old = {}
            if path.is_file():
                try:
                    old = json.loads(path.read_text()).get("configs", {})
                except ValueError:
                    old = {}
            configs = dict(old)
            for k, v in user.items():
                entry = {"config": v}
                if k in self._timings:
                    entry["best_us"] = round(self._timings[k]["best_us"], 2)
                    entry["measured"] = [[_short(r["config"]), round(r["ms"] * 1e3, 2) if "ms" in r else r.get("error")]
                                         for r in self._timings[k]["results"]]
                elif k in old and "measured" in old[k]:
                    entry.update({kk: old[k][kk] for kk in ("best_us", "measured") if kk in old[k]})
                configs[k] = entry
            data = {"version": CACHE_VERSION, "arch": props.arch, "device": props.name, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "configs": configs}
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass

    def timings(self) -> dict[str, dict]:
        return dict(self._timings)


TUNER = Tuner()
