#!/usr/bin/env python3
"""``mmv`` (tensor-core decode kernel) on one CUDA GPU: correctness against an fp32 matmul of the dequantized weight,
then CUDA-graph device time against the shipped kernels (``gemv16`` / ``dot16``) on the same weights.

    python plugins/cuda/benchmarks/mmv_check.py [--quick] [--out results.json]
"""
import argparse, json, sys, torch
sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip
from quantlinear_cuda import tune
from quantlinear_cuda import device as dev
from quantlinear_cuda.bench import copy_bandwidth
from quantlinear_triton import kernels as tk
from quantlinear_triton import kernels_mmv as km
from quantlinear_triton.packing import SlabMeta, dequantize_slabs

ap = argparse.ArgumentParser()
ap.add_argument("--quick", action="store_true")
ap.add_argument("--out", default=None)
ap.add_argument("--configs", default="2x4,1x4,1x8,2x8,4x4,4x8")
ap.add_argument("--ms", default="1,4,8,16")
ap.add_argument("--sweep", action="store_true", help="every tuner shape of mmv (tune.MMV_SHAPES) against the kernel "
                "the layer ran before mmv (table entry or the pre-sm80 default), six shapes, M = 1..16")
ap.add_argument("--no-check", action="store_true")
args = ap.parse_args()
props = dev.device_props(torch.device("cuda"))
res = {"device": torch.cuda.get_device_name(), "check": [], "time": []}
tab = json.load(open("plugins/cuda/quantlinear_cuda/tuned/sm90.json"))["configs"]

print("== correctness", flush=True)
bad = 0
for (K, N, gs, zeros, bias) in [] if args.no_check else [(4096, 4096, 128, False, False), (4096, 1024, 128, True, True), (4224, 768, 128, False, True),
                                (4224, 784, 128, True, False), (2048, 512, -1, False, False), (1536, 1040, 256, True, True)]:
    G = 1 if gs == -1 else -(-K // gs)
    gse = K if gs == -1 else gs
    p = tune.Problem(4, 32, gse, zeros, "float16", N, K)
    for M in (1, 2, 3, 7, 8, 9, 13, 16):
        ws, x = ip.make(p, M, copies=1, seed=M)
        q, s, z = ws[0]
        b = torch.randn(N, device="cuda").half() if bias else None
        zp = 0.0 if zeros else 8.0
        W = dequantize_slabs(q, s, z, zp, SlabMeta(4, 32, gse, K, N))
        ref = x.float() @ W.t() + (b.float() if bias else 0)
        for cfg in ({"R": 1, "warps": 4}, {"R": 2, "warps": 8}):
            y = km.launch_mmv(x, q, s, z, b, gse, zp, cfg)
            err = float((y.float() - ref).abs().max() / ref.abs().max())
            ok = err < 1e-3
            bad += not ok
            res["check"].append(dict(K=K, N=N, gs=gs, zeros=zeros, bias=bias, M=M, cfg=cfg, err=err))
            if not ok or M in (1, 16):
                print(f"K={K} N={N} gs={gs} zeros={zeros} bias={bias} M={M} {cfg}: err {err:.2e} {'OK' if ok else 'BAD'}", flush=True)
print("bad:", bad, flush=True)

if args.sweep:
    import dataclasses
    old_props = dataclasses.replace(props, capability=(7, 5))  # the default before mmv (dot16 / gemv16)
    bw = copy_bandwidth(torch.device("cuda"), 1 << 30, reps=10)
    res["copy_bw"] = bw
    print(f"== sweep (copy bw {bw/1e12:.3f} TB/s)", flush=True)
    for K, N in ((4096, 4096), (3072, 12288), (4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192)):
        p = tune.Problem(4, 32, 128, False, "float16", N, K)
        wb = N * K // 2 + N * (K // 128) * 2
        floor = wb / bw * 1e6
        for M in [int(m) for m in args.ms.split(",")]:
            key = p.key(tune.bucket(M))
            ent = tab.get(key, {}).get("config")
            old = ent if ent and ent["kernel"] != "mmv" else tune.default_config(p, M, old_props)
            ws, x = ip.make(p, M, copies=max(2, -(-150_000_000 // wb)))
            t_old = ip._time_graph([lambda q=q, s=s: tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, old) for q, s, _ in ws])
            row = dict(K=K, N=N, M=M, floor=floor, old=t_old, old_cfg=tune._tune._short(old), mmv={},
                       default=tune._tune._short(tune.mmv_config(p, M)))
            for R, w, pf in tune.MMV_SHAPES:
                c = dict(kernel="mmv", R=R, warps=w, pf=pf)
                row["mmv"][f"{R}x{w}{'p' if pf else ''}"] = ip._time_graph(
                    [lambda q=q, s=s, c=c: km.launch_mmv(x, q, s, None, None, 128, 8.0, c) for q, s, _ in ws])
            best = min(row["mmv"].items(), key=lambda kv: kv[1])
            d = tune.mmv_config(p, M)
            dt = row["mmv"][f"{d['R']}x{d['warps']}{'p' if d['pf'] else ''}"]
            print(f"K={K} N={N} M={M}: floor {floor:.1f} old {t_old:.1f} [{row['old_cfg']}] | default {dt:.1f} | best {best[0]} {best[1]:.1f}"
                  f" ({t_old/best[1]:.2f}x) | " + " ".join(f"{k}:{v:.1f}" for k, v in row["mmv"].items()), flush=True)
            res.setdefault("sweep", []).append(row)
            del ws
    if args.out:
        json.dump(res, open(args.out, "w"), indent=1)
    sys.exit(0)
bw = copy_bandwidth(torch.device("cuda"), 1 << 30, reps=10)
res["copy_bw"] = bw
print(f"== timing (copy bw {bw/1e12:.3f} TB/s)", flush=True)
shapes = ((4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192)) if not args.quick else ((4096, 14336), (8192, 28672))
cfgs = [dict(R=int(c.split("x")[0]), warps=int(c.split("x")[1].rstrip("n")), pf=not c.endswith("n")) for c in args.configs.split(",")]
for K, N in shapes:
    p = tune.Problem(4, 32, 128, False, "float16", N, K)
    wb = N * K // 2 + N * (K // 128) * 2
    floor = wb / bw * 1e6
    for M in [int(m) for m in args.ms.split(",")]:
        key = p.key(tune.bucket(M)); cfg = tab.get(key, {}).get("config") or tune.default_config(p, M, props)
        ws, x = ip.make(p, M, copies=max(2, -(-150_000_000 // wb)))
        t_ship = ip._time_graph([lambda q=q, s=s: tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg) for q, s, _ in ws])
        row = dict(K=K, N=N, M=M, floor=floor, shipped=t_ship, shipped_cfg=tune._tune._short(cfg), mmv={})
        for c in cfgs:
            t = ip._time_graph([lambda q=q, s=s: km.launch_mmv(x, q, s, None, None, 128, 8.0, c) for q, s, _ in ws])
            row["mmv"][f"{c['R']}x{c['warps']}" + ("" if c["pf"] else "n")] = t
        best = min(row["mmv"].items(), key=lambda kv: kv[1])
        if M in (1, 16):
            q, s, _ = ws[0]
            bc = cfgs[[f"{c['R']}x{c['warps']}" + ("" if c["pf"] else "n") for c in cfgs].index(best[0])]
            row["eager_mmv"] = ip._eager_us(lambda: km.launch_mmv(x, q, s, None, None, 128, 8.0, bc))
            row["eager_shipped"] = ip._eager_us(lambda: tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg))
            print(f"   eager us: mmv {row['eager_mmv']:.1f} shipped {row['eager_shipped']:.1f}", flush=True)
        print(f"K={K} N={N} M={M}: floor {floor:.1f} shipped {t_ship:.1f} ({t_ship/floor:.2f}x) | mmv best {best[0]} {best[1]:.1f} ({best[1]/floor:.2f}x) | "
              + " ".join(f"{k}:{v:.1f}" for k, v in row["mmv"].items()), flush=True)
        res["time"].append(row)
        del ws
if args.out:
    json.dump(res, open(args.out, "w"), indent=1)
