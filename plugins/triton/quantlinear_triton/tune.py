"""Launch configurations: the tuner and its cache, shared by the GPU plugins.

A configuration picks the kernel (``gemv``, ``dot`` or ``dqmm``: this is the M dispatch) and its
tile sizes, split-K, warps and pipeline stages (plus backend options such as AMD's
``waves_per_eu``; see :data:`quantlinear_triton.kernels.BACKEND_OPTIONS`).  What is shared here
is the machinery; what a plugin brings is its *space* (:class:`Space`): device properties
whose ``arch`` names the table (``sm90``, ``gfx942``), the deterministic heuristic and the
candidates tuning measures, and where its switches and tables live.  Lookup order for
(arch, problem, M bucket):

1. this process's memory;
2. the user cache file ``~/.cache/quantlinear/<family>-tune-<arch>.json`` (override the path with
   ``QUANTLINEAR_<FAMILY>_TUNE_CACHE=/path.json``, or disable the file with ``=off``);
3. the table shipped with the plugin for that architecture (``tuned/<arch>.json``, measured
   with :meth:`Tuner.tune` on that GPU);
4. tuning now, on the first call of that shape and bucket (``QUANTLINEAR_<FAMILY>_TUNE``, on by
   default on a real GPU; ``0``/``off`` disables it; it never runs while a CUDA/HIP graph is
   being captured), written back to the user cache so later processes reuse it;
5. the space's ``default_config``, a deterministic heuristic (what tests and tuning-off runs get).

Kernels a configuration can name: ``gemv`` (no matrix units, decode), ``dot`` (matrix units,
dequantize in registers) and ``dqmm`` (large M only: dequantize the layer into a temporary
float weight, then the vendor BLAS; ``QUANTLINEAR_<FAMILY>_DQMM=0`` forbids it).
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from . import launch as _fast
from .runtime import interpreting

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


def split_for(programs: int, target: int, k_tiles: int, cap: int = 16) -> int:
    """Smallest power-of-two split reaching ``target`` programs, keeping >= 2 K tiles per split."""
    split = 1
    while programs * split < target and split < cap and k_tiles // (split * 2) >= 2:
        split *= 2
    return split


def mmv_ks_candidates() -> list[dict]:
    """``mmv`` with the warps of a program splitting K (``ks``: 4 or 8 warps, no split over programs): the M = 1
    candidates the int and the float tuners both offer (:mod:`.kernels_mmv`).  8 warps also with the next step's words
    loaded a step ahead (``pf``), alone and with the step's activations first under 128 registers (``xh``): on an H100
    they won int W4 28672 x 8192 (46.8 us against the row split's 48.4) and MXFP4 14336 x 4096 (14.6 against 15.5),
    where one program of 16 rows walks the long K (``results/h100-session15-probes-2026-11-27.txt``)."""
    out = [{"kernel": "mmv", "R": 1, "warps": w, "pf": False, "split_k": 1, "ks": True} for w in (4, 8)]
    return out + [{"kernel": "mmv", "R": 1, "warps": 8, "pf": True, "split_k": 1, "ks": True},
                  {"kernel": "mmv", "R": 1, "warps": 8, "pf": True, "split_k": 1, "ks": True, "xh": True, "maxnreg": 128}]


def with_evict_first(configs: list[dict]) -> list[dict]:
    """``configs`` and each ``mmv`` one again with its weight words loaded ``evict_first`` (``ef``), as one token tile
    always is: at two (M = 9..16) the activations are staged in shared memory, and the hint won or lost by shape
    (``results/h100-session15-probes-2026-11-27.txt``: 4096 x 14336 M = 16 19.8 -> 18.8 us without the prefetch,
    8192 x 28672 64.1 -> 60.6 with two row groups a warp)."""
    return configs + [dict(c, ef=True) for c in configs if c.get("kernel") == "mmv" and not c.get("ks")]


def early_twins(ranked: list[dict], top: int = 3) -> list[dict]:
    """A second tuning round (a space's ``refine``): the ``early`` 1 and 2 twins of the ``top`` fastest ``mmv``
    configurations of the first (``ranked``: fastest first), which start on their weights before waiting on the
    previous kernel (1: the first step's words loaded, 2: prefetched into L2; :mod:`.kernels_mmv`).

    Why a second round: on an H100 either won 2-7% on 25 of the 132 table entries and lost on others, by configuration
    rather than by shape, and the wins were twins of the fastest plain configurations
    (``results/h100-session16-probes-2026-11-27.txt``).  Twins of every candidate took the first-call tune of a
    5120 x 5120 layer from 19 to 42 s at M = 1 and from 22 to 48 s at M = 16 (fresh compile caches); this round of six
    from 21.5 to 27.9 s and from 23.1 to 30.3 s (§11 there).  The tuner times
    one call after a cache flush, so it sees only part of what ``early`` saves in a chain of layers; the shipped tables
    were measured in chains."""
    best = [c for c in ranked if c.get("kernel") == "mmv" and not c.get("early")][:top]
    return [dict(c, early=e) for c in best for e in (1, 2)]


def cluster_twins(ranked: list[dict], top: int = 3) -> list[dict]:
    """The ``cl`` twins (the split over programs as one thread-block cluster, :mod:`.kernels_mmv`) of the ``top``
    fastest ``mmv`` configurations that split K over programs, and the fastest's at splits 2, 3, 4 and 8.

    Why other splits too: on an H100 the cluster split won 3-13% on 7 of the 24 fp16 M = 2..16 cells of the benchmark
    shapes (17 int and float table entries in all) and lost up to 3x on others -- at the workspace split's own split
    (4096 x 14336 M = 16 at 2: 18.2 -> 16.8 us;
    4096 x 4096 M = 4 / 8 at 8) and at a smaller one (4096 x 4096 M = 16 at 4 against 8; 3072 x 12288 M = 2..8 at 3
    against 4; ``results/h100-session18-probes-2026-11-27.txt``)."""
    best = [c for c in ranked if c.get("kernel") == "mmv" and not c.get("cl")]
    out = [dict(c, cl=True) for c in best if c.get("split_k", 1) > 1][:top]
    if best:
        out += [dict(best[0], split_k=s, cl=True) for s in (2, 3, 4, 8)]
    return unique(out)


def budget_twins(ranked: list[dict], top: int = 2) -> list[dict]:
    """The register-budget twins of the ``top`` fastest row-split ``mmv`` configurations of the first round (128
    registers a thread, with and without the next step's words a step ahead, ``pf``), and the fastest's with ``pf``,
    the budget and ``early`` 2.

    Why: left to itself, the compile of a row split with ``pf`` at two token tiles keeps to 96 registers a thread and
    spills, and the prefetch lost; given 128 it takes 124, spills nothing, and wins.  On an H100 (same runs,
    ``results/h100-session21-pf16-2026-11-27.json`` and ``-register-budget-{A,B}-2026-11-27.json``): W4 M = 16 on
    14336 x 4096 20.04 us with ``pf`` and ``early`` 2, 17.19 under the budget, 18.34 for the entry without ``pf``;
    11 of 24 table entries of the benchmark shapes at M = 2..16 (int fp16 / bf16, MXFP4) took a twin, 2.3-14%
    faster, 28672 x 8192 M = 16 without ``pf`` at 120 (its entry spilled at 128)."""
    best = [c for c in ranked if c.get("kernel") == "mmv" and not c.get("ks") and not c.get("maxnreg")][:top]
    out = [t for c in best for t in (dict(c, maxnreg=128), dict(c, pf=True, maxnreg=128))]
    if best:
        out.append(dict(best[0], pf=True, maxnreg=128, early=2))
    return unique(out)


def scale_load(cfg: dict) -> bool:
    """Whether an ``mmv`` configuration reads NVFP4's scale bytes of a step as one 16-byte load a row (``sv``): as it
    says, else the default -- one load at one row group a warp (``R`` 1), four 4-byte loads beyond."""
    return bool(cfg.get("sv", int(cfg.get("R", 1)) == 1))


def with_scale_load(cfg: dict) -> dict:
    """An NVFP4 ``mmv`` configuration with its scale load named (:func:`scale_load`); other configurations
    unchanged."""
    if cfg.get("kernel") != "mmv" or "sv" in cfg:
        return cfg
    return dict(cfg, sv=scale_load(cfg))


def scale_load_twins(ranked: list[dict], top: int = 3) -> list[dict]:
    """The other scale load (``sv`` flipped) of the ``top`` fastest ``mmv`` configurations that name one (NVFP4's,
    :func:`with_scale_load`).

    Why: which load wins depends on the configuration, not the shape, and by a lot.  On an H100 (same runs,
    ``results/h100-session22-probes-2026-11-27.txt``) the 16-byte load took 4096 x 14336 M = 1 with 4 warps splitting
    K and ``xh`` from 17.5 to 14.7 us and lost 2.4 us without ``xh``; at two row groups a warp (28672 x 8192 M = 1)
    the four 4-byte loads were 51.3 us against 66.0."""
    best = [c for c in ranked if c.get("kernel") == "mmv" and "sv" in c][:top]
    return [dict(c, sv=not c["sv"]) for c in best]


def mmv_refine(ranked: list[dict], clusters: bool | None = None) -> list[dict]:
    """A space's second round (``refine``) for ``mmv``: :func:`early_twins`, :func:`budget_twins`,
    :func:`scale_load_twins` (NVFP4), and where the
    device runs thread-block clusters (``clusters``; None: whether the current CUDA device does,
    :func:`.launch.clusters_on`) :func:`cluster_twins` and the cluster twins of the budget twins that split K over
    programs (4096 x 14336 M = 16 took one: 16.81 -> 16.07 us)."""
    if clusters is None:
        clusters = torch.cuda.is_available() and _fast.clusters_on(torch.cuda.current_device())
    budget = budget_twins(ranked)
    out = early_twins(ranked) + budget + scale_load_twins(ranked)
    if clusters:
        out += cluster_twins(ranked) + [dict(c, cl=True) for c in budget if c.get("split_k", 1) > 1]
    return unique(out)


def unique(configs: list[dict]) -> list[dict]:
    """Configurations without repeats, first occurrence kept."""
    out, seen = [], set()
    for c in configs:
        k = json.dumps(c, sort_keys=True)
        if k not in seen:
            seen.add(k)
            out.append(c)
    return out


class Props(Protocol):
    """What the tuner reads of a device's properties (a plugin's own dataclass)."""

    name: str
    simulated: bool

    @property
    def arch(self) -> str: ...


class Space(Protocol):
    """A plugin's side of tuning (a module or an object with these attributes)."""

    def device_props(self, device: torch.device) -> Props: ...
    def default_config(self, p: Problem, M: int, props: Any, allow_dqmm: bool = True) -> dict: ...
    def candidates(self, p: Problem, M: int, props: Any) -> list[dict]: ...
    # optional: ``refine(ranked) -> list[dict]``, a second round of candidates from the first's (fastest first)
    def tuning_enabled(self) -> bool: ...
    def dqmm_enabled(self) -> bool: ...
    def cache_path(self, arch: str) -> Path | None: ...
    def shipped_path(self, arch: str) -> Path: ...


class Settings:
    """The switches and table locations of one plugin's tuning (``QUANTLINEAR_<FAMILY>_*``)."""

    def __init__(self, family: str, tuned_dir: Path) -> None:
        self.family = family
        self.tuned_dir = Path(tuned_dir)
        prefix = f"QUANTLINEAR_{family.upper()}"
        self.env_tune = f"{prefix}_TUNE"
        self.env_cache = f"{prefix}_TUNE_CACHE"
        #: "0" forbids the dequantize-then-BLAS path (it allocates a temporary float weight per call)
        self.env_dqmm = f"{prefix}_DQMM"

    def tuning_enabled(self) -> bool:
        return os.environ.get(self.env_tune, "1").strip().lower() not in ("0", "off", "false", "no", "")

    def dqmm_enabled(self) -> bool:
        return os.environ.get(self.env_dqmm, "1").strip().lower() not in ("0", "off", "false", "no")

    def cache_path(self, arch: str) -> Path | None:
        v = os.environ.get(self.env_cache)
        if v is not None:
            if v.strip().lower() in ("", "0", "off", "none", "false"):
                return None
            return Path(v).expanduser()
        return Path.home() / ".cache" / "quantlinear" / f"{self.family}-tune-{arch}.json"

    def shipped_path(self, arch: str) -> Path:
        return self.tuned_dir / f"{arch}.json"

    #: the kernel names the space's launchers take (None: not checked)
    kernels: frozenset[str] | None = None

    def config_reason(self, p: Problem, cfg: object) -> str | None:
        """Why a stored configuration of ``p`` cannot be used (:func:`config_reason`), or None."""
        return config_reason(cfg, self.kernels)


#: options that must be powers of two (tile sizes, warps per program, row groups per warp) and their largest values
_POW2_LIMITS = {"BM": 1024, "BN": 1024, "BK": 1024, "warps": 16, "R": 4}
#: other integer options and their ranges
_INT_RANGES = {"split_k": (1, 256), "stages": (1, 8), "group_m": (1, 64), "tpp": (1, 64), "planes": (1, 2), "maxnreg": (0, 255),
               "early": (0, 2)}


def config_reason(cfg: object, kernels: frozenset[str] | None = None) -> str | None:
    """Why ``cfg`` cannot be a launch configuration (a user's tuning cache and the shipped tables are read as data):
    not a dict, a ``kernel`` outside ``kernels`` (None: any name), a tile size, warp count or row-group count that is
    not a power of two in range, a split / stage count out of range, or an option that is not a number; else None.
    The kernels check what is theirs beyond this (they fall back where a configuration does not fit the layer)."""
    if not isinstance(cfg, dict):
        return f"not a configuration: {cfg!r}"
    kind = cfg.get("kernel")
    if not isinstance(kind, str) or (kernels is not None and kind not in kernels):
        return f"kernel={kind!r} is none of {sorted(kernels)}" if kernels is not None else f"kernel={kind!r}"
    for key, v in cfg.items():
        if key == "kernel" or isinstance(v, bool):
            continue
        if not isinstance(v, int):
            return f"{key}={v!r} is not an integer"
        if key in _POW2_LIMITS and not (1 <= v <= _POW2_LIMITS[key] and v & (v - 1) == 0):
            return f"{key}={v} is not a power of two in [1, {_POW2_LIMITS[key]}]"
        lo, hi = _INT_RANGES.get(key, (0, 1 << 20))
        if not lo <= v <= hi:
            return f"{key}={v} is outside [{lo}, {hi}]"
    return None


def _short(cfg: dict) -> str:
    order = ("kernel", "xs", "R", "BM", "BN", "BK", "split_k", "warps", "stages", "planes", "maxnreg", "swap", "scale_w", "pair", "dq",
             "prefetch", "pf", "ks", "xh", "ef", "early", "cl", "sv", "px", "tpp", "waves_per_eu",
             "matrix_instr_nonkdim", "kpack")
    return " ".join(f"{k}={cfg[k]}" for k in order if k in cfg)


def _read(path: Path | None) -> dict[str, dict]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION:
            return {}
        # (an entry that is not a configuration stays as it is: the lookup rejects it alone, not the whole file)
        return {k: v.get("config", v) if isinstance(v, dict) else v for k, v in data.get("configs", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


class Tuner:
    """Launch configurations of one plugin, per (device, problem, M): see the module docstring."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self._lock = threading.RLock()
        self._fast: dict[tuple, dict] = {}
        self._by_m: dict[tuple, dict] = {}  # (problem, exact M, device index) -> settled config
        self._tables: dict[str, tuple[dict, dict]] = {}  # arch -> (user, shipped)
        self._timings: dict[str, dict] = {}
        self._rejected: set[tuple[str, str]] = set()  # (key, source) of stored entries skipped (warned once)

    def clear(self) -> None:
        with self._lock:
            self._fast.clear()
            self._by_m.clear()
            self._tables.clear()

    # the space's answers, for callers that hold only the tuner
    def device_props(self, device: torch.device):
        return self.space.device_props(device)

    def default_config(self, p: Problem, M: int, props, allow_dqmm: bool = True) -> dict:
        return self.space.default_config(p, M, props, allow_dqmm=allow_dqmm)

    def dqmm_enabled(self) -> bool:
        return self.space.dqmm_enabled()

    def _table(self, arch: str) -> tuple[dict, dict]:
        t = self._tables.get(arch)
        if t is None:
            t = (_read(self.space.cache_path(arch)), _read(self.space.shipped_path(arch)))
            self._tables[arch] = t
        return t

    def lookup(self, props: Props, p: Problem, M: int) -> tuple[dict | None, str]:
        """The stored configuration of ``p`` at M's bucket: the user's cache first, then the shipped table.  An entry the
        space rejects (``config_reason``: a hand-edited or corrupt cache) is skipped with a warning, once."""
        key = p.key(bucket(M))
        user, shipped = self._table(props.arch)
        check = getattr(self.space, "config_reason", None)
        for table, source in ((user, "cache"), (shipped, "shipped")):
            if key in table:
                cfg = table[key]
                why = check(p, cfg) if check is not None else None
                if why is None:
                    return cfg, source
                if (key, source) not in self._rejected:
                    self._rejected.add((key, source))
                    warnings.warn(f"quantlinear: ignoring the {source} launch configuration for {key}: {why}",
                                  RuntimeWarning, stacklevel=2)
        return None, "none"

    def settled(self, p: Problem, x: torch.Tensor) -> dict | None:
        """The configuration already settled for ``x``'s M and device (no dqmm), or None: one dict lookup."""
        cfg = self._by_m.get((p, x.shape[0], x.get_device()))  # get_device(): an int (-1: CPU), no torch.device built
        if cfg is not None and cfg["kernel"] != "dqmm":
            return cfg
        return None

    def get(self, device: torch.device, p: Problem, M: int, run: Callable[[dict], object] | None = None) -> dict:
        di = device.index if device.index is not None else (-1 if device.type == "cpu" else torch.cuda.current_device())
        cfg = self._by_m.get((p, M, di))
        if cfg is not None:
            return cfg
        cfg = self._get(device, p, M, run)
        if (device, p, bucket(M)) in self._fast and len(self._by_m) < 65536:
            self._by_m[(p, M, di)] = cfg
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
            props = self.space.device_props(device)
            if props.simulated:  # interpreter / simulated device: the deterministic default only
                cfg = self._fast[fk] = self.space.default_config(p, M, props)
                return cfg
            cfg, _ = self.lookup(props, p, M)
            settled = True
            if cfg is None:
                if run is not None and self._may_tune(device):
                    cfg = self.tune(props, p, M, run)
                else:
                    cfg = self.space.default_config(p, M, props)
                    # tuning is on but blocked right now (graph capture): decide again later
                    settled = not (self.space.tuning_enabled() and device.type == "cuda" and not interpreting())
            if settled:
                self._fast[fk] = cfg
            return cfg

    def _may_tune(self, device: torch.device) -> bool:
        if not self.space.tuning_enabled() or device.type != "cuda" or interpreting():
            return False
        try:
            if torch.cuda.is_current_stream_capturing():
                return False
        except Exception:
            return False
        return not torch.compiler.is_compiling()

    def tune(self, props: Props, p: Problem, M: int, run: Callable[[dict], object],
             cands: list[dict] | None = None, persist: bool = True) -> dict:
        """Time every candidate with ``run(cfg)`` (L2 flushed between calls); keep the fastest."""
        from triton.testing import do_bench

        b = bucket(M)
        results: list[dict] = []

        def measure(configs):
            for cfg in configs:
                try:
                    run(cfg)  # compile + warm
                    torch.cuda.synchronize()
                    t = do_bench(lambda: run(cfg), warmup=5, rep=25, return_mode="median")
                except Exception as e:  # out of resources, unsupported shape...
                    results.append({"config": cfg, "error": f"{type(e).__name__}: {str(e)[:160]}"})
                    continue
                results.append({"config": cfg, "ms": t})

        def ranked() -> list[dict]:  # the timed results, fastest first (stable: the first of equals leads)
            return sorted((r for r in results if "ms" in r), key=lambda r: r["ms"])

        measure(cands if cands is not None else self.space.candidates(p, M, props))
        refine = getattr(self.space, "refine", None)
        if cands is None and refine is not None:  # the space's second round, from the first one's ranking
            seen = [r["config"] for r in results]
            measure([c for c in refine([r["config"] for r in ranked()]) if c not in seen])
        timed = ranked()
        best, best_t = (timed[0]["config"], timed[0]["ms"]) if timed else (self.space.default_config(p, M, props), float("inf"))
        key = p.key(b)
        with self._lock:
            user, _ = self._table(props.arch)
            user[key] = best
            self._timings[key] = {"best_us": best_t * 1e3, "results": results}
            if persist:
                self._write(props)
        return best

    def _write(self, props: Props) -> None:
        path = self.space.cache_path(props.arch)
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
