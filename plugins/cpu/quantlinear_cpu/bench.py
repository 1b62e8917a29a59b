"""The CPU plugin's benchmark runner (hook ``quantlinear_benchmark("cpu")``).

One run times, on the same random quantized weights and the same activations:

* every quantlinear CPU kernel that can implement the layer (``cpu.*``; the one ``auto``
  would pick is marked ``auto`` in the note);
* ``peer.dense_fp32``: ``F.linear`` on the fp32 dequantized weight (the baseline every ratio
  is taken against), and ``peer.dense_<dtype>`` when the benchmark dtype is not fp32;
* AutoRound's own CPU kernels on the same integer weights, when importable:
  ``peer.auto_round_torch`` (``auto_round_extension/torch/qlinear_torch.py``, AutoRound's
  ``auto_round:torch`` backend) and ``peer.ark`` (``auto_round_kernel.qlinear.QuantLinear``,
  AutoRound's ``auto_round_kernel``/"ark" backend, the one AutoRound ranks first on CPU),
  loaded exactly as AutoRound loads them: checkpoint buffers assigned, then ``post_init()``
  (which repacks into ARK's blob).  Absent packages give one "not installed" row per case.

All quantized layers are built from one ``IntWeights`` packed with quantlinear's
``gptq_v2`` format (raw zero points: AutoRound's ``auto_round`` packing, which both AutoRound
layers read; ``gptq`` v1 stores ``z - 1`` and cannot hold an asymmetric zero of 0).

Timing.  On CPU there is no separate device clock: "device time" is the eager wall time of
one call (``device_us == eager_us``), synchronous, Python dispatch included.  Each case
(K, N, M) warms every implementation up, then takes ``reps`` rounds in which every
implementation runs (after a 2 ms pause and one untimed call, so that thread pools of the
previous implementation stop spinning) ``iters`` calls, each timed on its own; the reported
time is the *minimum* single-call time.  Rounds interleave the implementations so that load from other
processes hits all of them alike, and the minimum discards calls slowed by such load: on a
shared machine noise only ever adds time, and a multi-threaded op whose thread is
descheduled waits a whole scheduler slice (~4 ms) at its barrier, which wrecks any mean.
``iters`` is capped so that one round of one implementation takes about
``extra["round_ms"]`` (default 25 ms).

Accuracy.  ``max_rel_err`` is ``max|y - ref| / max|ref|`` against ``x.float() @ W^T`` with
``W`` the fp32 dequantized reference (``IntWeights.dequantize``).  The note also carries the
ratio to ARK (``x ark``) for the same case.

Contention.  For each case the runner measures how many cores *other* processes kept busy
while it ran (``/proc/stat`` busy time minus this process's CPU time).  Above 0.25 it waits
for a quiet moment (up to ``extra["busy_wait_s"]``, default 20 s) and measures the case again
(up to ``extra["busy_retries"]``, default 2, times; the minimum over attempts stands); if
the last attempt was still contended the rows say ``busy: other processes used X cores``, so
numbers taken on a loaded machine are marked rather than silently wrong.

``floor_us`` is the packed weight size over this machine's DRAM copy bandwidth (measured
once); layers that fit in the last-level cache can run below it.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from quantlinear import LayerSpec, QuantLinear, get_scheme
from quantlinear.benchutil import DEFAULT_MS, DEFAULT_SHAPES, BenchOptions, BenchRow, random_int_weights
from quantlinear.formats import get_format

#: CPU-sized defaults, used when the options carry the (GPU-sized) core defaults.
CPU_SHAPES: tuple[tuple[int, int], ...] = ((2048, 2048), (2048, 8192), (8192, 2048))
CPU_MS: tuple[int, ...] = (1, 4, 16, 64, 256)
#: the canonical format all quantized layers are built from (see module docstring)
FORMAT = "gptq_v2"
DENSE = "peer.dense_fp32"
ARK = "peer.ark"
AR_TORCH = "peer.auto_round_torch"
#: a case measured while other processes kept more cores than this busy is retried, then marked
BUSY_CORES = 0.25


@dataclass
class _Impl:
    name: str
    kind: str  # "kernel" or "peer"
    fn: Callable[[torch.Tensor], torch.Tensor] | None
    weight_bytes: int | None = None
    note: str = ""
    x_dtype: torch.dtype | None = None  # activation dtype it is fed (None: the benchmark dtype)


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _module_bytes(m: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(m.buffers()) + list(m.parameters()) if t is not None)


def cpu_kernels() -> list[type[QuantLinear]]:
    from .plugin import quantlinear_kernels

    return list(quantlinear_kernels())


def copy_bandwidth(nbytes: int = 64 << 20) -> float:
    """DRAM copy bandwidth in bytes/s (read + write counted), best of a few copies."""
    src = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


# ---- AutoRound peers --------------------------------------------------------------------------------------
def _ark_layer(spec: LayerSpec, tensors: dict[str, torch.Tensor]) -> tuple[Any, str]:
    """ARK as AutoRound builds it (backend "auto_round_kernel", packing "auto_round"), or (None, reason)."""
    try:
        import auto_round_kernel  # noqa: F401
        from auto_round_kernel.qlinear import QuantLinear as ArkQuantLinear
    except Exception as e:  # ImportError, or a native library that fails to load
        return None, f"not installed (auto-round-lib: {type(e).__name__})"
    s = spec.scheme
    if s.bits not in (2, 4, 8):
        return None, f"ARK supports bits 2/4/8, not {s.bits}"
    if spec.in_features % spec.group_size:
        return None, "ARK needs in_features divisible by group_size"
    try:
        layer = ArkQuantLinear(s.bits, s.group_size, s.sym, spec.in_features, spec.out_features, False, weight_dtype=torch.float16)
        layer.qweight, layer.qzeros, layer.scales = tensors["qweight"], tensors["qzeros"], tensors["scales"]
        layer.post_init()
    except Exception as e:
        return None, f"ARK failed: {type(e).__name__}: {e}"[:120]
    return layer, ""


def _auto_round_torch_layer(spec: LayerSpec, tensors: dict[str, torch.Tensor]) -> tuple[Any, str]:
    """AutoRound's ``auto_round:torch`` layer (raw zero points), or (None, reason)."""
    try:
        from auto_round_extension.torch.qlinear_torch import QuantLinear as TorchQuantLinear
    except Exception as e:
        return None, f"not installed (auto-round: {type(e).__name__})"
    s = spec.scheme
    try:
        layer = TorchQuantLinear(s.bits, s.group_size, spec.in_features, spec.out_features, False)
        layer.qweight, layer.qzeros = tensors["qweight"], tensors["qzeros"]
        layer.scales = tensors["scales"].to(torch.float16)
        layer.post_init()
    except Exception as e:
        return None, f"auto_round torch failed: {type(e).__name__}: {e}"[:120]
    return layer, ""


# ---- one shape --------------------------------------------------------------------------------------------
def _impls(K: int, N: int, options: BenchOptions, seed: int) -> tuple[list[_Impl], torch.Tensor, str | None]:
    """Every implementation for one (K, N), the fp32 reference weight, and auto's pick."""
    from quantlinear import select_kernel

    scheme = get_scheme(options.scheme)
    dt = options.dtype
    w = random_int_weights(K, N, scheme, seed=seed)
    spec = LayerSpec(scheme, FORMAT, K, N, False, dt, torch.device("cpu"), False, f"bench.{K}x{N}")
    ref = w.dequantize(spec.group_size)  # fp32 [N, K]
    impls: list[_Impl] = [_Impl(DENSE, "peer", lambda x, W=ref: F.linear(x, W), ref.numel() * 4, x_dtype=torch.float32)]
    if dt != torch.float32:
        Wd = ref.to(dt)
        impls.append(_Impl(f"peer.dense_{_dtype_name(dt)}", "peer", lambda x, W=Wd: F.linear(x, W), Wd.numel() * Wd.element_size()))

    try:
        sel = select_kernel(spec, "auto", registry=_cpu_registry(), raise_on_none=False)
        auto = sel.kernel.name if sel.kernel else None
    except Exception:
        auto = None
    for k in cpu_kernels():
        verdict = k.can_implement(spec)
        if not verdict:
            continue
        layer = k.from_weights(spec, w)
        impls.append(_Impl(k.name, "kernel", layer, _module_bytes(layer), "auto" if k.name == auto else ""))

    tensors = get_format(FORMAT).pack(w, spec)
    for name, build in ((AR_TORCH, _auto_round_torch_layer), (ARK, _ark_layer)):
        layer, why = build(spec, tensors)
        impls.append(_Impl(name, "peer", layer, _module_bytes(layer) if layer is not None else None, why))
    if options.kernels:
        impls = [i for i in impls if i.name in options.kernels or i.name.split(".", 1)[-1] in options.kernels]
    return impls, ref, auto


_REG = None


def _cpu_registry():
    """A registry with this plugin alone, so ``auto`` in the notes means "auto among CPU kernels"."""
    global _REG
    if _REG is None:
        import quantlinear

        from . import plugin

        _REG = quantlinear.Registry(entry_points=False)
        _REG.register(plugin, "cpu")
    return _REG


def _time_round(fn: Callable, x: torch.Tensor, iters: int, settle: bool = False) -> float:
    """The fastest of ``iters`` individually timed calls, in microseconds.

    With ``settle``, first pause briefly and make one untimed call: a switch between
    implementations with different thread pools (torch's OpenMP, ARK's own) leaves the
    previous pool's threads spinning on the cores for a while.
    """
    best = float("inf")
    clock = time.perf_counter
    if settle:
        time.sleep(0.002)
        fn(x)
    for _ in range(iters):
        t = clock()
        fn(x)
        best = min(best, clock() - t)
    return best * 1e6


class _OtherLoad:
    """Cores kept busy by other processes between ``start()`` and ``cores()`` (Linux; else None)."""

    def start(self) -> None:
        self._t, self._busy, self._mine = time.perf_counter(), self._system_busy(), self._own_cpu()

    @staticmethod
    def _system_busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_cpu() -> float:
        t = os.times()
        return t.user + t.system

    def cores(self) -> float | None:
        busy = self._system_busy()
        if busy is None or self._busy is None:
            return None
        wall = time.perf_counter() - self._t
        return max(0.0, ((busy - self._busy) - (self._own_cpu() - self._mine)) / wall) if wall > 0 else None


def _wait_quiet(max_s: float, window_s: float = 0.5) -> None:
    """Sleep until other processes keep less than 0.1 core busy over ``window_s`` (or ``max_s`` passed)."""
    end = time.perf_counter() + max_s
    probe = _OtherLoad()
    while time.perf_counter() < end:
        probe.start()
        time.sleep(window_s)
        c = probe.cores()
        if c is None or c < 0.1:
            return


def _fmt_err(e: float | None) -> str:
    return "-" if e is None else f"{e:.1e}"


def run(options: BenchOptions) -> list[BenchRow]:
    """Time every CPU kernel and peer on ``options.shapes`` x ``options.ms``; one row per (impl, K, N, M)."""
    if not get_scheme(options.scheme).is_int:
        raise ValueError(f"the CPU benchmark covers int weight schemes; {get_scheme(options.scheme)} is not one")
    shapes = CPU_SHAPES if tuple(options.shapes) == DEFAULT_SHAPES else tuple(options.shapes)
    ms = CPU_MS if tuple(options.ms) == DEFAULT_MS else tuple(options.ms)
    extra = options.extra or {}
    reps = int(extra.get("reps", 5))
    round_s = float(extra.get("round_ms", 25.0)) / 1e3
    seed = int(extra.get("seed", 0))
    busy_retries = int(extra.get("busy_retries", 2))
    busy_wait_s = float(extra.get("busy_wait_s", 20.0))
    bw = float(extra["bandwidth"]) if "bandwidth" in extra else copy_bandwidth()
    rows: list[BenchRow] = []
    gen = torch.Generator().manual_seed(seed)
    total = len(shapes) * len(ms)
    done = 0
    with torch.inference_mode():
        for K, N in shapes:
            impls, ref, _auto = _impls(K, N, options, seed)
            packed_bytes = next((i.weight_bytes for i in impls if i.note.startswith("auto")), None)
            for M in ms:
                done += 1
                if options.progress:
                    sys.stderr.write(f"\r[quantlinear-cpu bench] {done}/{total}: K={K} N={N} M={M}".ljust(70))
                    sys.stderr.flush()
                x = torch.randn(M, K, generator=gen).to(options.dtype)
                yref = x.float() @ ref.t()
                denom = float(yref.abs().max()) or 1.0
                live = [i for i in impls if i.fn is not None]
                xs = {i.name: (x.to(i.x_dtype) if i.x_dtype is not None else x) for i in live}
                errs: dict[str, float] = {}
                iters: dict[str, int] = {}
                for i in live:  # warm up, measure error, size the rounds
                    xi = xs[i.name]
                    for _ in range(max(1, min(options.warmup, 3))):
                        y = i.fn(xi)
                    errs[i.name] = float((y.float() - yref).abs().max()) / denom
                    t1 = _time_round(i.fn, xi, 3) / 1e6
                    iters[i.name] = max(min(3, options.iters), min(options.iters, int(round_s / max(t1, 1e-7))))
                best = {i.name: float("inf") for i in live}
                load = _OtherLoad()
                for attempt in range(busy_retries + 1):
                    load.start()
                    for _ in range(reps):
                        for i in live:
                            best[i.name] = min(best[i.name], _time_round(i.fn, xs[i.name], iters[i.name], settle=True))
                    other = load.cores()
                    if other is None or other <= BUSY_CORES or attempt == busy_retries:
                        break
                    _wait_quiet(busy_wait_s)  # then measure again; the minimum over attempts stands
                ark_us = best.get(ARK)
                for i in impls:
                    t = best.get(i.name)
                    note = [i.note] if i.note else []
                    if t is not None and ark_us and i.name != ARK:
                        note.append(f"{t / ark_us:.2f}x ark")
                    if i.name in errs:
                        note.append(f"err {_fmt_err(errs[i.name])}")
                    if other is not None and other > BUSY_CORES and i.name in best:
                        note.append(f"busy: other processes used {other:.1f} cores")
                    wb = i.weight_bytes
                    rows.append(
                        BenchRow(
                            kernel=i.name, kind=i.kind, K=K, N=N, M=M, device_us=t, eager_us=t,
                            floor_us=(packed_bytes / bw * 1e6) if packed_bytes else None,
                            weight_bytes=wb, max_rel_err=errs.get(i.name), note="; ".join(note),
                        )
                    )
    if options.progress:
        sys.stderr.write("\r".ljust(70) + "\r")
    return rows


def environment() -> dict[str, Any]:
    """What the table's numbers depend on: threads, CPU, load while running."""
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "timing": "eager wall time per call = device time on CPU; min over interleaved rounds of the per-call mean",
    }
    for mod in ("auto_round", "auto_round_kernel"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception:
            info[mod] = None
    return info


def add_ark_ratios(dicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``vs_ark`` (time / ARK time for the same K, N, M) to ``add_ratios`` output."""
    ark = {(d["K"], d["N"], d["M"]): d["device_us"] for d in dicts if d["kernel"] == ARK and d["device_us"]}
    for d in dicts:
        a = ark.get((d["K"], d["N"], d["M"]))
        d["vs_ark"] = (d["device_us"] / a) if (a and d["device_us"]) else None
    return dicts
