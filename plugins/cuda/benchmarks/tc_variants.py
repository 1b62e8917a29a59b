"""Time the large-M tensor-core kernel (:mod:`quantlinear_triton.kernels_tc`) against the shipped paths and cuBLAS.

    python plugins/cuda/benchmarks/tc_variants.py results.json [--dry] [--budget SECONDS] [--variants a,b] [--no-bf16]

W4A16, groups of 128, symmetric (zero point 8), slab 32, on (K, N) = (4096, 14336), (8192, 28672) and
(14336, 4096) at M = 256, 1024 and 4096, fp16 activations:

* ``tc:<name>``: :func:`quantlinear_triton.kernels_tc.launch_tc` with the configurations in
  :data:`VARIANTS` (weight tile BN x token tile BM x k-step BK, warps, stages; ``dq0``: the fp32
  dequantization instead of the paired-fp16 one; ``sk2``: split-K 2);
* ``dot16`` and ``dqmm``: the shipped kernels (:func:`quantlinear_triton.kernels.launch`) with the
  configurations named in issue #4;
* ``cublas``: ``F.linear`` with a dense fp16 weight of the same shape.

Each number is device time per call from CUDA-graph replays over enough weight copies (packed or
dense) to exceed 150 MB (:func:`quantlinear_cuda.bench.time_graph`), so the weights stream from HBM.
``rel err``: max |y - ref| / max |ref| against the fp32 product with the fp32 dequantized weight
(:func:`quantlinear_triton.packing.dequantize_slabs`).  Then bf16 for the variants in
:data:`BF16_VARIANTS` (and dqmm, cuBLAS bf16).

Before timing, each variant is compiled once and its compiler report printed: registers and spills
(ptxas -v on the kernel's PTX, sm_90a), whether ptxas says the wgmma instructions are serialized
(C7515), and HGMMA / WARPGROUP.DEPBAR / WARPGROUP.ARRIVE counts in the SASS.

A table goes to stdout, rows as JSON to argv[1] (rewritten after every row).  ``--budget``: stop
timing (cleanly) after that many seconds.  ``--dry``: no GPU (a check of this script): Triton's
interpreter on the CPU (``TRITON_INTERPRET=1``), tiny shapes, each call made once, no timing.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

if "--dry" in sys.argv[1:]:
    os.environ["TRITON_INTERPRET"] = "1"

import torch
import torch.nn.functional as F

#: name -> launch_tc configuration
VARIANTS = {
    "n128m128k256s2": dict(BN=128, BM=128, BK=256, warps=8, stages=2),
    "n128m128k256s2pf0": dict(BN=128, BM=128, BK=256, warps=8, stages=2, prefetch=0),
    "n128m128k256s2g4": dict(BN=128, BM=128, BK=256, warps=8, stages=2, group_m=4),
    "n128m128k256s2g16": dict(BN=128, BM=128, BK=256, warps=8, stages=2, group_m=16),
    "n128m256k128s2": dict(BN=128, BM=256, BK=128, warps=8, stages=2),
    "n128m256k128s2pf0": dict(BN=128, BM=256, BK=128, warps=8, stages=2, prefetch=0),
    "n128m256k64s4": dict(BN=128, BM=256, BK=64, warps=8, stages=4),
    "n128m256k64s5": dict(BN=128, BM=256, BK=64, warps=8, stages=5),
    "n128m256k64s4pf0": dict(BN=128, BM=256, BK=64, warps=8, stages=4, prefetch=0),
    "n128m64k256s2": dict(BN=128, BM=64, BK=256, warps=8, stages=2),
    "n128m128k256s2sk2": dict(BN=128, BM=128, BK=256, warps=8, stages=2, split_k=2),
    "n128m128k128s3sk2": dict(BN=128, BM=128, BK=128, warps=8, stages=3, split_k=2),
    # bf16: dq 2 = bf16x2 pairs (scales rounded to bf16), dq 0/1 = fp32 dequantization
    "n128m256k64s4bf2": dict(BN=128, BM=256, BK=64, warps=8, stages=4, dq=2),
    "n128m128k256s2bf2": dict(BN=128, BM=128, BK=256, warps=8, stages=2, dq=2),
    "n128m128k256s2sk2bf2": dict(BN=128, BM=128, BK=256, warps=8, stages=2, split_k=2, dq=2),
}
#: variants timed in bf16 (the others in fp16 only); ``bf2`` variants only in bf16
BF16_VARIANTS = ("n128m256k64s4bf2", "n128m128k256s2bf2", "n128m128k256s2sk2bf2", "n128m256k64s4", "n128m128k256s2")
SHAPES = ((4096, 14336), (8192, 28672), (14336, 4096))
MS = (256, 1024, 4096)
DOT16 = {"kernel": "dot16", "BM": 128, "BN": 128, "split_k": 1, "warps": 8, "stages": 3, "swap": False, "group_m": 8}
DQMM = {"kernel": "dqmm", "BN": 64, "tpp": 4, "warps": 4}
BITS, SLAB, GROUP, ZP = 4, 32, 128, 8.0


def _tool(name: str) -> str | None:
    """A CUDA binary: Triton's bundled one, else the one on PATH."""
    import shutil

    import triton

    d = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for cand in ((name + "-blackwell", name) if name == "ptxas" else (name,)):
        p = os.path.join(d, cand)
        if os.path.isfile(p):
            return p
    return shutil.which(name)


def _ptxas_for(ptx: str) -> str | None:
    """The bundled ptxas whose PTX ISA version accepts ``ptx`` (Triton picks one per arch)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        t = get_ptxas(90)
        return getattr(t, "path", t)
    except Exception:
        return _tool("ptxas")


def compile_report(compiled) -> dict:
    """ptxas -v on the kernel's PTX (sm_90a) and SASS instruction counts of its cubin."""
    rep: dict = {}
    try:
        asm = compiled.asm
        rep["shared"] = int(getattr(compiled.metadata, "shared", 0))
        rep["num_regs_triton"] = int(getattr(compiled, "n_regs", 0) or 0)
        rep["n_spills_triton"] = int(getattr(compiled, "n_spills", 0) or 0)
        d = tempfile.mkdtemp()
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as f:
            f.write(asm["ptx"])
        ptxas = _ptxas_for(asm["ptx"])
        if ptxas:
            r = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(d, "k.cubin")],
                               capture_output=True, text=True, timeout=120)
            info = r.stdout + r.stderr
            rep["ptxas"] = ptxas
            rep["regs"] = [int(v) for v in re.findall(r"Used (\d+) registers", info)]
            rep["spill_stores"] = [int(v) for v in re.findall(r"(\d+) bytes spill stores", info)]
            rep["serialized"] = [ln.strip()[:240] for ln in info.splitlines() if "serialized" in ln]
            if r.returncode:
                rep["ptxas_error"] = info[-400:]
            if rep["regs"]:
                threads = 32 * int(getattr(compiled.metadata, "num_warps", 4))
                regs = -(-rep["regs"][0] // 8) * 8
                rep["ctas_per_sm"] = min(65536 // (regs * threads), 233472 // (rep["shared"] + 1024), 2048 // threads)
        cub = os.path.join(d, "t.cubin")
        with open(cub, "wb") as f:
            f.write(asm["cubin"])
        cuobjdump = _tool("cuobjdump")
        if cuobjdump:
            sass = subprocess.run([cuobjdump, "-sass", cub], capture_output=True, text=True, timeout=120).stdout
            rep["sass"] = {k: len(re.findall(p, sass)) for k, p in
                           (("HGMMA", r"HGMMA"), ("DEPBAR", r"WARPGROUP\.DEPBAR"), ("ARRIVE", r"WARPGROUP\.ARRIVE"),
                            ("LDL", r"\bLDL"), ("STL", r"\bSTL"))}
    except Exception as e:  # a report, never a failure of the benchmark
        rep["error"] = f"{type(e).__name__}: {e}"[:300]
    return rep


def main(path: str, dry: bool = False, budget: float = 1e9, only: list[str] | None = None, bf16: bool = True) -> None:
    from quantlinear_triton import kernels as TK
    from quantlinear_triton import kernels_tc as TC
    from quantlinear_triton import launch as FL
    from quantlinear_triton.packing import SlabMeta, dequantize_slabs

    t0 = time.time()
    shapes, ms = SHAPES, MS
    variants = {k: v for k, v in VARIANTS.items() if not only or k in only}
    if dry:  # interpreter on the CPU: tiny shapes, every call made once
        dev = torch.device("cpu")
        bw = 1e12
        shapes, ms = ((512, 192),), (130,)
        name = "cpu (TRITON_INTERPRET=1)"

        def time_graph(fns, **kw):
            for f in fns:
                f()
            return 1.0
    else:
        from quantlinear_cuda.bench import copy_bandwidth, time_graph

        dev = torch.device("cuda")
        bw = copy_bandwidth(dev)
        name = torch.cuda.get_device_name()
    import triton

    print(f"{name}, copy bandwidth {bw / 1e9:.0f} GB/s, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    out = dict(device=name, torch=torch.__version__, triton=triton.__version__, copy_bandwidth=bw, variants=variants,
               rows=[], compile={})

    def save():
        with open(path, "w") as f:
            json.dump(out, f, indent=1)

    def over() -> bool:
        return time.time() - t0 > budget

    gen = torch.Generator(device=dev).manual_seed(0)
    print(f"{'dtype':5} {'K':>5} {'N':>6} {'M':>5}  {'variant':22} {'us':>8} {'x cublas':>8} {'rel err':>8}", flush=True)
    for dt in ((torch.float16, torch.bfloat16) if bf16 else (torch.float16,)):
        dts = str(dt).split(".")[-1]
        vset = ({k: v for k, v in variants.items() if not k.endswith("bf2")} if dt == torch.float16
                else {k: v for k, v in variants.items() if k in BF16_VARIANTS})
        for K, N in shapes:
            if over():
                break
            KW = -(-K // (SLAB * 32 // BITS)) * SLAB
            G = -(-K // GROUP)
            wbytes = N * K * BITS // 8 + G * N * 2
            copies = 1 if dry else max(2, math.ceil(150e6 / wbytes))
            ws = []
            for _ in range(copies):
                q = torch.randint(-2**31, 2**31 - 1, (N, KW), dtype=torch.int32, device=dev, generator=gen)
                s = (torch.rand(G, N, device=dev, generator=gen) * 0.02 + 0.001).half()
                ws.append((q, s))
            W = dequantize_slabs(ws[0][0], ws[0][1], None, int(ZP), SlabMeta(BITS, SLAB, GROUP, K, N))
            dcopies = 1 if dry else max(2, math.ceil(150e6 / (N * K * 2)))
            dense = [torch.randn(N, K, device=dev, generator=gen).to(dt) * 0.02 for _ in range(dcopies)]
            for M in ms:
                if over():
                    print(f"budget of {budget:.0f}s spent: stopping", flush=True)
                    break
                x = torch.randn(M, K, device=dev, generator=gen).to(dt)
                ref = x.float() @ W.t()
                rmax = float(ref.abs().max())
                cub = time_graph([lambda d=d, x=x: F.linear(x, d) for d in dense], target_ms=20.0, batches=3)
                base = dict(dtype=dts, K=K, N=N, M=M)
                out["rows"].append(dict(base, variant="cublas", us=cub))
                print(f"{dts:5} {K:5} {N:6} {M:5}  {'cublas':22} {cub:8.1f} {1.0:8.2f}", flush=True)
                runs = [("dot16", lambda q, s, x=x: TK.launch(x, q, s, None, None, BITS, SLAB, GROUP, K, ZP, DOT16)),
                        ("dqmm", lambda q, s, x=x: TK.launch(x, q, s, None, None, BITS, SLAB, GROUP, K, ZP, DQMM))]
                runs += [(f"tc:{vn}", lambda q, s, x=x, cfg=cfg: TC.launch_tc(x, q, s, None, None, BITS, SLAB, GROUP, K, ZP, cfg))
                         for vn, cfg in vset.items()]
                for vname, fn in runs:
                    if over():
                        break
                    ckey = f"{vname}:{dts}"
                    try:
                        y = fn(*ws[0])
                        if vname.startswith("tc:") and ckey not in out["compile"] and not dry:
                            rep = compile_report(FL.compiled(TC._tc_kernel))  # (its last kernel[grid] compile)
                            rep["constexprs"] = TC._resolve(vset[vname[3:]], BITS, SLAB, GROUP, K, dt, True)
                            out["compile"][ckey] = rep
                            print(f"   compile {ckey}: regs {rep.get('regs')} spills {rep.get('spill_stores')} smem {rep.get('shared')} "
                                  f"ctas/SM {rep.get('ctas_per_sm')} sass {rep.get('sass')} serialized {rep.get('serialized')} "
                                  f"{rep.get('error', '')}", flush=True)
                        err = float((y.float() - ref).abs().max()) / rmax
                        us = time_graph([lambda q=q, s=s: fn(q, s) for q, s in ws], target_ms=20.0, batches=3)
                    except Exception as e:  # report, keep going
                        msg = f"{type(e).__name__}: {e}"[:300]
                        print(f"{dts:5} {K:5} {N:6} {M:5}  {vname:22} FAILED {msg}", flush=True)
                        out["rows"].append(dict(base, variant=vname, error=msg))
                        continue
                    print(f"{dts:5} {K:5} {N:6} {M:5}  {vname:22} {us:8.1f} {us / cub:8.2f} {err:8.1e}", flush=True)
                    out["rows"].append(dict(base, variant=vname, us=us, x_cublas=us / cub, rel_err=err))
                    save()
                del x, ref
            del ws, W, dense
            if not dry:
                torch.cuda.empty_cache()
    # the shipped tensor-core kernel's compiler report, for comparison (from the direct launcher's cache)
    if not dry:
        try:
            for key, ck in list(FL._compiled.items()):
                nm = getattr(getattr(ck, "metadata", None), "name", "") or str(getattr(ck, "name", ""))
                if "dot16" in nm and f"shipped:{nm}" not in out["compile"]:
                    rep = compile_report(ck)
                    out["compile"][f"shipped:{nm}"] = rep
                    print(f"   compile shipped {nm}: regs {rep.get('regs')} spills {rep.get('spill_stores')} smem {rep.get('shared')} "
                          f"sass {rep.get('sass')} serialized {rep.get('serialized')}", flush=True)
        except Exception as e:
            print(f"   (no report of the shipped kernel: {type(e).__name__}: {e})", flush=True)
    # summary: the best tc variant per (dtype, shape, M), and the geometric mean of each over every fp16 row
    rows = [r for r in out["rows"] if "us" in r]
    print("\nbest per row (x cublas):", flush=True)
    keys = sorted({(r["dtype"], r["K"], r["N"], r["M"]) for r in rows})
    for key in keys:
        rs = [r for r in rows if (r["dtype"], r["K"], r["N"], r["M"]) == key and r["variant"].startswith("tc:")]
        others = {r["variant"]: r.get("x_cublas", 1.0) for r in rows if (r["dtype"], r["K"], r["N"], r["M"]) == key
                  and not r["variant"].startswith("tc:")}
        if rs:
            b = min(rs, key=lambda r: r["us"])
            print(f"  {key}: {b['variant']} {b['us']:.1f} us x{b['x_cublas']:.2f} | " +
                  " ".join(f"{k} x{v:.2f}" for k, v in others.items()), flush=True)
    gm = {}
    for v in variants:
        xs = [r["x_cublas"] for r in rows if r["variant"] == f"tc:{v}" and r["dtype"] == "float16"]
        if xs:
            gm[v] = math.exp(sum(math.log(t) for t in xs) / len(xs))
    out["geomean_x_cublas_fp16"] = gm
    print("geomean x cublas (fp16): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(gm.items(), key=lambda kv: kv[1])), flush=True)
    print(f"total {time.time() - t0:.0f}s", flush=True)
    save()


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0].startswith("--"):
        sys.exit(__doc__)
    budget = float(args[args.index("--budget") + 1]) if "--budget" in args else 1e9
    only = args[args.index("--variants") + 1].split(",") if "--variants" in args else None
    main(args[0], "--dry" in args, budget, only, "--no-bf16" not in args and "--dry" not in args)  # (the interpreter mis-loads bf16)
