#!/usr/bin/env python3
"""A few launches of one decode kernel for Nsight Compute.

    ncu --kernel-name regex:gemv16 python ncu_target.py int|MXFP4|NVFP4 K N      (M = 1, the shipped configuration)
    ncu --kernel-name regex:mmv python ncu_target.py mmv K N M R WARPS PF        (the tensor-core decode kernel)
"""
import sys

import torch

sys.path.insert(0, "plugins/cuda/benchmarks")
which, K, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if which == "mmv":
    import int_perf as ip
    from quantlinear_cuda import tune
    from quantlinear_triton import kernels_mmv as km

    M, R, W, pf = (int(a) for a in sys.argv[4:8])
    p = tune.Problem(4, 32, 128, False, "float16", N, K)
    ws, x = ip.make(p, M, copies=6)
    for i in range(12):
        q, s, _ = ws[i % 6]
        km.launch_mmv(x, q, s, None, None, 128, 8.0, dict(R=R, warps=W, pf=bool(pf)))
elif which == "int":
    import json

    import int_perf as ip
    from quantlinear_cuda import device as _device
    from quantlinear_cuda import tune
    from quantlinear_triton import kernels as tk

    p = tune.Problem(4, 32, 128, False, "float16", N, K)
    tab = json.load(open("plugins/cuda/quantlinear_cuda/tuned/sm90.json"))["configs"]
    cfg = tab.get(p.key(tune.bucket(1)), {}).get("config") or tune.default_config(p, 1, _device.device_props(torch.device("cuda")))
    ws, x = ip.make(p, 1, copies=6)
    for i in range(12):
        q, s, _ = ws[i % 6]
        tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg)
else:
    from quantlinear import fpquant
    from quantlinear.benchutil import random_float_weights
    from quantlinear.scheme import get_scheme
    from quantlinear_cuda import device as _device
    from quantlinear_cuda.fp_ops import SPACE
    from quantlinear_triton import fp_kernels as FK
    from quantlinear_triton import fp_packing as P
    from quantlinear_triton.fp_tune import FPProblem

    sc = get_scheme(which)
    w = random_float_weights(sc, K, N, seed=0)
    meta, t = P.prepare_float(w, fpquant.act_quant_kind(sc), fp8_elem=P.E4M3_NV)
    t = {k: (v.cuda() if v is not None else None) for k, v in t.items()}
    p = FPProblem(meta.elem, meta.scale, meta.slab, meta.bits, "float16", N, K)
    cfg = dict(SPACE.default_config(p, 1, _device.device_props(torch.device("cuda"))), fold=1)
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)
    for i in range(12):
        xp, xs = FK.quantize_activations_split(x, meta.act, meta.act_block, t["act_scale"])
        FK.launch(xp, t["qweight"], t["scales"], t["row_scales"], None, meta.elem, meta.scale, meta.block, cfg, x_scales=xs)
torch.cuda.synchronize()
