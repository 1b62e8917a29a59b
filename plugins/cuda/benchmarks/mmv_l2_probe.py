#!/usr/bin/env python3
"""``mmv`` with and without prefetching its first tiles' weight lines into L2 before PDL's wait (cfg ``l2``), on one GPU.

    python plugins/cuda/benchmarks/mmv_l2_probe.py [--shapes 4096x14336,...] [--l2 0,2,4] [--out R.json]

Int W4 g128 fp16 at M = 1 / 2 (the shipped table's ``mmv`` entry, else ``tune.mmv_config``) and MXFP4 / NVFP4 at M = 1
(the activation kernel, then ``mmv`` with the float table's entry): CUDA-graph device time per call over weight copies
of at least 150 MB, each ``l2`` value in the same run, and the outputs bit for bit against ``l2 = 0`` (a prefetch
changes no arithmetic).
"""
import argparse, json, sys
import torch
sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip
from quantlinear_cuda import device as dev
from quantlinear_cuda import fp_ops, tune
from quantlinear_triton import fp_kernels as fk
from quantlinear_triton import kernels as tk
from quantlinear_triton import kernels_mmv as km
from quantlinear_triton.fp_packing import A_MX_E2M1, A_NVFP4, E2M1, S_E4M3, S_E8M0, mx_sigma, nv_sigma, pack_slabs
from quantlinear_triton.fp_tune import FPProblem

ap = argparse.ArgumentParser()
ap.add_argument("--shapes", default="4096x14336,14336x4096,8192x28672")
ap.add_argument("--l2", default="0,2,4")
ap.add_argument("--out", default=None)
args = ap.parse_args()
L2 = [int(v) for v in args.l2.split(",")]
props = dev.device_props(torch.device("cuda"))
tab = json.load(open("plugins/cuda/quantlinear_cuda/tuned/sm90.json"))["configs"]
ftab = json.load(open("plugins/cuda/quantlinear_cuda/tuned/fp-sm90.json"))["configs"]
res, bad = [], 0


def probe(label, cfg, call, copies):
    global bad
    ref = None
    times = []
    for l2 in L2:
        c = dict(cfg, l2=l2)
        y = call(copies[0], c).clone()
        if ref is None:
            ref = y
        same = torch.equal(y, ref)
        bad += not same
        times.append((l2, ip._time_graph([lambda w=w, c=c: call(w, c) for w in copies]), same))
    res.append(dict(case=label, cfg=cfg, times=times))
    print(f"{label:<34} [{tune._tune._short(cfg)}] " + "  ".join(f"l2={l2}: {t:.1f}{'' if s else ' DIFF'}" for l2, t, s in times),
          flush=True)


for shape in args.shapes.split(","):
    K, N = (int(v) for v in shape.split("x"))
    p = tune.Problem(4, 32, 128, False, "float16", N, K)
    wb = N * K // 2
    for M in (1, 2):
        ent = tab.get(p.key(tune.bucket(M)), {}).get("config")
        cfg = ent if ent and ent["kernel"] == "mmv" else tune.mmv_config(p, M, props.sm_count)
        ws, x = ip.make(p, M, copies=max(2, -(-150_000_000 // wb)))
        probe(f"W4A16 {K}x{N} M={M}", cfg,
              lambda w, c: tk.launch(x, w[0], w[1], None, None, 4, 32, 128, K, 8.0, c), ws)
        del ws
    for scheme in ("MXFP4", "NVFP4"):
        nv = scheme == "NVFP4"
        sc, blk, act = (S_E4M3, 16, A_NVFP4) if nv else (S_E8M0, 32, A_MX_E2M1)
        fp = FPProblem(E2M1, sc, blk, 4, "float16", N, K)
        cfg = (ftab.get(fp.key(1), {}).get("config") or fp_ops.SPACE.mmv_config(fp, 1, props.sm_count))
        copies = []
        for i in range(max(2, -(-150_000_000 // wb))):
            codes = torch.randint(0, 16, (N, K), device="cuda", dtype=torch.uint8)
            if nv:
                sg = nv_sigma(torch.randint(1, 0x7F, (N, K // 16), device="cuda", dtype=torch.uint8))
            else:
                sg = mx_sigma(codes, torch.randint(118, 127, (N, K // 32), device="cuda", dtype=torch.uint8))
            copies.append((pack_slabs(codes, 4, blk), sg))
        rows = torch.full((N,), 1e-3, device="cuda") if nv else None
        gs = torch.tensor([0.37], device="cuda") if nv else None  # an input_global_scale
        x = torch.randn(1, K, device="cuda").half()
        probe(f"{scheme} {K}x{N} M=1 (act + mmv)", cfg,
              lambda w, c: km.launch_mmv_fp(fk.quantize_activations(x, act, blk, gs), w[0], w[1][0], rows, None, w[1][1], c,
                                            nv=nv), copies)
        del copies
if args.out:
    json.dump(dict(device=torch.cuda.get_device_name(), results=res), open(args.out, "w"), indent=1)
print("outputs differing from l2=0:", bad)
sys.exit(1 if bad else 0)
