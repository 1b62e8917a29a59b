"""Time the float-scheme kernel variants side by side on one CUDA GPU (H100: well under a minute).

    python plugins/cuda/benchmarks/fp_variants.py results.json [--quick]

For MXFP4, NVFP4, MXINT4, MXFP8 and FPW8A16 (fp16 activations) at (K, N) = (4096, 14336) and
(8192, 28672), with the kernels imported directly (:mod:`quantlinear_triton.fp_kernels`, not the
plugin registry):

* M = 1 and M = 16: ``gemv`` (fp32 decode), ``gemv16`` (paired-fp16 decode, fp16 sums of 4 products
  per block: ``psum`` 4, the default), ``gemv16p1`` (``psum`` 1: each fp16 product to fp32), for the
  4-bit-activation schemes ``fold`` (the activation block scales folded into the weight's,
  activations as packed fp16 pairs; ``--sweep``: at M = 1 also a BN / split-K / warps sweep
  ``f<BN>s<split>w<warps>``), ``g16prev`` / ``foldprev`` (the earlier M = 1 tiles: BN 64, 128 lanes,
  split-K to ~4 programs per SM)
  and, at M = 16, the skinny ``dot`` default;
* M >= 64 (e.g. ``--ms=64,256,1024,4096``): ``default`` (the configuration the layer runs: ``tc`` for 65..512 rows on
  Hopper), ``dot`` (the ``tl.dot`` kernel's large tile, decode in registers), ``dqmm`` (dequantize into a temporary,
  then cuBLAS), ``cublas`` (the dense fp16 weight) and, with ``--tc-sweep``, ``tc``
  (:mod:`quantlinear_triton.fp_kernels_tc`) in a few configurations (``tcBK128``, ``tcBM64``, ...).

Each call is the whole op (activation quantization where the scheme has it, then the kernel), timed
with CUDA graphs over enough weight copies to exceed 3x L2 (weights stream from HBM), against the
floor: the bytes the kernel reads for the weight (codes + scale bytes + row scales) over the copy
bandwidth measured in the same run.  ``rel err``: max |y - ref| / max |ref| against the fp32 product
of the scheme's quantized activations and the fp32 dequantized weight.  A table goes to stdout, the
rows as JSON to argv[1].  ``--quick``: the first shape only.  ``--dry``: no GPU (a check of this
script): Triton's interpreter on the CPU (``TRITON_INTERPRET=1``), tiny shapes, no timing.
``--schemes=MXFP4,NVFP4``: those schemes only; ``--ms=1,16``: those M only; ``--sweep``: the M = 1
BN / split / warps sweep of the folded GEMV; ``--split-sweep``: the default configuration at split-K 1/2/4/8 (M > 1);
``--shapes=14336x4096,...``: other (K, N) shapes; ``--dtype=bfloat16``.
"""

from __future__ import annotations

import json
import math
import sys
import time

import torch

from quantlinear import fpquant
from quantlinear.benchutil import random_float_weights
from quantlinear.scheme import get_scheme
from quantlinear_cuda import device as _device
from quantlinear_cuda.bench import copy_bandwidth, time_graph
from quantlinear_cuda.fp_ops import SPACE
from quantlinear_triton import fp_kernels as FK
from quantlinear_triton import fp_packing as P
from quantlinear_triton.fp_tune import FPProblem

SCHEMES = ("MXFP4", "NVFP4", "MXINT4", "MXFP8", "FPW8A16")
SHAPES = ((4096, 14336), (8192, 28672))
SWEEP = "--sweep" in sys.argv
TC_SWEEP = "--tc-sweep" in sys.argv
SPLIT_SWEEP = "--split-sweep" in sys.argv
#: ``--shapes=KxN,...``: other shapes than SHAPES
SHAPES_ARG = next((tuple(tuple(int(v) for v in kn.split("x")) for kn in a.split("=", 1)[1].split(","))
                   for a in sys.argv if a.startswith("--shapes=")), None)
#: ``--dtype=bfloat16``: bf16 activations (default fp16; the fp16-only ``gemv16`` / ``fold`` variants then run the GEMV)
DTYPE = getattr(torch, next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--dtype=")), "float16"))


def variants(p: FPProblem, props, M: int, fold: bool = False) -> list[tuple[str, dict]]:
    if SPLIT_SWEEP and M > 1:  # the default configuration at split-K 1, 2, 4, 8
        base = SPACE.default_config(p, M, props)
        return [("default", base)] + [(f"split{s}", dict(base, split_k=s)) for s in (1, 2, 4, 8) if s != base.get("split_k")]
    if M <= 16:
        gemv = SPACE.gemv(p, props, min(M, 4), 64)  # the fp32 GEMV (rows blocked by up to 4)
        prev = dict(SPACE.gemv(p, props, 1, 64), kernel="gemv16")  # the earlier M = 1 default (BN 64, ~4 programs a unit)
        g16 = SPACE.default_config(p, 1, props) if SPACE.gemv16_default(p) else prev
        out = [("gemv", gemv), ("gemv16", g16), ("g16prev", prev), ("gemv16p1", dict(g16, psum=1))]
        if fold:  # 4-bit activations folded (gemv16 psum 4 with split activations): the default tiles, then a sweep
            out += [("fold", dict(g16, fold=1)), ("foldprev", dict(prev, fold=1))]
            if M == 1 and SWEEP:
                for BN in (32, 64, 128):
                    base = SPACE.gemv(p, props, 1, BN)["split_k"]
                    for sp in sorted({max(1, base // 2), base, min(16, 2 * base)}):
                        for warps in ((4, 8) if BN == 128 else (4,)):
                            if (BN, sp, warps) != (64, g16["split_k"], g16["warps"]):
                                out.append((f"f{BN}s{sp}w{warps}", dict(g16, fold=1, BN=BN, split_k=sp, warps=warps)))
        if M > 1:
            out.append(("default", SPACE.default_config(p, M, props, allow_dqmm=False)))
        if M > 1 and TC_SWEEP and p.dtype != "float32":  # tc with a padded 64-row tile, and narrower ones
            base = SPACE.tc_config(p, 64, SPACE.units(props))
            out += [("tc64", base), ("tc64sk1", dict(base, split_k=1)), ("tc64sk4", dict(base, split_k=4))]
            for bm in sorted({16, 32} & {max(16, 1 << (M - 1).bit_length()), 32}):
                out += [(f"tc{bm}", dict(base, BM=bm)), (f"tc{bm}bn64", dict(base, BM=bm, BN=64, warps=4))]
        return out
    dot = SPACE.dot(p, props, M, *SPACE.large_tile, SPACE.units(props), cap=4, lanes=256)  # the tl.dot kernel's large tile
    out = [("default", SPACE.default_config(p, M, props)), ("dot", dot), ("dqmm", {"kernel": "dqmm", "BN": 64, "warps": 4})]
    if p.dtype != "float32" and TC_SWEEP:  # the large-M tensor-core kernel (fp_kernels_tc): the int tc default, variants
        tiles = -(-M // 128) * -(-p.N // 128)
        base = {"kernel": "tc", "BN": 128, "BM": 128, "BK": 256, "warps": 8, "stages": 2, "group_m": 8, "prefetch": 1,
                "split_k": 2 if tiles < props.sm_count else 1}
        out.append(("tc", base))
        for name, over in (("tcBK128", {"BK": 128}), ("tcBM64", {"BM": 64}), ("tcBM256", {"BM": 256, "BK": 128, "stages": 2}),
                           ("tcBN64", {"BN": 64, "warps": 4}), ("tcs3", {"stages": 3}), ("tcsk1", {"split_k": 1}),
                           ("tcsk2", {"split_k": 2})):
            cfg = dict(base, **over)
            if cfg != base and (M >= 256 or cfg["BM"] <= 128):
                out.append((name, cfg))
    return out


def main(path: str, quick: bool = False, dry: bool = False, schemes: tuple[str, ...] = SCHEMES, ms: tuple[int, ...] | None = None) -> None:
    global time_graph
    shapes, ms = SHAPES, ms or (1, 16, 256, 4096)
    if SHAPES_ARG:
        shapes = SHAPES_ARG
    if dry:  # interpreter on the CPU: tiny shapes, every call made once, no timing
        dev, props, bw = torch.device("cpu"), _device.INTERPRETER_PROPS, 1e12
        shapes, ms = ((512, 96),), tuple(m for m in (1, 16, 40) if m in ms or m == 40 and 256 in ms)

        def time_graph(fns, **kw):
            for f in fns:
                f()
            return 1.0
    else:
        dev = torch.device("cuda")
        props = _device.device_props(dev)
        bw = copy_bandwidth(dev)
    fp8_elem = P.E4M3_NV if props.capability >= (8, 9) else P.E4M3
    print(f"{props.name} ({props.arch}, {props.sm_count} SMs), copy bandwidth {bw / 1e9:.0f} GB/s, torch {torch.__version__}")
    dt = DTYPE
    rows = []
    t_start = time.time()
    print(f"{'scheme':8} {'K':>5} {'N':>6} {'M':>5}  {'variant':8} {'us':>9} {'x floor':>8} {'rel err':>8}  config")
    for K, N in shapes[:1] if quick else shapes:
        for name in schemes:
            sc = get_scheme(name)
            w = random_float_weights(sc, K, N, seed=0)
            kind = fpquant.act_quant_kind(sc)
            meta, t = P.prepare_float(w, kind, fp8_elem=fp8_elem)
            t = {k: (v.to(dev) if v is not None else None) for k, v in t.items()}
            nbytes = sum(t[k].numel() * t[k].element_size() for k in ("qweight", "scales", "row_scales") if t[k] is not None)
            copies = max(1, math.ceil(3 * props.l2_bytes / nbytes))
            sets = [t] + [{k: (v.clone() if v is not None else None) for k, v in t.items()} for _ in range(copies - 1)]
            W = w.dequantize().to(dev)
            p = FPProblem(meta.elem, meta.scale, meta.slab, meta.bits, str(dt).split(".")[1], N, K)
            floor_us = nbytes / bw * 1e6
            for M in ms:
                x = torch.randn(M, K, device=dev, dtype=dt)
                xr = fpquant.act_qdq(x, sc, weights_to_dev(w, dev)).float() if kind is not None else x.float()
                ref = xr @ W.t()
                # the folded variants compute with the fp32 quantized activations (no rounding to fp16)
                ref32 = (fpquant.act_qdq(x.float(), sc, weights_to_dev(w, dev)) @ W.t()) if kind is not None else ref
                del xr
                fold = FK.fold_fits(meta.elem, meta.scale, meta.block, meta.act, meta.act_block, dt)
                if M >= 64 and not dry:  # the cuBLAS peer: the same weight dense in fp16
                    Wd = [W.to(dt) for _ in range(2)]
                    us = time_graph([lambda wd=wd: torch.nn.functional.linear(x, wd) for wd in Wd], target_ms=20.0, batches=3)
                    print(f"{name:8} {K:5} {N:6} {M:5}  {'cublas':8} {us:9.1f} {us / floor_us:8.2f} {'-':>8}  dense {dt} F.linear", flush=True)
                    rows.append(dict(scheme=name, K=K, N=N, M=M, variant="cublas", us=us, floor_us=floor_us, x_floor=us / floor_us))
                    del Wd
                for vname, cfg in variants(p, props, M, fold):
                    def call(tt, cfg=cfg, x=x):
                        if cfg.get("fold"):
                            xp, xs = FK.quantize_activations_split(x, meta.act, meta.act_block, tt["act_scale"])
                            return FK.launch(xp, tt["qweight"], tt["scales"], tt["row_scales"], None, meta.elem, meta.scale,
                                             meta.block, cfg, x_scales=xs)
                        xq = FK.quantize_activations(x, meta.act, meta.act_block, tt["act_scale"])
                        return FK.launch(xq, tt["qweight"], tt["scales"], tt["row_scales"], None, meta.elem, meta.scale,
                                         meta.block, cfg)
                    try:
                        y = call(t)
                        r = ref32 if cfg.get("fold") else ref
                        err = float((y.float() - r).abs().max() / r.abs().max())
                        us = time_graph([lambda tt=tt: call(tt) for tt in (sets if M < 256 else sets[:2])], target_ms=20.0, batches=3)
                    except Exception as e:  # report, keep going
                        print(f"{name:8} {K:5} {N:6} {M:5}  {vname:8} FAILED {type(e).__name__}: {str(e)[:200]}", flush=True)
                        rows.append(dict(scheme=name, K=K, N=N, M=M, variant=vname, error=f"{type(e).__name__}: {e}"[:500]))
                        continue
                    cfg_s = " ".join(f"{k}={v}" for k, v in cfg.items())
                    print(f"{name:8} {K:5} {N:6} {M:5}  {vname:8} {us:9.1f} {us / floor_us:8.2f} {err:8.1e}  {cfg_s}", flush=True)
                    rows.append(dict(scheme=name, K=K, N=N, M=M, variant=vname, us=us, floor_us=floor_us, x_floor=us / floor_us,
                                     rel_err=err, config=cfg, copies=copies if M < 256 else min(2, copies)))
                del x, ref, ref32
            del sets, t, W
            if not dry:
                torch.cuda.empty_cache()
    print(f"total {time.time() - t_start:.0f}s")
    with open(path, "w") as f:
        json.dump(dict(device=props.name, arch=props.arch, torch=torch.__version__, copy_bandwidth=bw, dtype=str(dt).split(".")[1], rows=rows),
                  f, indent=1)


def weights_to_dev(w, dev):
    from quantlinear_cuda.bench import weights_to

    return weights_to(w, dev)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    opts = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--") and "=" in a)
    main(sys.argv[1], "--quick" in sys.argv[2:], "--dry" in sys.argv[2:],
         tuple(opts["schemes"].split(",")) if "schemes" in opts else SCHEMES,
         tuple(int(m) for m in opts["ms"].split(",")) if "ms" in opts else None)
