#!/usr/bin/env python
"""Benchmark quantlinear's CPU kernels against dense F.linear and AutoRound's CPU kernels.

    python plugins/cpu/benchmarks/bench_cpu.py                       # W4A16, fp32, CPU-sized shapes
    python plugins/cpu/benchmarks/bench_cpu.py --scheme W8A16 --dtype bfloat16 --json out.json --plot out.png
    python plugins/cpu/benchmarks/bench_cpu.py --shapes 4096x4096 --ms 1,16 --scheme '{"bits": 4, "group_size": 128, "sym": false}'

Prints benchutil's table (time per call, ratio to peer.dense_fp32, notes with the ratio to ARK
and the max relative error) and a summary at the smallest M.  On CPU "device time" is the
eager wall time of one call; see quantlinear_cpu/bench.py for how it is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from quantlinear import benchutil
from quantlinear_cpu import bench

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def _scheme(text: str):
    return json.loads(text) if text.strip().startswith("{") else text


def summary(dicts: list[dict], M: int) -> str:
    rows = sorted((d for d in dicts if d["M"] == M), key=lambda d: (d["K"], d["N"], d["device_us"] or 1e30))
    head = f"{'K':>6} {'N':>6}  {'kernel':<26} {'us':>9} {'x dense32':>9} {'x ark':>7} {'max rel err':>11}"
    out = [f"M = {M}:", head, "-" * len(head)]
    last = None
    for d in rows:
        if last and last != (d["K"], d["N"]):
            out.append("")
        last = (d["K"], d["N"])
        f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
        err = "-" if d["max_rel_err"] is None else f"{d['max_rel_err']:.1e}"
        out.append(f"{d['K']:>6} {d['N']:>6}  {d['kernel']:<26} {f(d['device_us'], 1):>9} {f(d['vs_dense']):>9} {f(d['vs_ark']):>7} {err:>11}"
                   + ("" if d["device_us"] is not None else f"  {d['note']}"))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in bench.CPU_SHAPES), help="comma-separated KxN list")
    p.add_argument("--ms", default=",".join(map(str, bench.CPU_MS)), help="comma-separated M (tokens) list")
    p.add_argument("--scheme", default="W4A16", help="preset name (W4A16, W8A16, ...) or a JSON Scheme dict")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES), help="activation dtype")
    p.add_argument("--kernels", nargs="*", help="restrict to these kernels/peers (names as in the table)")
    p.add_argument("--iters", type=int, default=50, help="max calls per timing round (rounds last ~25 ms)")
    p.add_argument("--reps", type=int, default=5, help="timing rounds per case; the fastest call is reported")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--busy-retries", type=int, default=2, help="re-measure a case this often while other processes load the CPU")
    p.add_argument("--busy-wait", type=float, default=20.0, help="seconds to wait for a quiet CPU before a retry")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--json", metavar="PATH", help="write rows (with ratios) as JSON")
    p.add_argument("--plot", metavar="PNG", help="draw time against M per kernel")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    opts = benchutil.BenchOptions(
        device="cpu", scheme=_scheme(a.scheme), dtype=_DTYPES[a.dtype], shapes=benchutil.parse_shapes(a.shapes),
        ms=tuple(int(m) for m in a.ms.split(",")), kernels=tuple(a.kernels or ()), warmup=a.warmup, iters=a.iters,
        progress=not a.quiet, extra={"reps": a.reps, "busy_retries": a.busy_retries, "busy_wait_s": a.busy_wait},
    )
    env0 = bench.environment()
    t0 = time.perf_counter()
    rows = bench.run(opts)
    elapsed = time.perf_counter() - t0
    dicts = bench.add_ark_ratios(benchutil.add_ratios(rows, bench.DENSE))
    for d, r in zip(dicts, rows):
        d["best_us"] = r.best_us
    print(benchutil.format_table(dicts))
    print()
    print(summary(dicts, min(opts.ms)))
    env1 = bench.environment()
    print(f"\n{opts.scheme} activations={a.dtype}; torch {torch.__version__}, {env0['torch_threads']} threads, "
          f"{env0['cores']} cores ({env0['cpu']}, {env0['cpu_capability']}); load average {env0['loadavg']} -> {env1['loadavg']}; "
          f"{elapsed:.0f} s.\n'x dense' is relative to {bench.DENSE}; notes give the ratio to ARK (peer.ark) and the max relative "
          "error vs the fp32 dequantized reference; CPU device time = eager wall time per call (fastest individually timed call, implementations interleaved).")
    meta = {"device": "cpu", **env0, "loadavg_end": env1["loadavg"], "elapsed_s": elapsed}
    if a.json:
        benchutil.write_json(a.json, dicts, opts, meta)
    if a.plot:
        try:
            benchutil.plot(dicts, a.plot, title=f"{a.scheme} {a.dtype} on CPU ({env0['torch_threads']} threads)")
        except ImportError as e:  # matplotlib is optional
            print(f"--plot skipped: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
