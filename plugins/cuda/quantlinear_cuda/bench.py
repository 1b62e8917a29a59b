"""The CUDA benchmark runner behind ``quantlinear bench`` (hook ``quantlinear_benchmark("cuda")``).

In one run on one GPU it times, per (K, N, M):

* every installed kernel of the ``cuda`` family that can implement the scheme;
* peers: cuBLAS dense (``F.linear`` with an fp16/bf16 weight of the same shape,
  ``peer.cublas``); for int schemes ``aten._weight_int4pack_mm`` (``peer.int4pack_mm``, only
  where no kernel already wraps it), gemlite (``peer.gemlite``) and AutoRound's Triton layer
  (``peer.autoround_triton``) when they can be imported; for float / microscaling schemes
  (MXFP4, MXFP8, MXINT4, NVFP4, FPW8A16, FP8_STATIC) dequantize-then-matmul
  (``peer.dequant_mm``: ``FloatWeights.dequantize`` to the activation dtype on every call, the
  scheme's activation quantization (``fpquant.act_qdq``), then ``F.linear``).

Weights come from the packing format's entry in :data:`SOURCES` (a generator of random canonical
weights and the ideal byte count of the floor); another family of formats adds its entries there.

Numbers per row:

* ``device_us``: device time per call, from CUDA-graph replays of a graph that calls the
  layer once on each of several weight copies whose total size exceeds the L2 cache
  (3x L2), so every call streams its weights from HBM; the median of ``options.rounds`` (9) batches
  of about 8 ms, each after 100 ms of untimed replays, the batches of all implementations of one
  (K, N, M) taken in turns (:func:`time_interleaved`): each runs at its own steady clock under the
  power limit, and a temperature drift during the run biases no ratio.  Nine, not five: an A/A run
  (identical implementations timed as different ones, results/h100-session13-probes-2026-11-26.txt)
  saw cuBLAS fp16's batches on 4096 x 14336 at M = 1024 range over 174-215 us, and the five-batch
  medians of two identical cuBLAS timers came out 184 and 204 us (25 batches: 190 and 192);
* ``eager_us``: wall time per call of plain eager calls (launch overhead included; the median of five rounds);
* ``floor_us``: the packed weight bytes of the scheme (codes + scales (+ zeros); float schemes:
  the checkpoint's codes and scale tensors) divided by the copy bandwidth measured in the same
  run (a large device-to-device ``copy_``, bytes read plus written over time); ``weight_bytes``
  is what that implementation reads;
* ``max_rel_err``: ``max |y - ref| / max |ref|`` against the fp32 product with the fp32
  dequantized weight (``IntWeights.dequantize`` / ``FloatWeights.dequantize``), the activations
  quantized as the scheme says (``quantlinear.testing_fp.reference_act``).

``options.extra`` keys: ``format`` (checkpoint format, default ``gptq_v2`` for int schemes, the
scheme's float layout otherwise), ``copies`` (force
the number of weight copies), ``seed``, ``log`` (callable for progress lines),
``op_path`` (also time the custom-op entry point eagerly, default True).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import gc
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

from quantlinear import LayerSpec, get_scheme
from quantlinear.benchutil import BenchOptions, BenchRow, float_format_for, random_float_weights, random_int_weights
from quantlinear.formats import FLOAT_FORMATS, get_format

from . import device as _device

DENSE = "peer.cublas"


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = nbytes // 4
    a = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e-3)
    del a, b
    times.sort()
    return 2 * n * 4 / times[len(times) // 2]


def packed_bytes(K: int, N: int, scheme) -> int:
    """Ideal packed size of a layer: codes + fp16 scales (+ packed zeros when asymmetric)."""
    G = scheme.num_groups(K)
    b = K * N * scheme.bits // 8 + G * N * 2
    if not scheme.sym:
        b += G * N * scheme.bits // 8
    return b


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """How the runner makes weights of one packing format and counts the bytes of its floor."""

    make: Callable[[Any, int, int, int], Any]  # (scheme, K, N, seed) -> canonical weights, on the CPU
    floor_bytes: Callable[[Any, LayerSpec], int]  # (weights, spec) -> ideal bytes a call must read
    dequant_peer: bool = False  # time ``peer.dequant_mm`` too


def _checkpoint_bytes(w, spec: LayerSpec) -> int:
    return sum(t.numel() * t.element_size() for t in get_format(spec.format).pack(w, spec).values())


_INT = WeightSource(lambda sc, K, N, seed: random_int_weights(K, N, sc, seed=seed),
                    lambda w, spec: packed_bytes(spec.in_features, spec.out_features, spec.scheme))
_FLOAT = WeightSource(lambda sc, K, N, seed: random_float_weights(sc, K, N, seed), _checkpoint_bytes, dequant_peer=True)
#: packing format -> weight source (formats of another family, e.g. GGUF's, add their entries here)
SOURCES: dict[str, WeightSource] = {**{f: _INT for f in ("gptq", "gptq_v2", "awq")}, **{f: _FLOAT for f in FLOAT_FORMATS}}


def bench_format(scheme, options: BenchOptions) -> str:
    """The packing format benchmarked for ``scheme``: ``options.extra['format']``, else the scheme's own."""
    fmt = options.extra.get("format")
    if fmt:
        return fmt
    return "gptq_v2" if scheme.is_int else (float_format_for(scheme) or "gptq_v2")


def weights_to(w, dev: torch.device, clone: bool = False):
    """Every tensor field of canonical weights moved to ``dev`` (any weights dataclass); ``clone``: fresh copies."""
    def move(t):
        t = t.to(dev)
        return t.clone() if clone else t

    return dataclasses.replace(w, **{f.name: move(getattr(w, f.name)) for f in dataclasses.fields(w)
                                     if isinstance(getattr(w, f.name), torch.Tensor)})


class GraphTimer:
    """One CUDA graph calling every ``fn`` once, replayed in timed batches of about ``batch_ms`` on demand: the unit
    that :func:`time_graph` and :func:`time_interleaved` repeat."""

    def __init__(self, fns: list[Callable[[], Any]], batch_ms: float = 8.0):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for f in fns:
                f()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for f in fns:
                f()
        self.calls = len(fns)
        self.fns = fns  # (the graph reads their weights by address: they must outlive it)
        self.graph.replay()
        torch.cuda.synchronize()
        self._s, self._e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self.reps, self.batch_ms = 1, batch_ms
        one = self.batch() * self.calls / 1e3  # ms per replay
        self.reps = int(min(200, max(2, batch_ms / max(one, 1e-3))))

    def settle(self, ms: float) -> None:
        """About ``ms`` of untimed replays: the GPU's clock controller adapts to this workload's power before a batch."""
        for _ in range(max(1, round(self.reps * ms / max(self.batch_ms, 1e-3)))):
            self.graph.replay()

    def batch(self) -> float:
        """Device time per call (us) of one batch of ``reps`` replays."""
        self._s.record()
        for _ in range(self.reps):
            self.graph.replay()
        self._e.record()
        self._e.synchronize()
        return self._s.elapsed_time(self._e) * 1e3 / (self.reps * self.calls)


def time_graph(fns: list[Callable[[], Any]], target_ms: float = 40.0, batches: int = 5, settle_ms: float = 0.0) -> float:
    """Median device time per call (us) of CUDA-graph replays calling every ``fn`` once (after ``settle_ms`` of untimed
    replays: the clock the power limit gives this workload, see :func:`time_interleaved`)."""
    t = GraphTimer(fns, target_ms / batches)
    if settle_ms > 0:
        t.settle(settle_ms)
    res = sorted(t.batch() for _ in range(batches))
    del t
    return res[len(res) // 2]


#: untimed replays before each timed batch of :func:`time_interleaved` in the benchmark (ms)
SETTLE_MS = 100.0


def time_interleaved(timers: dict[str, GraphTimer], rounds: int = 5, settle_ms: float = 0.0) -> dict[str, float]:
    """Median device time per call (us) of each timer, its batches taken in turns with the others' (the order rotated
    every round), each batch after ``settle_ms`` of untimed replays of the same graph.

    Why: an H100 under prefill GEMMs runs at its power limit, and its clock follows the workload within milliseconds.
    Timed one after the other, the first implementation ran cold and the second hot (cuBLAS fp16 on 8192 x 28672 at
    M = 4096: 2498 and 2950 us in two runs); taken in turns without a settle, each batch ran at the clock the previous
    implementation had left (the W4 kernel, which the limit holds at ~1480 MHz where cuBLAS gets ~1250, measured
    1.20-1.28x cuBLAS on 4096 x 14336, M = 1024, against 1.10-1.12x with each at its own steady state:
    results/h100-bench-protocol-2026-11-26.txt).  Turns with a settle give each its steady state, and spread the
    temperature drift over all of them."""
    names = list(timers)
    res: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            if settle_ms > 0:
                timers[n].settle(settle_ms)
            res[n].append(timers[n].batch())
    return {n: sorted(v)[len(v) // 2] for n, v in res.items()}


def time_eager(fn: Callable[[], Any], iters: int, rounds: int = 5) -> float:
    """Wall time per call of ``iters`` eager calls and one synchronize, the median of ``rounds`` such rounds (a busy or
    throttled host moves single rounds by 2x)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    res = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        res.append((time.perf_counter() - t0) / iters * 1e6)
    return sorted(res)[len(res) // 2]


def time_host(fn: Callable[[], Any], calls: int = 200) -> float:
    """Host time per call in us: ``calls`` calls issued while the GPU is held by ``torch.cuda._sleep`` (long enough to
    outlast them), so no call waits for the device; what an eager call costs the CPU whatever the kernel takes."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(calls * 200e-6 * 2e9))  # ~200 us a call at <= 2 GHz: longer than any host call here
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t = time.perf_counter() - t0
    torch.cuda.synchronize()
    return t / calls * 1e6


def host_profile(fn: Callable[[], Any], calls: int, top: int) -> str:
    """The top ``top`` functions by own time of a cProfile of ``calls`` calls of ``fn`` (one synchronize at the end):
    where an eager call's host time goes."""
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    pr.disable()
    sio = io.StringIO()
    pstats.Stats(pr, stream=sio).sort_stats("tottime").print_stats(top)
    return sio.getvalue()


def _module_bytes(m: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(m.buffers()) + list(m.parameters()):
        if t is None or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


class _Impl:
    """One implementation under test: a way to build weight copies and call one."""

    def __init__(self, name: str, kind: str, build: Callable[[], Callable], nbytes: int, note: str = "", op_call: Callable | None = None):
        self.name, self.kind, self.build, self.nbytes, self.note, self.op_call = name, kind, build, nbytes, note, op_call


def _cuda_kernels(options: BenchOptions):
    from quantlinear import registry

    reg = registry()
    reg.load_for_family("cuda")
    return [k for k in reg.kernels() if "cuda" in k.device_families]


def _wanted(name: str, options: BenchOptions) -> bool:
    return not options.kernels or any(fnmatch.fnmatchcase(name, p) for p in options.kernels)


def _op_call(layer):
    """The custom-op entry point of a Triton layer (eager), or None."""
    if hasattr(layer, "w_slab"):
        m = layer.meta
        return lambda x: torch.ops.quantlinear_cuda.wna16_gemm(x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, m.bits,
                                                               m.group_size, m.in_features, m.slab, layer.zero_point)
    if hasattr(layer, "fp_qweight"):
        m = layer.meta
        return lambda x: torch.ops.quantlinear_cuda.fp_gemm(x, layer.fp_qweight, layer.fp_scales, layer.fp_row_scales, layer.bias,
                                                            layer.fp_act_scale, m.in_features, m.elem, m.scale, m.block, m.act,
                                                            m.act_block, layer.fp_mmv_sigma, m.mmv_mul)
    return None


def _dequant_mm(w, spec: LayerSpec, dtype):
    """``peer.dequant_mm``: dequantize to ``dtype`` on every call, quantize activations as the scheme does, ``F.linear``.

    The dequantization is ``FloatWeights.dequantize``'s computation (same ops, same order) with its
    code table built once here: building it per call copies from the host, which a CUDA graph
    capture forbids.  Activations go through ``fpquant.act_qdq`` (AutoRound's inference).
    """
    from quantlinear import fpcodes, fpquant

    four_bit = w.element in ("e2m1", "e0m4")
    lut = fpcodes.element_table(w.element, torch.float32, w.codes.device) if four_bit else None
    inv_gs = None
    if w.global_scale is not None:
        gs = w.global_scale.to(torch.float32).reshape(())
        inv_gs = torch.where(gs == 0, torch.zeros_like(gs), 1.0 / gs)
    K = spec.in_features

    def dequantize():
        v = lut[w.codes.long()] if four_bit else w.codes.view(fpcodes.FP8_DTYPES[w.element]).to(torch.float32)
        if inv_gs is not None:
            v = v * inv_gs
        return (v * w.scales.to(torch.float32).repeat_interleave(w.block_size, dim=1)[:, :K]).to(dtype)

    def call(x):
        return F.linear(fpquant.act_qdq(x, spec.scheme, w), dequantize())

    return call


def _impls(K: int, N: int, scheme, dtype, dev, w, W, options: BenchOptions, log) -> list[_Impl]:
    fmt = bench_format(scheme, options)
    spec = LayerSpec(scheme, fmt, K, N, bias=False, dtype=dtype, device=dev, name=f"bench.{K}x{N}")
    out: list[_Impl] = []
    kernels = _cuda_kernels(options)
    names = {k.name for k in kernels}
    for k in sorted(kernels, key=lambda k: (-k.priority, k.name)):
        if not _wanted(k.name, options):
            continue
        v = k.can_implement(spec)
        if not v:
            log(f"  {k.name}: skipped ({v.reason})")
            continue
        layer = k.from_weights(spec, w)
        out.append(_Impl(k.name, "kernel", lambda layer=layer: copy.deepcopy(layer), _module_bytes(layer), op_call=_op_call(layer)))
        out[-1].first = layer

    if _wanted(DENSE, options):
        Wd = W.to(dtype)
        out.append(_Impl(DENSE, "peer", lambda Wd=Wd: (lambda x, Wc=Wd.clone(): F.linear(x, Wc)), Wd.numel() * Wd.element_size(),
                         note=f"F.linear, dense {str(dtype).replace('torch.', '')} weight"))
        out[-1].first = lambda x, Wd=Wd: F.linear(x, Wd)

    if SOURCES[fmt].dequant_peer and _wanted("peer.dequant_mm", options):
        out.append(_Impl("peer.dequant_mm", "peer", lambda: _dequant_mm(weights_to(w, dev, clone=True), spec, dtype), _checkpoint_bytes(w, spec),
                         note=f"dequantize to {str(dtype).replace('torch.', '')} per call + F.linear"))
        out[-1].first = _dequant_mm(w, spec, dtype)

    if not scheme.is_int:  # the remaining peers take int weights
        return out

    if "cuda.tinygemm" not in names and _wanted("peer.int4pack_mm", options) and dtype == torch.bfloat16 and scheme.bits <= 4:
        try:
            from quantlinear_triton.packing import tinygemm_group, tinygemm_inner_k_tiles, tinygemm_nibbles, tinygemm_scales_and_zeros

            og, ikt = tinygemm_group(spec.group_size), tinygemm_inner_k_tiles(K)
            packed = torch.ops.aten._convert_weight_to_int4pack(tinygemm_nibbles(w.qweight), ikt)
            sz = tinygemm_scales_and_zeros(w, spec.group_size, og)

            def mk(packed=packed, sz=sz, og=og):
                p, z = packed.clone(), sz.clone()
                return lambda x: torch.ops.aten._weight_int4pack_mm(x, p, og, z)

            out.append(_Impl("peer.int4pack_mm", "peer", mk, packed.numel() * 4 + sz.numel() * 2))
            out[-1].first = mk()
        except Exception as e:
            log(f"  peer.int4pack_mm: skipped ({type(e).__name__}: {e})")

    if _wanted("peer.gemlite", options):
        try:
            from gemlite.core import DType, GemLiteLinearTriton

            gdt = {torch.float16: DType.FP16, torch.bfloat16: DType.BF16}[dtype]

            def mk_gl():
                gl = GemLiteLinearTriton(W_nbits=scheme.bits, group_size=spec.group_size, in_features=K, out_features=N,
                                         input_dtype=gdt, output_dtype=gdt)
                gl.pack(w.qweight, w.scales.to(dtype), w.zeros.to(dtype), bias=None)
                return gl

            gl = mk_gl()
            out.append(_Impl("peer.gemlite", "peer", mk_gl, _module_bytes(gl), note="gemlite GemLiteLinearTriton"))
            out[-1].first = gl
        except Exception as e:
            log(f"  peer.gemlite: skipped ({type(e).__name__}: {str(e)[:200]})")

    if _wanted("peer.autoround_triton", options):
        try:
            if dtype != torch.float16:
                raise RuntimeError("AutoRound's Triton layer computes in fp16 only")
            from auto_round_extension.triton.qlinear_tritonv2_zp import QuantLinear as ARQuantLinear

            from quantlinear.formats import get_format

            tensors = get_format("gptq").pack(w, LayerSpec(scheme, "gptq", K, N, dtype=dtype, device=dev))  # the _zp layer adds 1 to zeros (v1)

            def mk_ar():
                m = ARQuantLinear(scheme.bits, spec.group_size, K, N, bias=False).to(dev)
                m.qweight = tensors["qweight"].clone()
                m.qzeros = tensors["qzeros"].clone()
                m.scales = tensors["scales"].to(torch.float16).clone()
                m.g_idx = (torch.arange(K, device=dev, dtype=torch.int32) // spec.group_size)
                return m

            ar = mk_ar()
            out.append(_Impl("peer.autoround_triton", "peer", mk_ar, _module_bytes(ar), note="auto_round_extension tritonv2_zp"))
            out[-1].first = ar
        except Exception as e:
            log(f"  peer.autoround_triton: skipped ({type(e).__name__}: {str(e)[:200]})")
    return out


def _reference_act(x: torch.Tensor, w, spec: LayerSpec) -> torch.Tensor:
    """The activations as the scheme quantizes them, in fp32 (int schemes: ``x`` itself)."""
    if spec.scheme.weight_only:
        return x.float()
    from quantlinear.testing_fp import reference_act

    return reference_act(x, w, spec)


def _time_m(impls: list[_Impl], copies: list[list[Callable]], x: torch.Tensor, ref: torch.Tensor, K: int, N: int, M: int,
            floor_us: float, options: BenchOptions, log) -> list[BenchRow]:
    """One M: each implementation warmed (compiled, tuned) and checked against ``ref``, then every device time from
    :func:`time_interleaved` (batches of all implementations in turns), then each one's eager times."""
    rows, timers = [], {}
    for im, fns in zip(impls, copies):
        row = BenchRow(im.name, im.kind, K, N, M, None, None, floor_us=floor_us, weight_bytes=im.nbytes, note=im.note)
        try:
            y = im.first(x)  # warm: compiles, and tunes this M bucket if tuning is on
            torch.cuda.synchronize()
            row.max_rel_err = float((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
            if not torch.isfinite(y).all():
                row.note = (row.note + " non-finite output").strip()
            timers[im.name] = GraphTimer([lambda f=f: f(x) for f in fns])
        except Exception as e:
            row.note = (row.note + f" FAILED {type(e).__name__}: {str(e)[:160]}").strip()
        rows.append(row)
    dev_us = time_interleaved(timers, rounds=options.rounds, settle_ms=SETTLE_MS) if timers else {}
    timers.clear()
    for im, fns, row in zip(impls, copies, rows):
        if im.name not in dev_us:
            continue
        row.device_us = dev_us[im.name]
        try:
            row.eager_us = time_eager(lambda: im.first(x), options.iters)
            if im.op_call is not None and options.extra.get("op_path", True):
                op_us = time_eager(lambda: im.op_call(x), options.iters)
                row.note = (row.note + f" op-path eager {op_us:.1f}us").strip()
        except Exception as e:
            row.note = (row.note + f" FAILED {type(e).__name__}: {str(e)[:160]}").strip()
        if len(fns) > 1:
            row.note = (row.note + f" x{len(fns)} copies").strip()
    for row in rows:
        log(f"  {row.kernel:<24} M={M:<5} dev {row.device_us if row.device_us is not None else float('nan'):9.1f} us  eager "
            f"{row.eager_us if row.eager_us is not None else float('nan'):8.1f} us  floor {floor_us:7.1f}  err "
            f"{row.max_rel_err if row.max_rel_err is not None else float('nan'):.1e}")
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def run(options: BenchOptions) -> list[BenchRow]:
    """Time kernels and peers on one CUDA device; one row per (implementation, K, N, M)."""
    log = options.extra.get("log") or ((lambda s: print(s, flush=True)) if options.progress else (lambda s: None))
    dev = torch.device(options.device if str(options.device).startswith("cuda") else "cuda")
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(dev)
    torch.backends.cuda.matmul.allow_tf32 = False
    scheme = get_scheme(options.scheme)
    dtype = options.dtype
    props = _device.device_props(dev)
    bw = copy_bandwidth(dev)
    log(f"{props.name} ({props.arch}, {props.sm_count} SMs, L2 {props.l2_bytes / 2**20:.0f} MiB): copy bandwidth {bw / 1e9:.0f} GB/s")
    seed = int(options.extra.get("seed", 0))
    rows: list[BenchRow] = []
    fmt = bench_format(scheme, options)
    src = SOURCES.get(fmt)
    if src is None:
        raise ValueError(f"no benchmark weights for packing format {fmt!r} (known: {', '.join(sorted(SOURCES))})")
    for K, N in options.shapes:
        log(f"shape K={K} N={N} {scheme} {str(dtype).replace('torch.', '')}")
        spec = LayerSpec(scheme, fmt, K, N, dtype=dtype, device=dev)
        w = weights_to(src.make(scheme, K, N, seed), dev)
        W = w.dequantize(scheme.group_size_for(K)).to(dev)  # fp32 [N, K]
        floor_bytes = src.floor_bytes(w, spec)
        floor_us = floor_bytes / bw * 1e6
        gen = torch.Generator(device=dev).manual_seed(seed + K + N)
        xs = {M: torch.randn(M, K, device=dev, dtype=torch.float32, generator=gen).to(dtype) for M in options.ms}
        refs = {M: _reference_act(xs[M], w, spec) @ W.t() for M in options.ms}
        impls = _impls(K, N, scheme, dtype, dev, w, W, options, log)
        del W
        # every implementation's weight copies at once, so that each M's device times can be taken in turns
        copies = []
        for im in impls:
            copies_n = int(options.extra.get("copies") or min(64, max(1, math.ceil(3 * props.l2_bytes / max(1, im.nbytes)))))
            try:
                copies.append([im.first] + [im.build() for _ in range(copies_n - 1)])
            except Exception as e:
                log(f"  {im.name}: copies failed ({type(e).__name__}: {e})")
                copies.append([im.first])
        for M in options.ms:
            rows.extend(_time_m(impls, copies, xs[M], refs[M], K, N, M, floor_us, options, log))
        del impls, copies, xs, refs, w
        gc.collect()
        torch.cuda.empty_cache()
    return rows
