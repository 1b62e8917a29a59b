#!/usr/bin/env python3
"""One GPU session for the int kernels' speed (issue #4): checks, launch overhead, re-tuning.

    python plugins/cuda/benchmarks/int_perf.py --out DIR [--stages check,eager,tune,compare,gtune] [--keys REGEX]
    python plugins/cuda/benchmarks/int_perf.py --merge DIR/gtune.json   # into tuned/sm90.json (no GPU)

* ``check``: the paired-fp16 GEMV against the fp32 reference on large shapes; the fast launch
  path against the normal ``kernel[grid]`` path (bit-identical outputs) and inside a CUDA graph.
* ``eager``: host time per call (layer, op path, raw launch) with the fast launch path on and off.
* ``tune``: re-measure every key of the shipped table (``tuned/sm90.json``) over the current
  candidate space; writes DIR/tune.json in the shipped table's format (``best_us`` and every
  candidate's time per key, so old and new kernels are compared in the same run).
* ``compare``: device time (CUDA graphs over weight copies > L2) of the old table's config vs
  the new one for the large shapes, and cuBLAS fp16.
* ``gtune``: tuning by the benchmark's own timing -- CUDA-graph replays over rotating weight copies
  (> 150 MB, so every call reads its weights from HBM), for W4 g128 sym fp16 and bf16 and W8 g128
  sym fp16, (K, N) in :data:`GT_SHAPES`, M = 1 and 16: every candidate of
  ``quantlinear_cuda.tune.candidates(p, M, props, wide=True)`` (plus the shipped and the default
  configuration) is compiled first by ``--gtune-jobs`` worker processes in parallel (Triton's
  on-disk cache), then timed; DIR/gtune.json (the shipped table's format: ``best_us``, ``config``,
  ``measured``) is rewritten after every key, so a cut-off run keeps what it measured.  Keys in
  ``--gtune-resume`` files are skipped; ``--tune-budget`` bounds the stage's seconds.

Every stage ends with ``quantlinear_triton.launch.stats()``: direct (cached launcher) vs normal
(``kernel[grid]``) launches per kernel.  ``check,eager`` take well under 90 s on an H100.

Imports the int kernel modules directly (not through the plugin registry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

LARGE = ((4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192))
#: where make() puts tensors and gtune allocates (a CPU smoke test sets "cpu", with TRITON_INTERPRET=1)
DEV = "cuda"
ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_key(key: str):
    from quantlinear_cuda.tune import Problem

    f = key.split("|")
    bits, slab = int(f[0][1:]), int(f[1][1:])
    K, N, M = int(f[6][1:]), int(f[5][1:]), int(f[7][1:])
    g = K if f[2] == "gch" else int(f[2][1:])
    return Problem(bits, slab, g, f[3] == "asym", f[4], N, K), M


def make(p, M, copies=1, seed=0):
    """Random packed tensors of problem ``p`` (any int32 is a valid code word) and an input."""
    gen = torch.Generator(device=DEV).manual_seed(seed)
    dt = getattr(torch, p.dtype)
    KW = p.k_tiles * p.slab
    G = -(-p.K // p.group_size)
    ws = []
    for _ in range(copies):
        q = torch.randint(-2**31, 2**31 - 1, (p.N, KW), dtype=torch.int32, device=DEV, generator=gen)
        if p.bits == 3:
            q &= 0x3FFFFFFF
        s = (torch.rand(G, p.N, device=DEV, generator=gen) * 0.02 + 0.001).half()
        z = torch.randint(0, 2**p.bits, (G, p.N), device=DEV, generator=gen).to(torch.uint8) if p.has_zeros else None
        ws.append((q, s, z))
    x = torch.randn(M, p.K, device=DEV, generator=gen).to(dt)
    return ws, x


#: the launch configurations ``mmv_check.py`` and ``mmv_fp_check.py`` check for correctness: 1 / 2 / 4 row groups,
#: 4 and 8 warps, with and without the next tile's prefetch, no split and splits of 2, 3 (a remainder) and 4
MMV_CHECK_CFGS = ({"R": 1, "warps": 4, "pf": True, "split_k": 1}, {"R": 2, "warps": 4, "pf": True, "split_k": 4},
                  {"R": 1, "warps": 8, "pf": False, "split_k": 2}, {"R": 4, "warps": 8, "pf": True, "split_k": 3},
                  {"R": 1, "warps": 4, "pf": False, "split_k": 1, "ks": True},
                  {"R": 2, "warps": 8, "pf": True, "split_k": 3, "ks": True})


def mmv_script_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """The options the two ``mmv`` check scripts share, added to ``ap``, then everything parsed (``warps`` as ints)."""
    ap.add_argument("--no-check", action="store_true", help="skip the correctness block (a sweep on a warm, already checked build)")
    ap.add_argument("--warps", default="4,8", help="the grid's warps per program")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.warps = [int(w) for w in args.warps.split(",")]
    return args


def zero_point(p):
    return 0.0 if p.has_zeros else float(1 << (p.bits - 1))


def stage_check(out: Path) -> list[str]:
    from quantlinear_cuda.tune import Problem
    from quantlinear_triton import kernels as tk
    from quantlinear_triton import launch as fl
    from quantlinear_triton.packing import SlabMeta, dequantize_slabs

    lines = []
    for (K, N), asym in (((4096, 14336), False), ((14336, 4096), False), ((4096, 4096), True), ((8192, 28672), False)):
        p = Problem(4, 32, 128, asym, "float16", N, K)
        (w,), x = make(p, 1, seed=K)
        q, s, z = w
        zp = zero_point(p)
        W = dequantize_slabs(q, s, z, int(zp), SlabMeta(4, 32, 128, K, N))
        ref = x.float() @ W.t()
        x256 = torch.randn(256, K, device="cuda").half()
        ref256 = x256.float() @ W.t()
        x16 = torch.randn(16, K, device="cuda").half()
        ref16 = x16.float() @ W.t()
        for cfg in ({"kernel": "dot16", "BM": 16, "BN": 32, "split_k": 2, "warps": 4, "stages": 3, "swap": True},):
            y = tk.launch(x16, q, s, z, None, 4, 32, 128, K, zp, cfg)
            err = float((y.float() - ref16).abs().max() / ref16.abs().max())
            lines.append(f"check M=16 {cfg['kernel']:7s} BM={cfg['BM']} BN={cfg['BN']} split={cfg['split_k']} K={K} N={N} asym={asym}: "
                         f"max rel err {err:.2e} {'OK' if err < 1e-3 else 'FAIL'}")
        for cfg in ({"kernel": "gemv16", "BN": 32, "split_k": 2, "warps": 4, "stages": 3},
                    {"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 8, "stages": 3},
                    {"kernel": "gemv", "BM": 1, "BN": 32, "split_k": 2, "warps": 4, "stages": 2},
                    {"kernel": "dot16", "BM": 128, "BN": 128, "split_k": 1, "warps": 8, "stages": 3, "swap": True},
                    {"kernel": "dot16", "BM": 64, "BN": 128, "split_k": 2, "warps": 4, "stages": 4, "swap": False},
                    {"kernel": "dot", "BM": 128, "BN": 128, "split_k": 1, "warps": 8, "stages": 3, "swap": True}):
            big = cfg["kernel"].startswith("dot")
            y = tk.launch(x256 if big else x, q, s, z, None, 4, 32, 128, K, zp, cfg)
            r = ref256 if big else ref
            err = float((y.float() - r).abs().max() / r.abs().max())
            lines.append(f"check {cfg['kernel']:7s} BN={cfg['BN']} split={cfg['split_k']} K={K} N={N} asym={asym}: max rel err {err:.2e}"
                         f" {'OK' if err < 1e-3 else 'FAIL'}")
        # fast launch == normal launch, bit for bit; replays inside a graph
        for M, cfg in ((1, {"kernel": "gemv16", "BN": 32, "split_k": 2, "warps": 4, "stages": 3}),
                       (16, {"kernel": "dot16", "BM": 16, "BN": 64, "split_k": 4, "warps": 4, "stages": 3, "swap": True}),
                       (16, {"kernel": "gemv16", "BM": 16, "BN": 16, "split_k": 2, "warps": 4, "stages": 2}),
                       (3, {"kernel": "gemv16", "BM": 4, "BN": 32, "split_k": 1, "warps": 4, "stages": 2}),
                       (3, {"kernel": "gemv", "BM": 4, "BN": 32, "split_k": 2, "warps": 4, "stages": 2}),
                       (16, {"kernel": "dot", "BM": 16, "BN": 64, "split_k": 4, "warps": 4, "stages": 3, "swap": True}),
                       (256, {"kernel": "dot", "BM": 128, "BN": 128, "split_k": 1, "warps": 8, "stages": 3, "swap": True}),
                       (300, {"kernel": "dqmm", "BN": 64, "tpp": 4})):
            xm = torch.randn(M, K, device="cuda").half()
            fl._state["ok"] = False
            y0 = tk.launch(xm, q, s, z, None, 4, 32, 128, K, zp, cfg)
            fl._state.pop("ok")
            tk.launch(xm, q, s, z, None, 4, 32, 128, K, zp, cfg)  # miss: compiles/keeps
            y1 = tk.launch(xm, q, s, z, None, 4, 32, 128, K, zp, cfg)  # hit: direct launcher
            hits = len(fl._compiled)
            yg = torch.empty_like(y1)
            st = torch.cuda.Stream()
            st.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(st):
                tk.launch(xm, q, s, z, None, 4, 32, 128, K, zp, cfg, out=yg)
            torch.cuda.current_stream().wait_stream(st)
            g = torch.cuda.CUDAGraph()
            yg.fill_(float("nan"))
            with torch.cuda.graph(g):
                tk.launch(xm, q, s, z, None, 4, 32, 128, K, zp, cfg, out=yg)
            g.replay()
            torch.cuda.synchronize()
            same = torch.equal(y0, y1) and torch.equal(y0, yg) if cfg["kernel"] != "dqmm" else (y0 - y1).abs().max().item() < 1e-2
            lines.append(f"fastlaunch {cfg['kernel']} M={M} K={K}: fast==normal==graph {same} (cached kernels {hits}) {'OK' if same else 'FAIL'}")
        lines.append(fl.stats_line())
        if K == 4096 and N == 4096:
            break
    for bits, asym in ((8, False), (8, True), (2, False)):
        K, N = 4096, 14336
        p = Problem(bits, 32, 128, asym, "float16", N, K)
        (w,), x = make(p, 1, seed=bits)
        q, s, z = w
        zp = zero_point(p)
        W = dequantize_slabs(q, s, z, int(zp), SlabMeta(bits, 32, 128, K, N))
        ref = x.float() @ W.t()
        for cfg in ({"kernel": "gemv16", "BN": 64, "split_k": 2, "warps": 4, "stages": 3},
                    {"kernel": "gemv", "BM": 1, "BN": 64, "split_k": 2, "warps": 4, "stages": 2}):
            y = tk.launch(x, q, s, z, None, bits, 32, 128, K, zp, cfg)
            err = float((y.float() - ref).abs().max() / ref.abs().max())
            lines.append(f"check W{bits} {cfg['kernel']:7s} K={K} N={N} asym={asym}: max rel err {err:.2e} {'OK' if err < 1e-3 else 'FAIL'}")
    # bf16 activations: the paired GEMV (bf16x2 decode, and ``pair: False``: the fp32 decode), fp32 output
    for (K, N), bits, asym in (((4096, 14336), 4, False), ((14336, 4096), 4, True), ((4096, 4096), 2, False)):
        p = Problem(bits, 32, 128 if bits == 4 else 256, asym, "bfloat16", N, K)
        (w,), x = make(p, 1, seed=K + bits)
        q, s, z = w
        zp = zero_point(p)
        W = dequantize_slabs(q, s, z, int(zp), SlabMeta(bits, 32, p.group_size, K, N))
        ref = x.float() @ W.t()
        for cfg in ({"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 4, "stages": 3},
                    {"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 4, "stages": 3, "pair": False},
                    {"kernel": "gemv", "BM": 1, "BN": 64, "split_k": 2, "warps": 4, "stages": 2}):
            y = tk.launch(x, q, s, z, None, bits, 32, p.group_size, K, zp, cfg, out=torch.empty(1, N, device="cuda"))
            err = float((y - ref).abs().max() / ref.abs().max())
            lines.append(f"check bf16 W{bits} {tk_short(cfg)} K={K} N={N} asym={asym}: max rel err (fp32 out) {err:.2e} "
                         f"{'OK' if err < 1e-3 else 'FAIL'}")
    log("\n".join(lines))
    return lines


def tk_short(cfg: dict) -> str:
    from quantlinear_triton.tune import _short

    return _short(cfg)


def _w4_layer(K: int, N: int):
    """A CUDA W4A16 g128 layer of random weights (the plugin's class), an fp16 input row and a dense fp16 weight of the
    same shape (the F.linear peer of the eager measurements)."""
    from quantlinear import LayerSpec, get_scheme
    from quantlinear.benchutil import random_int_weights
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    sc = get_scheme("W4A16")
    w = random_int_weights(K, N, sc)
    w.qweight, w.zeros, w.scales = w.qweight.cuda(), w.zeros.cuda(), w.scales.cuda()
    layer = TritonWNA16Linear.from_weights(LayerSpec(sc, "gptq_v2", K, N, dtype=torch.float16, device=torch.device("cuda")), w)
    return layer, torch.randn(1, K, device="cuda", dtype=torch.float16), torch.randn(N, K, device="cuda", dtype=torch.float16)


def stage_eager(out: Path) -> list[str]:
    import torch.nn.functional as F

    from quantlinear_cuda import ops, tune
    from quantlinear_triton import kernels as tk
    from quantlinear_triton import launch as fl

    t = _eager_us

    lines = []
    for K, N in ((512, 512), (4096, 14336)):
        layer, x, Wd = _w4_layer(K, N)
        m = layer.meta
        args = (x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, m.bits, m.group_size, m.in_features, m.slab, layer.zero_point)
        cfg = {"kernel": "gemv", "BM": 1, "BN": 32, "split_k": 1, "warps": 4, "stages": 2}
        res = {"F.linear": t(lambda: F.linear(x, Wd)), "torch.empty": t(lambda: torch.empty(1, N, device="cuda", dtype=torch.float16))}
        for mode in ("normal", "fast"):
            if mode == "normal":
                fl._state["ok"] = False
            else:
                fl._state.pop("ok", None)
                fl.stats(reset=True)
            res[f"{mode}: kernels.launch gemv"] = t(lambda: tk.launch(x, layer.w_slab, layer.w_scales, None, None, 4, 32, m.group_size, K, 8.0, cfg))
            res[f"{mode}: ops.run_gemm"] = t(lambda: ops.run_gemm(*args, problem=layer.problem))
            res[f"{mode}: layer(x)"] = t(lambda: layer(x))
            res[f"{mode}: torch.ops wna16_gemm"] = t(lambda: torch.ops.quantlinear_cuda.wna16_gemm(*args))
        lines.append(fl.stats_line())  # fast mode: every launch above should be direct (normal = first launches only)
        lines += [f"eager {K}x{N} M=1 {k:<34} {v:8.1f} us/call" for k, v in res.items()]
        if K == 512:
            continue
        # the decode path as the model runs it: layer(x) with the shipped table's config, M=1 and M=16, vs F.linear,
        # with the device time (CUDA graph, same weight: L2-resident, a lower bound) and the launch counts
        tune.TUNER.clear()
        for M in (1, 16):
            xm = torch.randn(M, K, device="cuda", dtype=torch.float16)
            layer(xm)
            cfg_m = tune.TUNER.get(xm.device, layer.problem, M)
            fl.stats(reset=True)
            le, fe = t(lambda: layer(xm)), t(lambda: F.linear(xm, Wd))
            ld = _time_graph([lambda: layer(xm)])
            lines.append(f"eager {K}x{N} M={M} layer(x) {le:.1f} us/call (device {ld:.1f}, +{max(0.0, le - ld):.1f} host-bound), "
                         f"F.linear {fe:.1f} us/call | {tune._tune._short(cfg_m)} | {fl.stats_line()}")
    fl._state.pop("ok", None)
    log("\n".join(lines))
    return lines


def stage_tune(out: Path, keys_re: str, budget_s: float = 1e9) -> list[str]:
    from quantlinear_cuda import device as dev
    from quantlinear_cuda import tune
    from quantlinear_triton import kernels as tk

    shipped = json.loads((ROOT / "quantlinear_cuda" / "tuned" / "sm90.json").read_text())
    keys = []
    for rx in keys_re.split(","):  # in the order given: the most important first (a time budget may cut the rest)
        keys += [k for k in shipped["configs"] if re.search(rx, k) and k not in keys]
    props = dev.device_props(torch.device("cuda"))
    tuner = tune.TUNER
    lines = []
    t0 = time.time()
    for key in keys:
        if time.time() - t0 > budget_s:
            lines.append(f"tune: budget of {budget_s:.0f}s spent, {key} and later keys not re-measured")
            break
        p, M = parse_key(key)
        (w,), x = make(p, M)
        q, s, z = w
        zp = zero_point(p)
        # the split-K workspace and counters are allocated outside the timed region by the first call

        def run(cfg, x=x, q=q, s=s, z=z, p=p, zp=zp):
            return tk.launch(x, q, s, z, None, p.bits, p.slab, p.group_size, p.K, zp, cfg)

        best = tuner.tune(props, p, M, run)
        rec = tuner.timings()[p.key(tune.bucket(M))]
        old = shipped["configs"][key]
        old_us = old.get("best_us")
        # the old table's config, re-measured in this run
        old_now = next((r.get("ms") for r in rec["results"] if r["config"] == old["config"]), None)
        lines.append(f"tune {key}: best {rec['best_us']:.2f}us {tune._tune._short(best)} | old {old_us} us then"
                     + (f", {old_now * 1e3:.2f} us now" if old_now else "") + f" [{time.time() - t0:.0f}s]")
        log(lines[-1])
        del w, x, q, s, z
    return lines


GT_SHAPES = ((4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192), (3072, 12288), (4096, 4096))
#: (bits, dtype) in the order gtune measures them (the new bf16 kernel first)
GT_KINDS = ((4, "bfloat16"), (4, "float16"), (8, "float16"))


#: the M values gtune measures (``--gtune-ms``)
GT_MS = (1, 16)


def gtune_keys(keys_re: str = ".", ms=None) -> list[str]:
    from quantlinear_cuda.tune import Problem

    ms = GT_MS if ms is None else ms
    keys = []
    for M in ms:
        for bits, dt in GT_KINDS:
            for K, N in GT_SHAPES:
                k = Problem(bits, 32, 128, False, dt, N, K).key(M)
                if any(re.search(rx, k) for rx in keys_re.split(",")):
                    keys.append(k)
    return keys


def gtune_candidates(key: str, shipped: dict, props) -> list[dict]:
    from quantlinear_cuda import tune
    from quantlinear_triton.tune import unique

    p, M = parse_key(key)
    cands = tune.candidates(p, M, props, wide=True)
    extra = [tune.default_config(p, M, props)]
    if key in shipped:
        extra.insert(0, shipped[key]["config"])
    return unique(extra + cands)


def _copies(p) -> int:
    wbytes = p.N * p.K * p.bits // 8 + p.N * (p.K // p.group_size) * 2
    return max(2, -(-150_000_000 // wbytes))


_GT_TIMER = None  # a CPU smoke test's stand-in for quantlinear_cuda.bench.time_graph


def gtune_worker(path: str) -> int:
    """Compile (launch once) every (key, config) of the JSON list at ``path``: fills Triton's on-disk cache."""
    from quantlinear_triton import kernels as tk

    items = json.loads(Path(path).read_text())
    t0, ok, bad, cur = time.time(), 0, 0, (None, None)
    for key, cfg in items:
        if cur[0] != key:
            cur = (None, None)
            if DEV == "cuda":
                torch.cuda.empty_cache()
            p, M = parse_key(key)
            (w,), x = make(p, M)
            cur = (key, (p, M, w, x))
        p, M, (q, s, z), x = cur[1]
        try:
            tk.launch(x, q, s, z, None, p.bits, p.slab, p.group_size, p.K, zero_point(p), cfg)
            if DEV == "cuda":
                torch.cuda.synchronize()
            ok += 1
        except Exception as e:  # reported again (and skipped) by the timing pass
            bad += 1
            print(f"worker {path}: {key} {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
    print(f"worker {Path(path).name}: {ok} compiled, {bad} failed, {time.time() - t0:.0f}s", flush=True)
    return 0


def _precompile(out: Path, items: list, jobs: int, deadline: float) -> str:
    """Compile ``items`` ((key, config) pairs) in ``jobs`` worker processes (one compile per kernel variant)."""
    import subprocess

    groups: dict[str, list] = {}
    for key, cfg in items:  # one worker per kernel variant (constexprs and options): each variant compiles once
        p, M = parse_key(key)
        sig = json.dumps([p.bits, p.dtype, M > 1, {k: v for k, v in cfg.items() if k != "split_k"}, cfg.get("split_k", 1) > 1],
                         sort_keys=True)
        groups.setdefault(sig, []).append((key, cfg))
    shards: list[list] = [[] for _ in range(max(1, jobs))]
    for g in sorted(groups.values(), key=len, reverse=True):
        min(shards, key=len).extend(g)
    procs = []
    wd = out / "gtune-work"
    wd.mkdir(exist_ok=True)
    for i, sh in enumerate(shards):
        if not sh:
            continue
        sh.sort(key=lambda kc: kc[0])  # by key: one set of tensors at a time
        f = wd / f"shard{i}.json"
        f.write_text(json.dumps(sh))
        with open(f.with_suffix(".log"), "w") as fo:  # (a file, not a pipe: a chatty worker never blocks)
            procs.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--gtune-worker", str(f)],
                                           stdout=fo, stderr=subprocess.STDOUT), f.with_suffix(".log")))
    lines = [f"precompile: {len(items)} configurations in {len(groups)} kernel variants over {len(procs)} workers"]
    for pr, lf in procs:
        try:
            pr.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pr.kill()
            pr.wait()
            lines.append(f"({lf.name}: ran past the precompile deadline, killed)")
        lines += [ln for ln in lf.read_text(errors="replace").splitlines() if ln.startswith("worker")][-6:]
    return "\n".join(lines)


def _gtune_plan(keys_re: str, resume: list[str]):
    from quantlinear_cuda import device as dev

    props = dev.device_props(torch.device(DEV))
    shipped = json.loads((ROOT / "quantlinear_cuda" / "tuned" / "sm90.json").read_text())["configs"]
    done: dict = {}
    for r in resume:
        if r and Path(r).is_file():
            done.update(json.loads(Path(r).read_text()).get("configs", {}))
    keys = [k for k in gtune_keys(keys_re) if k not in done]
    return props, shipped, done, keys, {k: gtune_candidates(k, shipped, props) for k in keys}


def stage_gprecompile(out: Path, keys_re: str, budget_s: float, jobs: int, resume: list[str]) -> list[str]:
    """Only the compile phase of ``gtune`` (to overlap it with other CPU-bound work, e.g. the GPU tests)."""
    t0 = time.time()
    _, _, done, keys, plan = _gtune_plan(keys_re, resume)
    n = sum(len(v) for v in plan.values())
    log(f"gprecompile: {len(keys)} keys ({len(done)} resumed), {n} configurations, {jobs} workers")
    res = _precompile(out, [(k, c) for k in keys for c in plan[k]], jobs, t0 + budget_s)
    lines = [res, f"gprecompile: {time.time() - t0:.0f}s"]
    log("\n".join(lines))
    return lines


def stage_gtune(out: Path, keys_re: str, budget_s: float, jobs: int, resume: list[str], target_ms: float = 15.0,
                settle_ms: float = 0.0) -> list[str]:
    from quantlinear_cuda import tune
    from quantlinear_triton import kernels as tk
    from quantlinear_triton.packing import SlabMeta, dequantize_slabs

    t0 = time.time()
    props, shipped, done, keys, plan = _gtune_plan(keys_re, resume)
    n = sum(len(v) for v in plan.values())
    log(f"gtune: {len(keys)} keys ({len(done)} resumed), {n} timings; precompiling with {jobs} workers")
    if jobs > 0:
        log(_precompile(out, [(k, c) for k in keys for c in plan[k]], jobs, t0 + 0.6 * budget_s))
    log(f"gtune: precompiled in {time.time() - t0:.0f}s")
    res_path = out / "gtune.json"
    data = {"version": tune.CACHE_VERSION, "arch": props.arch, "device": props.name, "torch": torch.__version__,
            "triton": __import__("triton").__version__, "date": time.strftime("%Y-%m-%d"),
            "timing": f"CUDA graph replays, median of 5 batches (~{target_ms:.0f} ms"
                      + (f", after {settle_ms:.0f} ms of untimed replays" if settle_ms > 0 else "")
                      + "), over weight copies > 150 MB (quantlinear_cuda.bench.time_graph)",
            "configs": dict(done)}
    lines = []
    from quantlinear_cuda.bench import time_graph

    time_graph = _GT_TIMER or time_graph
    for key in keys:
        if time.time() - t0 > budget_s:
            lines.append(f"gtune: budget of {budget_s:.0f}s spent; {key} and later keys not measured")
            log(lines[-1])
            break
        p, M = parse_key(key)
        ws, x = make(p, M, copies=_copies(p))
        zp = zero_point(p)
        rows = []
        for cfg in plan[key]:
            fns = [lambda q=q, s=s, cfg=cfg: tk.launch(x, q, s, None, None, p.bits, p.slab, p.group_size, p.K, zp, cfg) for q, s, _ in ws]
            try:
                rows.append((cfg, time_graph(fns, target_ms=target_ms, settle_ms=settle_ms)))
            except Exception as e:
                rows.append((cfg, None))
                log(f"  {tune._tune._short(cfg)}: {type(e).__name__}: {str(e)[:160]}")
        ok = sorted((r for r in rows if r[1] is not None), key=lambda r: r[1])
        if not ok:
            continue
        best_cfg, best_t = ok[0]
        q, s, _ = ws[0]
        W = dequantize_slabs(q, s, None, int(zp), SlabMeta(p.bits, p.slab, p.group_size, p.K, p.N))
        ref = x.float() @ W.t()
        # the error of the fp32 sums (dqmm's cuBLAS writes only the activations' dtype)
        y32 = None if best_cfg["kernel"] == "dqmm" else torch.empty(M, p.N, device=DEV, dtype=torch.float32)
        y = tk.launch(x, q, s, None, None, p.bits, p.slab, p.group_size, p.K, zp, best_cfg, out=y32)
        err = float((y.float() - ref).abs().max() / ref.abs().max())
        del W, ref, ws
        old = shipped.get(key, {}).get("config")
        old_t = next((t for c, t in rows if c == old), None)
        dflt = tune.default_config(p, M, props)
        dflt_t = next((t for c, t in rows if c == dflt), None)
        data["configs"][key] = {"best_us": round(best_t, 2), "config": best_cfg, "err": float(f"{err:.2e}"),
                                "measured": [[tune._tune._short(c), round(t, 2) if t is not None else "error"] for c, t in rows]}
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, res_path)
        shipped_txt = f"shipped {old_t:7.2f} us {tune._tune._short(old)}" if old_t is not None else "shipped -"
        lines.append(f"gtune {key}: best {best_t:7.2f} us {tune._tune._short(best_cfg)} | {shipped_txt} | default "
                     f"{dflt_t if dflt_t is None else round(dflt_t, 2)} | err {err:.1e} | {len(ok)}/{len(rows)} ok [{time.time() - t0:.0f}s]")
        log(lines[-1])
        for c, t in ok[1:4]:
            log(f"    next {t:7.2f} us {tune._tune._short(c)}")
    return lines


def merge_gtune(paths: list[str], table: Path | None = None) -> str:
    """Merge gtune results into the shipped table (``tuned/sm90.json``): each measured key's entry replaced."""
    table = table or ROOT / "quantlinear_cuda" / "tuned" / "sm90.json"
    data = json.loads(table.read_text())
    merged, info = [], {}
    for path in paths:
        g = json.loads(Path(path).read_text())
        info = g
        for k, v in g["configs"].items():
            data["configs"][k] = {kk: v[kk] for kk in ("best_us", "config", "measured") if kk in v}
            merged.append(k)
    note = data.get("note", "")
    ms = ", ".join(str(m) for m in sorted({int(k.rsplit("|M", 1)[1]) for k in merged}))
    mark = f" Graph-timed entries (M = {ms}):" if ms not in ("1, 16", "1", "16") else " Graph-timed entries:"
    if mark in note:  # (one note per set of M values: a re-merge replaces its own)
        end = note.find(" Graph-timed entries", note.index(mark) + len(mark))
        note = note[:note.index(mark)] + (note[end:] if end >= 0 else "")
    kinds = sorted({"|".join(k.split("|")[i] for i in (0, 4, 7)) for k in merged})
    data["note"] = (note.rstrip() + f"{mark} on {info.get('date', '?')} on an {info.get('device', '?')} (torch {info.get('torch', '?')}, "
                    f"Triton {info.get('triton', '?')}) the {len(merged)} keys of W4/W8 g128 sym with M = {ms} listed by "
                    f"plugins/cuda/benchmarks/int_perf.py --stages gtune ({', '.join(kinds)}) were re-tuned by "
                    f"{info.get('timing', 'CUDA-graph timing')}: their 'measured' lists are those times, not L2-flushed do_bench.")
    tmp = table.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, table)
    return f"merged {len(merged)} keys into {table}"


def _time_graph(fns) -> float:
    """Median device time per call (us) of CUDA-graph replays calling every ``fn`` once (quantlinear_cuda.bench, 30 ms)."""
    from quantlinear_cuda.bench import time_graph

    return time_graph(fns, target_ms=30.0)


def _eager_us(fn, n: int = 300) -> float:
    """Host time per call (us) of ``n`` back-to-back calls after 20 warm-up calls (quantlinear_cuda.bench.time_eager)."""
    from quantlinear_cuda.bench import time_eager

    for _ in range(17):  # + time_eager's own 3 warm-up calls
        fn()
    return time_eager(fn, n)


def _copy_bw() -> float:
    """Device-to-device copy bandwidth in bytes/s (quantlinear_cuda.bench.copy_bandwidth: 1 GiB, median of 10)."""
    from quantlinear_cuda.bench import copy_bandwidth

    return copy_bandwidth(torch.device("cuda"), 1 << 30, reps=10)


def stage_compare(out: Path, old_table: Path) -> list[str]:
    import torch.nn.functional as F

    from quantlinear_cuda import tune
    from quantlinear_triton import kernels as tk
    from quantlinear_triton.packing import SlabMeta, dequantize_slabs

    from quantlinear_cuda import device as _dev

    props = _dev.device_props(torch.device("cuda"))
    bw = _copy_bw()
    old = json.loads(old_table.read_text())["configs"]
    new = dict(json.loads((ROOT / "quantlinear_cuda" / "tuned" / "sm90.json").read_text())["configs"])
    if (out / "tune.json").is_file():
        new.update(json.loads((out / "tune.json").read_text())["configs"])
    lines = [f"copy bandwidth {bw / 1e9:.0f} GB/s"]
    plan = [(4, "float16", K, N, M) for K, N in LARGE for M in (1, 16, 256, 4096)]
    plan += [(4, "bfloat16", K, N, M) for K, N in LARGE for M in (1, 16)] + [(8, "float16", K, N, 1) for K, N in LARGE]
    for bits, dt, K, N, M in plan:
        g = 128
        p = tune.Problem(bits, 32, g, False, dt, N, K)
        key = p.key(tune.bucket(M))
        wbytes = N * K * bits // 8 + N * (K // g) * 2
        copies = max(2, -(-150_000_000 // wbytes))
        ws, x = make(p, M, copies=copies)
        zp = float(1 << (bits - 1))
        row = []
        for name, table in (("old", old), ("new", new)):
            cfg = table.get(key, {}).get("config") or tune.default_config(p, M, props)
            fns = [lambda q=q, s=s, cfg=cfg: tk.launch(x, q, s, None, None, bits, 32, g, K, zp, cfg) for q, s, _ in ws]
            row.append((name, _time_graph(fns), cfg))
        q, s, _ = ws[0]
        y = tk.launch(x, q, s, None, None, bits, 32, g, K, zp, row[-1][2])
        W = dequantize_slabs(q, s, None, int(zp), SlabMeta(bits, 32, g, K, N))
        ref = x.float() @ W.t()
        err = float((y.float() - ref).abs().max() / ref.abs().max())
        del ws, W, ref
        dense = [torch.randn(N, K, device="cuda", dtype=getattr(torch, dt)) for _ in range(max(2, -(-150_000_000 // (N * K * 2))))]
        cub = _time_graph([lambda d=d: F.linear(x, d) for d in dense])
        del dense
        floor = wbytes / bw * 1e6
        t_old, t_new = row[0][1], row[1][1]
        lines.append(f"W{bits} {dt} K={K} N={N} M={M}: old {t_old:7.1f} new {t_new:7.1f} cublas {cub:7.1f} us | floor {floor:5.1f}"
                     f" new/floor {t_new / floor:5.2f} new/cublas {t_new / cub:5.2f} err {err:.1e} | new {tune._tune._short(row[1][2])}")
        log(lines[-1])
        (out / "compare.txt").write_text("\n".join(lines) + "\n")
    # eager: wall time per call of back-to-back layer calls vs device time
    from quantlinear_triton import launch as fl

    for K, N in LARGE[:2]:
        layer, x, Wd = _w4_layer(K, N)
        res = {}
        for name, fn in (("layer", lambda: layer(x)), ("F.linear", lambda: F.linear(x, Wd))):
            eager = _eager_us(fn, 300)
            dev = _time_graph([fn])
            res[name] = (eager, dev)
        (le, ld), (fe, fd) = res["layer"], res["F.linear"]
        lines.append(f"eager M=1 K={K} N={N}: layer {le:.1f} us eager / {ld:.1f} device (+{max(0, le - ld):.1f}); "
                     f"F.linear {fe:.1f} / {fd:.1f} (+{max(0, fe - fd):.1f}); {fl.status()}")
        log(lines[-1])
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "perf-out"))
    ap.add_argument("--stages", default="check,eager,tune,compare")
    ap.add_argument("--keys", default=".")
    ap.add_argument("--tune-budget", type=float, default=1e9)
    ap.add_argument("--old-table", default=str(ROOT / "benchmarks" / "results" / "sm90-before.json"))
    ap.add_argument("--gtune-jobs", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)))
    ap.add_argument("--gtune-ms", default="1,16", help="comma-separated M values of the keys gtune measures")
    ap.add_argument("--gtune-resume", default="", help="comma-separated gtune.json files whose keys are not measured again")
    ap.add_argument("--gtune-settle-ms", type=float, default=0.0,
                    help="untimed replays before each candidate's batches (ms): its steady clock under the power limit")
    ap.add_argument("--gtune-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--merge", default=None, help="comma-separated gtune.json files to merge into tuned/sm90.json, then exit")
    args = ap.parse_args()
    global GT_MS
    GT_MS = tuple(int(m) for m in args.gtune_ms.split(","))
    if args.merge:
        log(merge_gtune(args.merge.split(",")))
        return 0
    if args.gtune_worker:
        return gtune_worker(args.gtune_worker)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QUANTLINEAR_CUDA_TUNE_CACHE", str(out / "tune.json"))
    log(f"torch {torch.__version__} cuda {torch.version.cuda} gpu {torch.cuda.get_device_name()}")
    import triton

    log(f"triton {triton.__version__}")
    lines = []
    for stage in args.stages.split(","):
        t0 = time.time()
        try:
            if stage == "check":
                lines += stage_check(out)
            elif stage == "eager":
                lines += stage_eager(out)
            elif stage == "tune":
                lines += stage_tune(out, args.keys, args.tune_budget)
            elif stage == "compare":
                lines += stage_compare(out, Path(args.old_table))
            elif stage == "gprecompile":
                lines += stage_gprecompile(out, args.keys, args.tune_budget, args.gtune_jobs, args.gtune_resume.split(","))
            elif stage == "gtune":
                lines += stage_gtune(out, args.keys, args.tune_budget, args.gtune_jobs, args.gtune_resume.split(","),
                                     settle_ms=args.gtune_settle_ms)
        except Exception as e:
            import traceback

            traceback.print_exc()
            lines.append(f"stage {stage} failed: {type(e).__name__}: {e}")
        from quantlinear_triton import launch as fl

        lines.append(f"stage {stage}: {time.time() - t0:.0f}s; launches so far: {fl.stats_line()}")
        (out / "int_perf.txt").write_text("\n".join(lines) + "\n")
    log("\n".join(lines[-12:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
