"""Time the GGUF kernels' variants side by side on one CUDA GPU (``cuda.triton_gguf``; < 60 s on an H100).

For each type and (K, N), fp16 activations:

* M = 1: the general GEMV (``gemv``) and the paired-fp16 one (``gemv16``: the default), with half / twice
  the default split-K, fp16 word sums (``hsum``), 128 rows per program, and the other dim order (``sr``,
  see ``gguf_kernels._gemv16_kernel``);
* M = 16: the tensor-core ``dot`` (the default), ``gemv`` and ``gemv16`` (one x row per program), and
  ``gemv16`` with 4 / 8 rows of x per program (32 / 16 weight rows);
* M = 64 and 256: ``dot`` and ``dqmm`` (dequantize into a temporary, then cuBLAS);

and cuBLAS fp16 (``F.linear``) at each M.  Columns: device time per call (CUDA-graph replays over weight
copies that exceed L2 3x, :func:`quantlinear_cuda.bench.time_graph`), ``floor`` = the GGUF file bytes of the
weight over the measured copy bandwidth, ``bw %`` = floor / time, ``vs cublas`` = cuBLAS time / time, and
``rel err`` = ``||y - ref|| / ||ref||`` against llama.cpp's fp32 dequantization times x in fp32.

    python plugins/cuda/benchmarks/gguf_variants.py out.json
    python plugins/cuda/benchmarks/gguf_variants.py --types Q4_K --shapes 4096x14336 --out q4k.json

Rows still to do when ``--deadline`` seconds have passed are skipped (the JSON says how many).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

TYPES = ("Q4_K", "Q6_K", "Q8_0")
SHAPES = ((4096, 14336), (8192, 28672))


def variants(space, p, props, M: int) -> list[tuple[str, dict]]:
    """(name, configuration) of every variant timed at M."""
    u = space.units(props)
    if M == 1:
        g16 = space.gemv(p, props, 64, kernel="gemv16")
        return [("gemv", space.gemv(p, props, 64)),
                ("gemv16", g16),
                ("gemv16 split/2", dict(g16, split_k=max(1, g16["split_k"] // 2))),
                ("gemv16 split*2", dict(g16, split_k=min(64, g16["split_k"] * 2))),
                ("gemv16 hsum", dict(space.gemv(p, props, 64, kernel="gemv16"), hsum=True)),
                ("gemv16 BN128", space.gemv(p, props, 128, 4, kernel="gemv16")),
                ("gemv16 BN128 hsum", dict(space.gemv(p, props, 128, 4, kernel="gemv16"), hsum=True)),
                ("gemv16 other-order", dict(space.gemv(p, props, 64, kernel="gemv16"), sr=not _sr_default()))]
    if M <= 32:
        return [("dot", space.dot(p, props, M, max(16, M), 128, 2 * u)),
                ("gemv", space.gemv(p, props, 64, M=M)),
                ("gemv16", space.gemv(p, props, 64, kernel="gemv16", M=M)),
                ("gemv16 MR4", space.gemv(p, props, 32, 4, kernel="gemv16", MR=4, M=M)),
                ("gemv16 MR8", space.gemv(p, props, 16, 4, kernel="gemv16", MR=8, M=M))]
    dot = space.dot(p, props, M, max(16, M), 128, 2 * u) if M <= 64 else space.dot(p, props, M, 128, 128, u, cap=4, warps=8)
    return [("dot", dot), ("dqmm", {"kernel": "dqmm", "BN": 64, "spp": 8, "warps": 4})]


def _sr_default() -> bool:
    from quantlinear_triton.gguf_kernels import SR_DEFAULT

    return SR_DEFAULT


def fro(y: torch.Tensor, ref: torch.Tensor) -> float:
    y = y.float()
    return float((y - ref).norm() / ref.norm()) if torch.isfinite(y).all() else float("inf")


def n_copies(nbytes: int, l2: int) -> int:
    return min(64, max(1, math.ceil(3 * l2 / max(1, nbytes)))) if l2 else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_pos", nargs="?", default=None, help="JSON output path (same as --out)")
    ap.add_argument("--out", default=None, help="JSON output path (default gguf_variants.json)")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN,... (in x out features)")
    ap.add_argument("--ms", default="1,16,64,256")
    ap.add_argument("--deadline", type=float, default=55.0, help="seconds; later rows are skipped")
    ap.add_argument("--cpu-smoke", action="store_true", help="tests only: CPU tensors through Triton's interpreter, wall-clock times")
    args = ap.parse_args(argv)
    out_path = args.out or args.out_pos or "gguf_variants.json"
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("gguf_variants: no CUDA device", file=sys.stderr)
        return 2
    import os

    os.environ.setdefault("QUANTLINEAR_CUDA_GGUF_TUNE", "0")
    from quantlinear import LayerSpec
    from quantlinear.formats.gguf import gguf_scheme
    from quantlinear.gguf_quants import dequantize_rows
    from quantlinear.gguf_random import random_gguf_weights
    from quantlinear.gguf_types import GGUF_TYPES
    from quantlinear_cuda import device, gguf_ops
    from quantlinear_cuda.bench import copy_bandwidth, time_graph
    from quantlinear_cuda.kernels.triton_gguf import TritonGGUFLinear
    from quantlinear_triton.gguf_kernels import launch

    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    if smoke:  # the script's own test: interpreter, no graphs
        dev, props, bw = torch.device("cpu"), device.INTERPRETER_PROPS, 1e9
        l2 = 0  # one weight copy

        def timer(fns, target_ms=0.0, batches=0):
            t = time.perf_counter()
            for f in fns:
                f()
            return (time.perf_counter() - t) / len(fns) * 1e6
    else:
        dev = torch.device("cuda", torch.cuda.current_device())
        props = device.device_props(dev)
        bw = copy_bandwidth(dev, nbytes=1 << 29, reps=10)
        l2 = props.l2_bytes
        timer = time_graph
    dtype = torch.float16
    types = [t for t in args.types.split(",") if t]
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]
    ms = [int(m) for m in args.ms.split(",") if m]
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"{props.name} ({props.sm_count} SMs): copy bandwidth {bw / 1e9:.0f} GB/s; torch {torch.__version__}, "
        f"triton {__import__('triton').__version__}; gemv16 dim order sr={_sr_default()}")
    hdr = f"{'type':<5} {'K':>5} {'N':>6} {'M':>4} {'variant':<19} {'us':>8} {'floor':>7} {'bw %':>6} {'vs cublas':>9} {'rel err':>8}"
    log(hdr)
    rows, skipped = [], 0
    gen = torch.Generator(device=dev).manual_seed(0)
    for K, N in shapes:
        xs = {M: torch.randn(M, K, device=dev, generator=gen).to(dtype) for M in ms}
        dense = {}
        for qi, qtype in enumerate(types):
            if time.time() - t0 > args.deadline:
                skipped += len(ms)
                continue
            t = GGUF_TYPES[qtype]
            file_bytes = N * t.row_bytes(K)
            floor_us = file_bytes / bw * 1e6
            w = random_gguf_weights(qtype, K, N, seed=K + N + qi)
            w.data = w.data.to(dev)
            W = dequantize_rows(qtype, w.data)
            spec = LayerSpec(gguf_scheme(qtype), t.format, K, N, dtype=dtype, device=dev, name=f"variants.{qtype}.{K}x{N}")
            layer = TritonGGUFLinear.from_weights(spec, w)
            layers = [layer] + [copy.deepcopy(layer) for _ in range(n_copies(layer.packed_bytes(), l2) - 1)]
            if qi == 0:  # cuBLAS once per shape, on as many dense copies
                Wd = W.to(dtype)
                wds = [Wd] + [Wd.clone() for _ in range(n_copies(Wd.numel() * 2, l2) - 1)]
                for M, x in xs.items():
                    dense[M] = timer([lambda Wc=Wc, x=x: F.linear(x, Wc) for Wc in wds], target_ms=20.0, batches=3)
                    rows.append({"kernel": "peer.cublas", "qtype": "-", "K": K, "N": N, "M": M, "device_us": dense[M]})
                del wds, Wd
            for M, x in xs.items():
                ref = x.float() @ W.t()
                for name, cfg in variants(gguf_ops.SPACE, layer.problem, props, M):
                    if time.time() - t0 > args.deadline:
                        skipped += 1
                        continue
                    row = {"kernel": "cuda.triton_gguf", "variant": name, "qtype": qtype, "K": K, "N": N, "M": M, "config": cfg,
                           "file_bytes": file_bytes, "floor_us": floor_us, "copies": len(layers)}
                    try:
                        def call(lay, x=x, cfg=cfg):
                            return launch(x, lay.gguf_qs, lay.gguf_qh, lay.gguf_sm, lay.gguf_bm, None, qtype, cfg)

                        row["rel_err"] = fro(call(layer), ref)
                        row["device_us"] = timer([lambda lay=lay: call(lay) for lay in layers], target_ms=20.0, batches=3)
                        row["bw_frac"] = floor_us / row["device_us"]
                        row["vs_cublas"] = dense[M] / row["device_us"] if M in dense else None
                        log(f"{qtype:<5} {K:>5} {N:>6} {M:>4} {name:<19} {row['device_us']:>8.1f} {floor_us:>7.1f} "
                            f"{100 * row['bw_frac']:>6.1f} {row['vs_cublas'] or float('nan'):>8.2f}x {row['rel_err']:>8.1e}")
                    except Exception as e:  # one failing variant must not hide the others
                        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                        log(f"{qtype:<5} {K:>5} {N:>6} {M:>4} {name:<19} FAILED {row['error']}")
                    rows.append(row)
            del layers, layer, W, w
            gc.collect()
            torch.cuda.empty_cache()
        log("  cublas: " + "  ".join(f"M={M} {us:.1f} us" for M, us in dense.items()))
    result = {"device": props.name, "copy_bandwidth_GBps": bw / 1e9, "torch": torch.__version__,
              "triton": __import__("triton").__version__, "gemv16_sr_default": _sr_default(), "dtype": "float16",
              "seconds": round(time.time() - t0, 1), "skipped_rows": skipped, "rows": rows}
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    log(f"wrote {out_path} ({len(rows)} rows, {skipped} skipped at the deadline, {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
