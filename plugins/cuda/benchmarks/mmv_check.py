#!/usr/bin/env python3
"""``mmv`` (the tensor-core decode kernel) on one CUDA GPU.

    python plugins/cuda/benchmarks/mmv_check.py [--sweep] [--ms 2,4,8,16] [--shapes 4096x14336,...] [--out R.json]

First its correctness against an fp32 matmul of the dequantized weight (sym / asym, bias, ragged K and N, groups
of 128 / 256 / one per row, M = 1..16, split-K launched twice so the tile counters must have been reset).  With
``--sweep``: CUDA-graph device time of the kernel the layer ran before ``mmv`` (the shipped table's entry or the
pre-sm80 default) and of ``tune.mmv_candidates``, per shape and M; ``mmv_merge.py`` turns that into table entries.
"""
import argparse, dataclasses, json, sys, torch
sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip
from quantlinear_cuda import tune
from quantlinear_cuda import device as dev
from quantlinear_cuda.bench import copy_bandwidth
from quantlinear_triton import kernels as tk
from quantlinear_triton import kernels_mmv as km
from quantlinear_triton.packing import SlabMeta, dequantize_slabs

SHAPES = "4096x4096,3072x12288,4096x14336,14336x4096,8192x28672,28672x8192"
ap = argparse.ArgumentParser()
ap.add_argument("--sweep", action="store_true")
ap.add_argument("--ms", default="2,4,8,16")
ap.add_argument("--shapes", default=SHAPES)
ap.add_argument("--table", default="plugins/cuda/quantlinear_cuda/tuned/sm90.json", help="the table the 'old' kernel comes from")
ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"), help="the sweep's activations")
ap.add_argument("--grid", action="store_true", help="sweep R 1/2 x warps 4/8 x split 2..32 x pf instead of the candidates")
ap.add_argument("--bits", type=int, default=4, choices=(4, 8), help="the sweep's code width")
ap.add_argument("--ks", action="store_true", help="add the warps-split-K candidates (ks) to the grid")
args = ip.mmv_script_args(ap)
props = dev.device_props(torch.device("cuda"))
res = {"device": torch.cuda.get_device_name(), "check": [], "sweep": []}

bad = 0
TOL = {"float16": 1e-3, "bfloat16": 1e-2}  # (bf16: the output's own rounding is 2**-9)
CHECKS = [] if args.no_check else [(4, 4096, 1024, 128, False, False, "float16"), (4, 4096, 1024, 128, True, True, "float16"),
                                    (4, 4224, 784, 128, True, True, "float16"), (4, 2048, 520, -1, False, True, "float16"),
                                    (4, 1536, 1040, 256, True, False, "float16"), (4, 4096, 1024, 128, False, True, "bfloat16"),
                                    (4, 4224, 784, 128, True, False, "bfloat16"), (8, 4096, 1024, 128, False, True, "float16"),
                                    (8, 3840, 784, 128, True, True, "float16"), (8, 2048, 520, -1, True, False, "float16")]
if CHECKS:
    print("== correctness", flush=True)
for (bits, K, N, gs, zeros, bias, dt) in CHECKS:
    gse = K if gs == -1 else gs
    p = tune.Problem(bits, 32, gse, zeros, dt, N, K)
    for M in (1, 3, 8, 9, 16):
        ws, x = ip.make(p, M, copies=1, seed=M)
        q, s, z = ws[0]
        b = torch.randn(N, device="cuda").to(x.dtype) if bias else None
        zp = ip.zero_point(p)
        W = dequantize_slabs(q, s, z, zp, SlabMeta(bits, 32, gse, K, N))
        ref = x.float() @ W.t() + (b.float() if bias else 0)
        for cfg in ip.MMV_CHECK_CFGS:
            for _ in range(2):
                y = km.launch_mmv(x, q, s, z, b, gse, zp, cfg, bits=bits)
            err = float((y.float() - ref).abs().max() / ref.abs().max())
            bad += err >= TOL[dt]
            res["check"].append(dict(bits=bits, K=K, N=N, gs=gs, zeros=zeros, bias=bias, dtype=dt, M=M, cfg=cfg, err=err))
            if err >= TOL[dt]:
                print(f"BAD W{bits} {dt} K={K} N={N} gs={gs} zeros={zeros} bias={bias} M={M} {cfg}: err {err:.2e}", flush=True)
for dt in TOL if CHECKS else ():
    errs = [r["err"] for r in res["check"] if r["dtype"] == dt]
    print(f"{dt}: bad {sum(e >= TOL[dt] for e in errs)} of {len(errs)}, max err {max(errs):.2e}", flush=True)

if args.sweep:
    old_props = dataclasses.replace(props, capability=(7, 5))  # the default before mmv
    tab = json.load(open(args.table))["configs"]
    bw = copy_bandwidth(torch.device("cuda"), 1 << 30, reps=10)
    res["copy_bw"] = bw
    print(f"== sweep (copy bw {bw/1e12:.3f} TB/s)", flush=True)
    for shape in args.shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        p = tune.Problem(args.bits, 32, 128, False, args.dtype, N, K)
        zp = ip.zero_point(p)
        wb = N * K * args.bits // 8 + N * (K // 128) * 2
        floor = wb / bw * 1e6
        for M in [int(m) for m in args.ms.split(",")]:
            ent = tab.get(p.key(tune.bucket(M)), {}).get("config")
            old = ent if ent and ent["kernel"] != "mmv" else tune.default_config(p, M, old_props)
            default = tune.mmv_config(p, M, props.sm_count)
            cands = tune.mmv_candidates(p, M, props.sm_count)
            if args.grid:  # (the default first: the summary line reports it)
                cands = [dict(kernel="mmv", R=r, warps=w, pf=pf, split_k=sp) for r in (1, 2) for w in args.warps
                         for sp in (2, 4, 8, 16, 32) for pf in (False, True) if tune.mmv_steps(p) // sp >= 2]
                if args.ks:  # the warps splitting K (M <= 8)
                    cands += [dict(kernel="mmv", R=r, warps=w, pf=False, split_k=sp, ks=True) for r in (1, 2)
                              for w in (4, 8, 16) for sp in (1, 2, 4) if tune.mmv_steps(p) // sp >= 2]
                cands = [default] + [c for c in cands if c != default]
            ws, x = ip.make(p, M, copies=max(2, -(-150_000_000 // wb)))
            row = dict(K=K, N=N, M=M, bits=args.bits, dtype=args.dtype, floor=floor, default=default, times=[])
            for c in [old] + cands:
                t = ip._time_graph([lambda q=q, s=s, c=c: tk.launch(x, q, s, None, None, args.bits, 32, 128, K, zp, c)
                                    for q, s, _ in ws])
                row["times"].append([c, t])
            t_old = row["times"][0][1]
            t_def = next(t for c, t in row["times"] if c == row["default"])
            best_c, best_t = min(row["times"], key=lambda ct: ct[1])
            print(f"K={K} N={N} M={M}: floor {floor:.1f} | old {t_old:.1f} [{tune._tune._short(old)}] | default {t_def:.1f} "
                  f"({t_old / t_def:.2f}x) | best {best_t:.1f} [{tune._tune._short(best_c)}]", flush=True)
            res["sweep"].append(row)
            if args.out:  # after every row: a sweep cut short keeps what it measured
                json.dump(res, open(args.out, "w"), indent=1)
            del ws
if args.out:
    json.dump(res, open(args.out, "w"), indent=1)
sys.exit(1 if bad else 0)
