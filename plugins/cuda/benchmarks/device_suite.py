#!/usr/bin/env python3
"""One-call GPU session for the CUDA plugin: GPU tests, tuning + benchmarks, target check.

    python plugins/cuda/benchmarks/device_suite.py --out DIR [--stages tests,w4,others] [--quick]

Writes into DIR: pytest.log, w4_fp16.json/.png, others.json, tune.json, summary.txt.
The target check reads the JSON rows (see check_targets); nothing in it is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LARGE = ((4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192))


def log(msg: str) -> None:
    print(msg, flush=True)


def run_tests(out: Path) -> None:
    t = time.time()
    env = dict(os.environ, QUANTLINEAR_CUDA_TUNE_CACHE="off")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "400", "plugins/cuda/tests", "-rs"],
                       capture_output=True, text=True, env=env)
    (out / "pytest.log").write_text(r.stdout + "\n" + r.stderr)
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-25:])
    log(f"pytest rc={r.returncode} in {time.time() - t:.0f}s\n{tail}")


def profile_eager(out: Path) -> None:
    """Where the eager time of one small call goes (CPU-bound shape), plus a cProfile listing."""
    import torch
    import torch.nn.functional as F

    from quantlinear import LayerSpec, get_scheme
    from quantlinear.benchutil import random_int_weights
    from quantlinear_cuda import ops, tune
    from quantlinear_cuda.bench import host_profile, time_eager
    from quantlinear_triton import kernels as tk
    from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear

    K = N = 512
    sc = get_scheme("W4A16")
    w = random_int_weights(K, N, sc)
    w.qweight, w.zeros, w.scales = w.qweight.cuda(), w.zeros.cuda(), w.scales.cuda()
    layer = TritonWNA16Linear.from_weights(LayerSpec(sc, "gptq_v2", K, N, dtype=torch.float16, device=torch.device("cuda")), w)
    x = torch.randn(1, K, device="cuda", dtype=torch.float16)
    Wd = torch.randn(N, K, device="cuda", dtype=torch.float16)
    m = layer.meta
    cfg = {"kernel": "gemv", "BM": 1, "BN": 32, "split_k": 1, "warps": 4, "stages": 2}
    cfg_split = dict(cfg, split_k=4)
    y = torch.empty(1, N, device="cuda", dtype=torch.float16)
    kern = {}

    def raw():
        tk._gemv_kernel[(N // 32, 1, 1)](x, layer.w_slab, layer.w_scales, layer.w_scales, layer.w_scales, y, y, y, 1, N, K, m.words_per_row, m.group_size,
                                         m.k_tiles, 1, 8388616.0, BITS=4, VPW=8, SLAB=32, SPG=4, BM=1, BN=32, HAS_ZEROS=False, HAS_BIAS=False,
                                         USE_SPLIT=False, EVEN_K=True, MAX_SPLIT=64, num_warps=4, num_stages=2)

    def t(fn, n=400):
        for _ in range(17):  # + time_eager's own 3: 20 warm-up calls
            fn()
        return time_eager(fn, n)

    args = (x, layer.w_slab, layer.w_scales, layer.w_zeros, layer.bias, m.bits, m.group_size, m.in_features, m.slab, layer.zero_point)
    res = {
        "F.linear": t(lambda: F.linear(x, Wd)),
        "torch.empty": t(lambda: torch.empty(1, N, device="cuda", dtype=torch.float16)),
        "raw _gemv_kernel[grid]": t(raw),
        "triton_kernels.launch gemv": t(lambda: tk.launch(x, layer.w_slab, layer.w_scales, None, None, 4, 32, m.group_size, K, 8.0, cfg)),
        "triton_kernels.launch gemv split4": t(lambda: tk.launch(x, layer.w_slab, layer.w_scales, None, None, 4, 32, m.group_size, K, 8.0, cfg_split)),
        "TUNER.get": t(lambda: tune.TUNER.get(x.device, layer.problem, 1)),
        "ops.run_gemm": t(lambda: ops.run_gemm(*args, problem=layer.problem)),
        "layer.compute": t(lambda: layer.compute(x)),
        "layer(x)": t(lambda: layer(x)),
        "torch.ops wna16_gemm": t(lambda: torch.ops.quantlinear_cuda.wna16_gemm(*args)),
    }
    lines = [f"{k:<36} {v:8.1f} us/call" for k, v in res.items()]
    text = "\n".join(lines) + "\n" + host_profile(lambda: layer(x), 300, 22)
    (out / "profile.txt").write_text(text)
    log("\n".join(lines))


def bench(scheme, dtype, shapes, ms, kernels=()):
    import torch

    from quantlinear.benchutil import BenchOptions, add_ratios
    from quantlinear_cuda.bench import DENSE, run

    opts = BenchOptions(device="cuda", scheme=scheme, dtype=dtype, shapes=tuple(shapes), ms=tuple(ms), kernels=tuple(kernels), iters=30)
    t = time.time()
    rows = run(opts)
    log(f"bench {scheme} {dtype} done in {time.time() - t:.0f}s")
    d = add_ratios(rows, DENSE)
    for r in d:
        r["scheme"], r["dtype"] = scheme, str(dtype).replace("torch.", "")
    return d, opts


def check_targets(rows: list[dict]) -> list[str]:
    """Each target from the issue, evaluated on the measured rows."""
    out = []

    def get(kernel, K, N, M, scheme="W4A16", dtype="float16"):
        for r in rows:
            if (r["kernel"], r["K"], r["N"], r["M"], r["scheme"], r["dtype"]) == (kernel, K, N, M, scheme, dtype):
                return r
        return None

    def t(r):
        return r["device_us"] if r else None

    def verdict(ok):
        return "MET " if ok else "MISS"

    for K, N in LARGE:
        tri1 = get("cuda.triton", K, N, 1)
        if tri1 and t(tri1):
            x = t(tri1) / tri1["floor_us"]
            out.append(f"{verdict(x <= 1.25)} W4 fp16 M=1 {K}x{N}: {t(tri1):.1f}us = {x:.2f}x floor ({1 / x * 100:.0f}% of copy bw)")
        tri16 = get("cuda.triton", K, N, 16)
        if tri1 and tri16 and t(tri1) and t(tri16):
            x = t(tri16) / t(tri1)
            out.append(f"{verdict(x <= 1.4)} W4 fp16 M=16/M=1 {K}x{N}: {x:.2f}")
        for M in sorted({r["M"] for r in rows if r["M"] >= 256}):
            tri, cub = get("cuda.triton", K, N, M), get("peer.cublas", K, N, M)
            if tri and cub and t(tri) and t(cub):
                x = t(tri) / t(cub)
                out.append(f"{verdict(x <= 1.1)} W4 fp16 M={M} {K}x{N}: {x:.2f}x cuBLAS fp16 ({t(tri):.0f} vs {t(cub):.0f} us)")
        for M in sorted({r["M"] for r in rows}):
            tri = get("cuda.triton", K, N, M)
            peers = [r for r in rows if r["kind"] == "peer" and r["kernel"] != "peer.cublas" and (r["K"], r["N"], r["M"], r["scheme"], r["dtype"]) == (K, N, M, "W4A16", "float16") and r["device_us"]]
            if tri and t(tri) and peers:
                best = min(peers, key=lambda r: r["device_us"])
                out.append(f"{verdict(t(tri) <= best['device_us'])} W4 fp16 M={M} {K}x{N}: triton {t(tri):.1f}us vs best quantized peer {best['kernel']} {best['device_us']:.1f}us")
    for K, N in LARGE:
        tri, cub = get("cuda.triton", K, N, 1), get("peer.cublas", K, N, 1)
        if tri and cub and tri["eager_us"] and cub["eager_us"] and t(tri) and t(cub):
            # host overhead = eager wall time beyond the device time (0 when the GPU is the bottleneck)
            o_t, o_c = max(0.0, tri["eager_us"] - t(tri)), max(0.0, cub["eager_us"] - t(cub))
            out.append(f"{verdict(o_t - o_c <= 10)} eager overhead M=1 {K}x{N}: triton {tri['eager_us']:.1f}us eager / {t(tri):.1f}us device, "
                       f"F.linear {cub['eager_us']:.1f} / {t(cub):.1f}: overhead +{o_t:.1f} vs +{o_c:.1f} us")
        for M in (1, 16, 256, 4096):
            f16, b16 = get("cuda.triton", K, N, M), get("cuda.triton", K, N, M, dtype="bfloat16")
            if f16 and b16 and t(f16) and t(b16):
                x = t(b16) / t(f16)
                out.append(f"{verdict(x <= 1.1)} bf16/fp16 M={M} {K}x{N}: {x:.2f}")
        w8 = get("cuda.triton", K, N, 1, scheme="W8A16")
        if w8 and t(w8):
            x = t(w8) / w8["floor_us"]
            out.append(f"{verdict(x <= 1.25)} W8 fp16 M=1 {K}x{N}: {x:.2f}x floor ({1 / x * 100:.0f}% of copy bw)")
    errs = [r for r in rows if r["kernel"] == "cuda.triton" and r["dtype"] == "float16" and r["max_rel_err"] is not None]
    if errs:
        worst = max(errs, key=lambda r: r["max_rel_err"])
        out.append(f"{verdict(worst['max_rel_err'] <= 1e-3)} fp16 numerics: worst max rel err {worst['max_rel_err']:.2e} ({worst['scheme']} {worst['K']}x{worst['N']} M={worst['M']})")
    errs = [r for r in rows if r["kernel"] == "cuda.triton" and r["dtype"] == "bfloat16" and r["max_rel_err"] is not None]
    if errs:
        worst = max(errs, key=lambda r: r["max_rel_err"])
        out.append(f"info bf16 numerics: worst max rel err {worst['max_rel_err']:.2e}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-results"))
    ap.add_argument("--stages", default="tests,w4,others")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QUANTLINEAR_CUDA_TUNE_CACHE", str(out / "tune.json"))
    import torch

    from quantlinear.benchutil import DEFAULT_MS, DEFAULT_SHAPES, format_table, plot, write_json

    log(f"torch {torch.__version__} cuda {torch.version.cuda} gpu {torch.cuda.get_device_name()}")
    stages = set(args.stages.split(","))
    all_rows: list[dict] = []
    if "tests" in stages and "final" not in stages:
        run_tests(out)
    if "profile" in stages:
        try:
            profile_eager(out)
        except Exception as e:
            log(f"profile failed: {type(e).__name__}: {e}")
    if "w4" in stages:
        shapes = (DEFAULT_SHAPES if not args.quick else ((4096, 4096),) + LARGE)
        rows, opts = bench("W4A16", torch.float16, shapes, DEFAULT_MS,
                           kernels=("cuda.*", "peer.cublas", "peer.gemlite") if args.quick else ())
        all_rows += rows
        write_json(out / "w4_fp16.json", rows, opts, {"device": torch.cuda.get_device_name()})
        try:
            plot(rows, out / "w4_fp16.png", title=f"W4A16 g128 sym fp16 on {torch.cuda.get_device_name()}")
        except Exception as e:
            log(f"plot failed: {e}")
        log(format_table(rows))
    if "others" in stages:
        other = []
        plan = [("W4A16", torch.bfloat16, LARGE, (1, 16, 256, 4096), ("cuda.*", "peer.cublas", "peer.gemlite")),
                ("W8A16", torch.float16, LARGE, (1, 16, 256), ("cuda.*", "peer.cublas", "peer.gemlite"))]
        if not args.quick:
            plan += [(s, torch.float16, LARGE[:2], (1, 16, 256), ("cuda.*", "peer.cublas")) for s in ("W3A16", "W2A16")]
        for sch, dt, shp, ms, kern in plan:
            r, _ = bench(sch, dt, shp, ms, kernels=kern)
            other += r
            (out / "others.json").write_text(json.dumps(other, indent=1, default=str))
        all_rows += other
        log(format_table(other))
    if "final" in stages:
        final = []
        plan = [("W4A16", torch.float16, LARGE, (1, 16, 256, 4096), ("cuda.*", "peer.cublas", "peer.gemlite")),
                ("W4A16", torch.bfloat16, LARGE, (1, 16), ("cuda.*", "peer.cublas")),
                ("W8A16", torch.float16, LARGE, (1,), ("cuda.*", "peer.cublas"))]
        for sch, dt, shp, ms, kern in plan:
            r, _ = bench(sch, dt, shp, ms, kernels=kern)
            final += r
            (out / "final.json").write_text(json.dumps(final, indent=1, default=str))
        all_rows += final
        log(format_table(final))
    if (out / "w4_fp16.json").is_file() and "w4" not in stages and "final" not in stages:
        all_rows += json.loads((out / "w4_fp16.json").read_text())["rows"]
    if "tests" in stages and "final" in stages:
        run_tests(out)
    summary = check_targets(all_rows)
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    log("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
