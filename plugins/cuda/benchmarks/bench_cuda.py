#!/usr/bin/env python3
"""Benchmark the CUDA plugin's kernels against cuBLAS and other peers on one GPU.

    python plugins/cuda/benchmarks/bench_cuda.py --scheme W4A16 --dtype fp16 \
        --shapes 4096x14336,14336x4096 --ms 1,16,256,4096 --json out.json --plot out.png

Shapes are KxN (in_features x out_features).  See quantlinear_cuda.bench for what each
column means.  Tuning of launch configurations happens on first use of each (shape, M
bucket) unless QUANTLINEAR_CUDA_TUNE=0; results go to the tuning cache.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from quantlinear.benchutil import DEFAULT_MS, DEFAULT_SHAPES, BenchOptions, add_ratios, format_table, parse_shapes, plot, write_json

DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in DEFAULT_SHAPES), help="KxN list, comma separated")
    p.add_argument("--ms", default=",".join(map(str, DEFAULT_MS)), help="token counts M, comma separated")
    p.add_argument("--scheme", default="W4A16", help="scheme preset (W4A16, W8A16, W3A16, W2A16, ...)")
    p.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    p.add_argument("--kernels", default="", help="comma-separated name patterns (kernels and peers); empty = all")
    p.add_argument("--device", default="cuda")
    p.add_argument("--iters", type=int, default=50, help="eager calls timed per row")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=BenchOptions.rounds, help="timed batches per implementation, taken in turns (the median)")
    p.add_argument("--json", default=None, help="write rows and environment here")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def build_options(args) -> BenchOptions:
    return BenchOptions(
        device=args.device,
        scheme=args.scheme,
        dtype=DTYPES[args.dtype],
        shapes=parse_shapes(args.shapes),
        ms=tuple(int(m) for m in args.ms.split(",") if m.strip()),
        kernels=tuple(k.strip() for k in args.kernels.split(",") if k.strip()),
        warmup=args.warmup,
        iters=args.iters,
        rounds=args.rounds,
        progress=not args.quiet,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    options = build_options(args)
    from quantlinear_cuda.bench import DENSE, run
    from quantlinear_cuda.device import device_props

    rows = run(options)
    dicts = add_ratios(rows, DENSE)
    print(format_table(dicts))
    props = device_props(options.device)
    meta = {"device": props.name, "arch": props.arch, "sm_count": props.sm_count, "cuda": torch.version.cuda}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    if args.json:
        write_json(args.json, dicts, options, meta)
    if args.plot:
        plot(dicts, args.plot, title=f"{options.scheme} {args.dtype} on {props.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
