#!/usr/bin/env python3
"""Device time of the shipped W4A16 g128 M=16 configurations (fp16 and bf16) on the four large shapes (one CUDA GPU, < 1 min).

    python plugins/cuda/benchmarks/m16_check.py [M ...]     (default: 16; e.g. ``16 256``; bf16 at M <= 64 only)

Each row: CUDA-graph device time over weight copies > 150 MB (``int_perf._time_graph``), the error against an fp32
matmul of the dequantized weight, and the configuration (the shipped table's entry, or the heuristic default).
Used to compare kernel source changes in one run (results/h100-m16-assume-2026-11-25.txt: the dot kernels with and
without ``tl.assume(t_end > t_start)``).
"""
import json, sys, torch
sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip
from quantlinear_cuda import tune
from quantlinear_cuda import device as dev
from quantlinear_triton import kernels as tk
from quantlinear_triton.packing import SlabMeta, dequantize_slabs
props = dev.device_props(torch.device("cuda"))
tab = json.load(open("plugins/cuda/quantlinear_cuda/tuned/sm90.json"))["configs"]
Ms = [int(a) for a in sys.argv[1:]] or [16]
for M, dt in [(M, dt) for M in Ms for dt in ("float16", "bfloat16") if dt == "float16" or M <= 64]:
    for K, N in ((4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192)):
        p = tune.Problem(4, 32, 128, False, dt, N, K)
        key = p.key(tune.bucket(M)); cfg = tab.get(key, {}).get("config") or tune.default_config(p, M, props)
        wb = N * K // 2 + N * (K // 128) * 2
        ws, x = ip.make(p, M, copies=max(2, -(-150_000_000 // wb)))
        fns = [lambda q=q, s=s: tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg) for q, s, _ in ws]
        t = ip._time_graph(fns)
        q, s, _ = ws[0]
        y = tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg)
        W = dequantize_slabs(q, s, None, 8, SlabMeta(4, 32, 128, K, N)); ref = x.float() @ W.t()
        err = float((y.float() - ref).abs().max() / ref.abs().max())
        print(f"{dt} K={K} N={N} M={M}: {t:.2f} us err {err:.1e} table-entry={key in tab} {tune._tune._short(cfg)}", flush=True)
        del ws, W, ref
