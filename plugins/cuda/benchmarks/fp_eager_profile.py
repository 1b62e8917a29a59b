#!/usr/bin/env python3
"""Host time per eager call of the float path at M = 1, split by part, and a cProfile of the whole call (one GPU).

    python plugins/cuda/benchmarks/fp_eager_profile.py [SCHEME ...]     (default MXFP4 FPW8A16)

For a 4096 x 14336 layer: wall time per call of the activation kernel alone, the GEMV alone and the whole
``run_fp_gemm`` (synchronizing once per 200 calls, so host time dominates where it exceeds the kernels'), then the
top of a cProfile of 200 whole calls.  Used to find what the eager float path spends its host time on.
"""
import sys

import torch

from quantlinear import fpquant
from quantlinear.benchutil import random_float_weights
from quantlinear.scheme import get_scheme
from quantlinear_cuda import fp_ops
from quantlinear_cuda.bench import host_profile, time_eager
from quantlinear_triton import fp_kernels as FK
from quantlinear_triton import fp_packing as P
from quantlinear_triton import launch as L


def per_call(fn, n=200):
    return time_eager(fn, n)


for name in sys.argv[1:] or ["MXFP4", "FPW8A16"]:
    K, N = 4096, 14336
    sc = get_scheme(name)
    w = random_float_weights(sc, K, N, seed=0)
    meta, t = P.prepare_float(w, fpquant.act_quant_kind(sc), fp8_elem=P.E4M3_NV)
    t = {k: (v.cuda() if v is not None else None) for k, v in t.items()}
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)

    def whole():
        return fp_ops.run_fp_gemm(x, t["qweight"], t["scales"], t["row_scales"], None, t["act_scale"], K, meta.elem, meta.scale,
                                  meta.block, meta.act, meta.act_block)

    rows = [("whole run_fp_gemm", per_call(whole)), ("torch.empty x2", per_call(lambda: (torch.empty(1, 2048, dtype=torch.int32, device="cuda"), torch.empty(1, 128, device="cuda"))))]
    if meta.act != P.A_NONE:
        rows.append(("activation kernel", per_call(lambda: FK.quantize_activations_split(x, meta.act, meta.act_block, t["act_scale"]))))
    print(name, " | ".join(f"{k} {v:.1f} us" for k, v in rows), flush=True)
    print(host_profile(whole, 200, 14))
print(L.stats_line())
