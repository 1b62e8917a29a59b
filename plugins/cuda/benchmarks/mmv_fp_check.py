#!/usr/bin/env python3
"""``mmv`` on MXFP4 (E2M1 codes, E8M0 scales per 32) and NVFP4 (E2M1, E4M3 scales per 16, global scales) layers,
fp16, on one CUDA GPU.

    python plugins/cuda/benchmarks/mmv_fp_check.py [--sweep] [--schemes MXFP4,NVFP4] [--ms 1,2,4,8,16]
                                                   [--shapes 4096x14336,...] [--out R.json]

First its correctness against an fp32 matmul of the dequantized weight (W4A16 and W4A4 -- the activations through
the scheme's own quantization --, bias, ragged K and N, scale ranges that need zero blocks, M = 1..16, split-K
launched twice so the tile counters must have been reset).  With ``--sweep``: CUDA-graph device time, through the
per-call path (``run_fp_gemm``: activation quantization included), of the configuration the layer runs without
``mmv`` and of ``mmv``'s default and candidates, over weight copies larger than L2.
"""
import argparse, json, sys, torch
sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip
from quantlinear_cuda import device as dev
from quantlinear_cuda import fp_ops
from quantlinear_cuda.bench import copy_bandwidth
from quantlinear_triton import fp_kernels as fk
from quantlinear_triton import kernels_mmv as km
from quantlinear_triton.fp_packing import A_MX_E2M1, A_NONE, A_NVFP4, E2M1, S_E4M3, S_E8M0, mx_sigma, nv_sigma, pack_slabs
from quantlinear_triton.fp_tune import FPProblem

SHAPES = "4096x4096,3072x12288,4096x14336,14336x4096,8192x28672,28672x8192"
E2M1_VALUES = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])


def make(K, N, lo=118, hi=127, zero_blocks=0, seed=0, nv=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    codes = torch.randint(0, 16, (N, K), device="cuda", generator=g, dtype=torch.uint8)
    if nv:  # positive E4M3 scale bytes over their whole range, subnormals included
        sb = torch.randint(1, 0x7F, (N, K // 16), device="cuda", generator=g, dtype=torch.uint8)
        return codes, sb
    sb = torch.randint(lo, hi + 1, (N, K // 32), device="cuda", generator=g, dtype=torch.uint8)
    if zero_blocks:  # blocks of zeros with a tiny scale (as a quantizer writes them): mmv flushes them
        idx = torch.randint(0, N * (K // 32), (zero_blocks,), device="cuda", generator=g)
        sb.view(-1)[idx] = 0
        codes.view(N, K // 32, 32).view(-1, 32)[idx] = 0
    return codes, sb


def reference(x, codes, sb, bias, rows=None):
    if rows is not None:  # NVFP4: E4M3 scales per 16, the row factor 1 / weight_global_scale
        W = E2M1_VALUES.cuda()[codes.long()] * sb.view(torch.float8_e4m3fn).float().repeat_interleave(16, dim=1)
        W = W * rows[:, None]
    else:
        W = E2M1_VALUES.cuda()[codes.long()] * torch.exp2(sb.float() - 127).repeat_interleave(32, dim=1)
    return x.float() @ W.t() + (bias.float() if bias is not None else 0)


def packed(codes, sb, nv=False):
    if nv:
        return pack_slabs(codes, 4, 16), sb.t().contiguous(), nv_sigma(sb)
    return pack_slabs(codes, 4, 32), sb.t().contiguous(), mx_sigma(codes, sb)


ap = argparse.ArgumentParser()
ap.add_argument("--sweep", action="store_true")
ap.add_argument("--ms", default="1,2,4,8,16")
ap.add_argument("--schemes", default="MXFP4,NVFP4")
ap.add_argument("--shapes", default=SHAPES)
ap.add_argument("--grid", action="store_true", help="sweep R 1/2/4 x warps 4/8 x split 4..32 x pf instead of the candidates")
args = ip.mmv_script_args(ap)
props = dev.device_props(torch.device("cuda"))
res = {"device": torch.cuda.get_device_name(), "check": [], "sweep": []}

bad = 0
GS = torch.tensor([0.37], device="cuda")  # an NVFP4 input_global_scale
CHECKS = [] if args.no_check else [(4096, 1024, A_NONE, False, 118, 127, 0), (4096, 1024, A_MX_E2M1, True, 118, 127, 0),
                                     (4160, 784, A_MX_E2M1, True, 110, 130, 0), (2048, 520, A_NONE, True, 100, 124, 64),
                                     (1536, 1040, A_MX_E2M1, False, 127, 127, 0),
                                     (4096, 1024, A_NVFP4, True, 0, 0, 0), (2304, 776, A_NVFP4, False, 0, 0, 0),
                                     (1024, 520, A_NONE, True, 0, 0, 0)]
if CHECKS:
    print("== correctness", flush=True)
for (K, N, act, bias, lo, hi, zb) in CHECKS:
    nv = act == A_NVFP4 or lo == 0
    codes, sb = make(K, N, lo, hi, zb, nv=nv)
    q, s, got = packed(codes, sb, nv)
    assert got is not None, "sigma refused"
    sigma, omul = got
    rows = (torch.rand(N, device="cuda") + 0.5) / 2688 if nv else None  # 1 / weight_global_scale: outputs of O(1)
    b = torch.randn(N, device="cuda").half() if bias else None
    for M in (1, 3, 8, 9, 16):
        x = torch.randn(M, K, device="cuda").half()
        if act != A_NONE:
            x = fk.quantize_activations(x, act, 16 if nv else 32, GS if nv else None)
        ref = reference(x, codes, sb, b, rows)
        for cfg in ip.MMV_CHECK_CFGS:
            for _ in range(2):
                y = km.launch_mmv_fp(x, q, sigma, rows, b, omul, cfg, nv=nv)
            err = float((y.float() - ref).abs().max() / ref.abs().max())
            bad += err >= 1e-3
            res["check"].append(dict(K=K, N=N, act=act, nv=nv, bias=bias, lo=lo, hi=hi, M=M, cfg=cfg, err=err))
            if err >= 1e-3:
                print(f"BAD K={K} N={N} act={act} bias={bias} scales {lo}..{hi} M={M} {cfg}: err {err:.2e}", flush=True)
errs = [r["err"] for r in res["check"]]
if errs:
    print(f"bad {bad} of {len(errs)}, max err {max(errs):.2e}", flush=True)
# a block of nonzero codes 2**-25 below the largest scale: not exact in mmv's fp16, so no sigma
codes, sb = make(512, 64, 120, 120)
sb[0, 0] = 120 - 25
res["refused_out_of_range"] = mx_sigma(codes, sb) is None
print("out-of-range block refused:", res["refused_out_of_range"], flush=True)
bad += not res["refused_out_of_range"]

for scheme in (args.schemes.split(",") if args.sweep else ()):
    nv = scheme == "NVFP4"
    bw = res.setdefault("copy_bw", copy_bandwidth(torch.device("cuda"), 1 << 30, reps=10))
    print(f"== sweep (copy bw {bw/1e12:.3f} TB/s), {scheme} W4A4 through run_fp_gemm", flush=True)
    sc, blk, act = (S_E4M3, 16, A_NVFP4) if nv else (S_E8M0, 32, A_MX_E2M1)
    for shape in args.shapes.split(","):
        K, N = (int(v) for v in shape.split("x"))
        p = FPProblem(E2M1, sc, blk, 4, "float16", N, K)
        wb = N * K // 2 + N * K // blk + (4 * N if nv else 0)
        floor = wb / bw * 1e6
        copies = max(2, -(-150_000_000 // wb))
        ws = [packed(*make(K, N, seed=i, nv=nv), nv) for i in range(copies)]
        rows = torch.full((N,), 0.25, device="cuda") if nv else None
        gs = GS if nv else None
        for M in [int(m) for m in args.ms.split(",")]:
            x = torch.randn(M, K, device="cuda").half()
            old = fp_ops.SPACE.default_config(p, M, props, mmv=False)
            default = fp_ops.SPACE.mmv_config(p, M, props.sm_count)
            cands = [c for c in fp_ops.SPACE.candidates(p, M, props) if c["kernel"] == "mmv"]
            if args.grid:
                cands = [dict(kernel="mmv", R=r, warps=w, pf=pf, split_k=sp) for r in (1, 2, 4) for w in args.warps
                         for sp in (4, 8, 16, 32) for pf in (False, True) if -(-K // 256) // sp >= 2]
            row = dict(scheme=scheme, K=K, N=N, M=M, floor=floor, old=old, default=default, times=[])

            def call(q, s, sg, cfg):
                if cfg["kernel"] != "mmv":  # the per-call path of a layer without mmv_sigma
                    return fp_ops.run_fp_gemm(x, q, s, rows, None, gs, K, E2M1, sc, blk, act, blk)
                return km.launch_mmv_fp(fk.quantize_activations(x, act, blk, gs), q, sg[0], rows, None, sg[1], cfg, nv=nv)

            for c in [old, default] + cands:
                t = ip._time_graph([lambda q=q, s=s, sg=sg, c=c: call(q, s, sg, c) for q, s, sg in ws])
                row["times"].append([c, t])
            t_old, t_def = row["times"][0][1], row["times"][1][1]
            best_c, best_t = min(row["times"][1:], key=lambda ct: ct[1])
            print(f"{scheme} K={K} N={N} M={M}: floor {floor:.1f} | old {t_old:.1f} [{old['kernel']}] ({t_old / floor:.2f}x) | "
                  f"mmv {t_def:.1f} ({t_def / floor:.2f}x floor, {t_old / t_def:.2f}x old) | best {best_t:.1f} "
                  f"[R{best_c['R']} w{best_c['warps']} s{best_c['split_k']} pf{int(best_c['pf'])}]", flush=True)
            res["sweep"].append(row)
        del ws
if args.out:
    json.dump(res, open(args.out, "w"), indent=1)
sys.exit(1 if bad else 0)
