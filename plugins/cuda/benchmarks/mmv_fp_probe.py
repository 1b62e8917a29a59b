#!/usr/bin/env python3
"""``mmv`` alone (activations quantized beforehand) at M = 1 and 2 on MXFP4 / NVFP4 weights: CUDA-graph device time per
configuration, to separate the kernel from the activation quantization before it.

    python plugins/cuda/benchmarks/mmv_fp_probe.py [--shapes 8192x28672,28672x8192] [--ms 1,2,8]
"""
import argparse, os, sys, torch
sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip
from quantlinear_triton import kernels_mmv as km
from quantlinear_triton.fp_packing import mx_sigma, nv_sigma, pack_slabs

ap = argparse.ArgumentParser()
ap.add_argument("--shapes", default="8192x28672,28672x8192")
ap.add_argument("--ms", default="1,2,8")
ap.add_argument("--splits", default="2,4,8,16")
args = ap.parse_args()
pdl = os.environ.get("QUANTLINEAR_PDL", "1")
for scheme in ("MXFP4", "NVFP4"):
    nv = scheme == "NVFP4"
    for shape in args.shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        blk = 16 if nv else 32
        ws = []
        for i in range(2):
            codes = torch.randint(0, 16, (N, K), device="cuda", dtype=torch.uint8)
            if nv:
                sb = torch.randint(1, 0x7F, (N, K // 16), device="cuda", dtype=torch.uint8)
                sg = nv_sigma(sb)
            else:
                sb = torch.randint(118, 127, (N, K // 32), device="cuda", dtype=torch.uint8)
                sg = mx_sigma(codes, sb)
            ws.append((pack_slabs(codes, 4, blk), sg))
        rows = torch.full((N,), 1e-3, device="cuda") if nv else None
        for M in (int(m) for m in args.ms.split(",")):
            x = torch.randn(M, K, device="cuda").half()
            out = []
            for sp in (int(s) for s in args.splits.split(",")):
                cfg = {"R": 1, "warps": 4, "pf": M > 1, "split_k": sp}
                t = ip._time_graph([lambda q=q, sg=sg: km.launch_mmv_fp(x, q, sg[0], rows, None, sg[1], cfg, nv=nv) for q, sg in ws])
                out.append(f"s{sp}:{t:.1f}")
            print(f"pdl={pdl} {scheme} K={K} N={N} M={M} " + " ".join(out), flush=True)
