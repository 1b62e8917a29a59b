"""Benchmark ``cuda.triton_gguf`` against cuBLAS dense (``F.linear``) on one CUDA GPU.

For each GGUF type, (K, N) and M it reports:

* ``device_us``: device time per call from CUDA-graph replays calling the layer once on each of
  several weight copies that together exceed the L2 cache 3x, so weights stream from HBM
  (:func:`quantlinear_cuda.bench.time_graph`);
* ``eager_us``: wall time per plain eager call (:func:`quantlinear_cuda.bench.time_eager`);
* ``floor_us``: the GGUF file bytes of the weight (``N * row_bytes``) over the copy bandwidth
  measured in the same run (:func:`quantlinear_cuda.bench.copy_bandwidth`); ``bw_frac`` =
  ``floor_us / device_us`` is the fraction of copy bandwidth reached on the file's bytes;
* ``rel_err``: ``||y - ref|| / ||ref||`` against llama.cpp's fp32 dequantization times x in fp32;
* ``config``: the launch configuration the kernel used for that M.

The dense peer (``peer.cublas``) multiplies by an fp16/bf16 weight of the same shape.

    python plugins/cuda/benchmarks/bench_gguf.py                       # every type, shape and M
    python plugins/cuda/benchmarks/bench_gguf.py --types Q4_K --shapes 4096x14336 --ms 1,16 --out q4k.json
    python plugins/cuda/benchmarks/bench_gguf.py --tune                # tune each (shape, M) first (QUANTLINEAR_CUDA_GGUF_TUNE=1)

Needs no ``gguf`` package: weights come from :func:`quantlinear.gguf_random.random_gguf_weights`
and the reference from :func:`quantlinear.gguf_quants.dequantize_rows`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

DEFAULT_TYPES = ("Q4_K", "Q5_K", "Q6_K", "Q8_0")
DEFAULT_SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192), (3072, 12288))
DEFAULT_MS = (1, 4, 16, 64, 256, 1024, 4096)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES), help="GGUF types, comma-separated")
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in DEFAULT_SHAPES), help="KxN,... (in x out features)")
    ap.add_argument("--ms", default=",".join(map(str, DEFAULT_MS)), help="batch rows M, comma-separated")
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    ap.add_argument("--kernels", default="triton,cublas", help="triton (cuda.triton_gguf) and/or cublas (dense peer)")
    ap.add_argument("--iters", type=int, default=50, help="eager calls timed per row")
    ap.add_argument("--tune", action="store_true", help="tune each (shape, M bucket) on first use; table in --tune-cache")
    ap.add_argument("--tune-cache", default=None, help="user tuning table path (default: the plugin's ~/.cache file)")
    ap.add_argument("--out", default="gguf_bench.json", help="JSON output path")
    return ap.parse_args(argv)


def fro(y: torch.Tensor, ref: torch.Tensor) -> float:
    y = y.float()
    return float((y - ref).norm() / ref.norm()) if torch.isfinite(y).all() else float("inf")


def n_copies(nbytes: int, l2: int) -> int:
    return min(64, max(1, math.ceil(3 * l2 / max(1, nbytes))))


def bench_shape(qtype, K, N, ms, dtype, kernels, iters, props, bw, log):
    from quantlinear import LayerSpec
    from quantlinear.formats.gguf import gguf_scheme
    from quantlinear.gguf_quants import dequantize_rows
    from quantlinear.gguf_random import random_gguf_weights
    from quantlinear.gguf_types import GGUF_TYPES
    from quantlinear_cuda.kernels.triton_gguf import TritonGGUFLinear

    dev = torch.device("cuda", torch.cuda.current_device())
    t = GGUF_TYPES[qtype]
    file_bytes = N * t.row_bytes(K)
    floor_us = file_bytes / bw * 1e6
    w = random_gguf_weights(qtype, K, N, seed=K + N)
    w.data = w.data.to(dev)
    W = dequantize_rows(qtype, w.data)  # fp32 [N, K]
    gen = torch.Generator(device=dev).manual_seed(K + N)
    xs = {M: torch.randn(M, K, device=dev, generator=gen).to(dtype) for M in ms}
    rows = []

    def build_gguf():
        spec = LayerSpec(gguf_scheme(qtype), t.format, K, N, dtype=dtype, device=dev, name=f"bench.{qtype}.{K}x{N}")
        v = TritonGGUFLinear.can_implement(spec)
        if not v:
            log(f"  cuda.triton_gguf: skipped ({v.reason})")
            return None
        layer = TritonGGUFLinear.from_weights(spec, w)
        nbytes = layer.packed_bytes()
        return [layer] + [copy.deepcopy(layer) for _ in range(n_copies(nbytes, props.l2_bytes) - 1)], nbytes, layer

    def build_dense():
        Wd = W.to(dtype)
        nbytes = Wd.numel() * Wd.element_size()
        return [lambda x, Wc=Wd: F.linear(x, Wc)] + [lambda x, Wc=Wd.clone(): F.linear(x, Wc)
                                                     for _ in range(n_copies(nbytes, props.l2_bytes) - 1)], nbytes, None

    for name, build in (("cuda.triton_gguf", build_gguf if "triton" in kernels else None),
                        ("peer.cublas", build_dense if "cublas" in kernels else None)):
        built = build() if build is not None else None
        if built is None:
            continue
        rows += time_rows(name, *built, xs, W, qtype, K, N, dtype, file_bytes, floor_us, iters, dev, log)
        del built
        gc.collect()
        torch.cuda.empty_cache()
    return rows  # W, the weights and the activations are freed with this frame


def time_rows(name, fns, nbytes, layer, xs, W, qtype, K, N, dtype, file_bytes, floor_us, iters, dev, log) -> list[dict]:
    """One row per M: error, CUDA-graph device time over the weight copies ``fns``, eager time."""
    from quantlinear_cuda import gguf_ops
    from quantlinear_cuda.bench import time_eager, time_graph

    rows = []
    first = fns[0]
    for M, x in xs.items():
        row = {"kernel": name, "qtype": qtype, "dtype": str(dtype).replace("torch.", ""), "K": K, "N": N, "M": M,
               "file_bytes": file_bytes, "weight_bytes": nbytes, "floor_us": floor_us, "copies": len(fns)}
        try:
            y = first(x)  # warm: compiles (and tunes this M bucket with --tune)
            torch.cuda.synchronize()
            row["rel_err"] = fro(y, x.float() @ W.t())
            del y
            row["device_us"] = time_graph([lambda f=f, x=x: f(x) for f in fns])
            row["eager_us"] = time_eager(lambda x=x: first(x), iters)
            row["bw_frac"] = floor_us / row["device_us"]
            if layer is not None:
                row["config"] = gguf_ops.TUNER.get(dev, layer.problem, M)
        except Exception as e:  # keep going: one failing row must not hide the others
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
        log(fmt_row(row))
    return rows


def fmt_row(r: dict) -> str:
    if "error" in r:
        return f"  {r['kernel']:<17} {r['qtype']:<5} M={r['M']:<5} FAILED {r['error']}"
    cfg = r.get("config") or {}
    c = " ".join(f"{k}={cfg[k]}" for k in ("kernel", "BM", "BN", "MR", "split_k", "warps") if k in cfg)
    return (f"  {r['kernel']:<17} {r['qtype']:<5} M={r['M']:<5} dev {r['device_us']:9.1f} us  eager {r['eager_us']:8.1f} us  "
            f"floor {r['floor_us']:7.1f}  bw {100 * r['bw_frac']:5.1f}%  err {r['rel_err']:.1e}  {c}")


def table(rows: list[dict]) -> str:
    """GGUF vs cuBLAS per (type, shape, M): device times, fraction of copy bandwidth, speedup."""
    dense = {(r["K"], r["N"], r["M"]): r.get("device_us") for r in rows if r["kernel"] == "peer.cublas"}
    out = [f"{'type':<5} {'K':>6} {'N':>6} {'M':>5} {'gguf us':>9} {'cublas us':>9} {'floor us':>8} {'bw %':>6} {'vs cublas':>9}"]
    for r in rows:
        if r["kernel"] != "cuda.triton_gguf" or "device_us" not in r:
            continue
        d = dense.get((r["K"], r["N"], r["M"]))
        sp = f"{d / r['device_us']:.2f}x" if d else "-"
        out.append(f"{r['qtype']:<5} {r['K']:>6} {r['N']:>6} {r['M']:>5} {r['device_us']:>9.1f} {d if d else float('nan'):>9.1f} "
                   f"{r['floor_us']:>8.1f} {100 * r['bw_frac']:>6.1f} {sp:>9}")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tune:
        os.environ["QUANTLINEAR_CUDA_GGUF_TUNE"] = "1"
    if args.tune_cache:
        os.environ["QUANTLINEAR_CUDA_GGUF_TUNE_CACHE"] = args.tune_cache
    if not torch.cuda.is_available():
        print("bench_gguf: no CUDA device", file=sys.stderr)
        return 2
    from quantlinear_cuda import device
    from quantlinear_cuda.bench import copy_bandwidth

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda", torch.cuda.current_device())
    props = device.device_props(dev)
    bw = copy_bandwidth(dev)
    dtype = getattr(torch, args.dtype)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s.strip()]
    ms = [int(m) for m in args.ms.split(",") if m.strip()]
    kernels = {k.strip() for k in args.kernels.split(",")}
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"{props.name} ({props.arch}, {props.sm_count} SMs, L2 {props.l2_bytes / 2**20:.0f} MiB): copy bandwidth {bw / 1e9:.0f} GB/s; "
        f"torch {torch.__version__}, triton {__import__('triton').__version__}")
    t0 = time.time()
    rows: list[dict] = []
    for K, N in shapes:
        for i, qtype in enumerate(types):
            log(f"{qtype} K={K} N={N} {args.dtype}")
            # the dense peer does not depend on the type: time it once per shape
            kern = kernels if i == 0 else kernels - {"cublas"}
            rows += bench_shape(qtype, K, N, ms, dtype, kern, args.iters, props, bw, log)
            gc.collect()
            torch.cuda.empty_cache()
    log("\n" + table(rows))
    result = {"device": props.name, "arch": props.arch, "sm_count": props.sm_count, "copy_bandwidth_GBps": bw / 1e9,
              "torch": torch.__version__, "triton": __import__("triton").__version__, "python": platform.python_version(),
              "dtype": args.dtype, "tuned": bool(args.tune), "seconds": round(time.time() - t0, 1), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    log(f"wrote {args.out} ({len(rows)} rows, {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
