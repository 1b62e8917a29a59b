#!/usr/bin/env python3
"""Programmatic dependent launch (PDL) at M = 1: does overlapping a GEMV's start with the previous kernel's tail
close the gap to the floor?  (Hopper+; one GPU, ~1 min.)

    python plugins/cuda/benchmarks/pdl_probe.py [--json PATH] [--shapes=KxN,...]

For each shape, on the benchmark's protocol (CUDA-graph replays over weight copies > 150 MB, so every call reads
HBM; consecutive calls are back to back as consecutive layers are), three launch modes of the same kernel:

* ``pdl0``: a normal launch (the kernel starts when the previous one has finished and its writes are flushed);
* ``pdl1``: launched with PDL, the kernel waits (``griddepcontrol.wait``) before anything else, then lets the next
  kernel launch (``griddepcontrol.launch_dependents``): the launch and block scheduling overlap the previous
  kernel's tail.  This is what the decode kernels ship (``quantlinear_triton.kernels.pdl_ok``);
* ``pdl2`` (the read-only kernel only): as ``pdl1``, but each program reads its first block *before* the wait, so the
  stream starts while the previous kernel drains -- safe only for bytes no recent kernel wrote; not shipped.

Kernels: a read-only kernel (``read_floor.py``'s: the bytes of a W4 g128 weight, nothing computed), the int W4 g128
``gemv16`` with the shipped configuration, and the MXFP4 / NVFP4 folded GEMV (activation quantization + GEMV, the
op the layer runs; with PDL both kernels are launched with it).  Outputs with PDL are compared bit for bit with
those without, also where the GEMV's input is written by the kernel just before it (a chain ``x -> x * 1 -> gemv``,
in a graph and eagerly).
"""
from __future__ import annotations

import json
import math
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip  # noqa: E402
from quantlinear_cuda import device as _device  # noqa: E402
from quantlinear_cuda import tune  # noqa: E402
from quantlinear_cuda.bench import copy_bandwidth, time_graph  # noqa: E402
from quantlinear_triton import kernels as tk  # noqa: E402
from quantlinear_triton.kernels import _pdl_enter  # noqa: E402

SHAPES = ((4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192))
SHAPES = next((tuple(tuple(int(v) for v in kn.split("x")) for kn in a.split("=", 1)[1].split(","))
               for a in sys.argv if a.startswith("--shapes=")), SHAPES)


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _read_kernel(p, out, n, per_prog, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    start = pid * per_prog
    end = tl.minimum(start + per_prog, n)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    idx = start + tl.arange(0, BLOCK)
    if PDL == 2:
        acc ^= tl.load(p + idx, mask=idx < end, other=0)
        start += BLOCK
    _pdl_enter(PDL)
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        acc ^= tl.load(p + idx, mask=idx < end, other=0)
    tl.store(out + pid, tl.reduce(acc, 0, _xor))


def read_rows(K, N, sms, floor):
    nbytes = N * K // 2 + N * (K // 128) * 2
    n = nbytes // 4
    copies = max(2, -(-150_000_000 // nbytes))
    bufs = [torch.randint(-2**31, 2**31 - 1, (n,), dtype=torch.int32, device="cuda") for _ in range(copies)]
    out = []
    for mode in (0, 1, 2):
        best = (1e9, "")
        for mult, block, warps in ((1, 2048, 8), (2, 2048, 8), (4, 2048, 8), (8, 1024, 8), (4, 1024, 4)):
            progs = sms * mult
            per = -(-(-(-n // progs)) // block) * block
            progs = -(-n // per)
            o = torch.empty(progs, dtype=torch.int32, device="cuda")
            extra = {"launch_pdl": True} if mode else {}
            fns = [lambda b=b: _read_kernel[(progs,)](b, o, n, per, BLOCK=block, PDL=mode, num_warps=warps, **extra) for b in bufs]
            best = min(best, (time_graph(fns, target_ms=30.0), f"{progs} programs x {per * 4 // 1024} KiB, BLOCK {block}, {warps} warps"))
        out.append(dict(kernel="read", K=K, N=N, mode=mode, us=best[0], x_floor=best[0] / floor, how=best[1]))
    del bufs
    return out


def set_pdl(on: bool) -> None:
    """Switch programmatic dependent launch of the decode kernels on or off for the current device (this process)."""
    tk._pdl_dev[torch.cuda.current_device()] = bool(on) and tk.HAS_GDC


def int_rows(K, N, props, floor):
    tab = json.load(open("plugins/cuda/quantlinear_cuda/tuned/sm90.json"))["configs"]
    p = tune.Problem(4, 32, 128, False, "float16", N, K)
    key = p.key(tune.bucket(1))
    cfg = tab.get(key, {}).get("config") or tune.default_config(p, 1, props)
    wb = N * K // 2 + N * (K // 128) * 2
    ws, x = ip.make(p, 1, copies=max(2, -(-150_000_000 // wb)))
    q0, s0, _ = ws[0]
    set_pdl(False)
    ref = tk.launch(x, q0, s0, None, None, 4, 32, 128, K, 8.0, cfg)
    out = []
    for mode in (0, 1):
        set_pdl(mode)
        y = tk.launch(x, q0, s0, None, None, 4, 32, 128, K, 8.0, cfg)
        same = bool(torch.equal(y, ref))
        # a chain: the GEMV's input written by the kernel just before it (eager, then in a graph)
        xs = torch.empty_like(x)

        def chain(xs=xs):
            torch.mul(x, 1.0, out=xs)
            return tk.launch(xs, q0, s0, None, None, 4, 32, 128, K, 8.0, cfg)
        chain_ok = bool(torch.equal(chain(), ref))
        g = torch.cuda.CUDAGraph()
        xs.zero_()
        with torch.cuda.graph(g):
            yg = chain()
        xs.zero_()
        g.replay()
        torch.cuda.synchronize()
        chain_ok = chain_ok and bool(torch.equal(yg, ref))
        del g
        fns = [lambda q=q, s=s: tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg) for q, s, _ in ws]
        us = time_graph(fns, target_ms=30.0)
        out.append(dict(kernel="int4 gemv16", K=K, N=N, mode=mode, us=us, x_floor=us / floor, same=same, chain_same=chain_ok,
                        config=tune._tune._short(cfg)))
    del ws
    return out


def fp_rows(K, N, props, bw, scheme):
    from quantlinear import fpquant
    from quantlinear.benchutil import random_float_weights
    from quantlinear.scheme import get_scheme
    from quantlinear_cuda.fp_ops import SPACE
    from quantlinear_triton import fp_kernels as FK
    from quantlinear_triton import fp_packing as P
    from quantlinear_triton.fp_tune import FPProblem

    dev = torch.device("cuda")
    sc = get_scheme(scheme)
    w = random_float_weights(sc, K, N, seed=0)
    meta, t = P.prepare_float(w, fpquant.act_quant_kind(sc), fp8_elem=P.E4M3_NV)
    t = {k: (v.to(dev) if v is not None else None) for k, v in t.items()}
    nbytes = sum(t[k].numel() * t[k].element_size() for k in ("qweight", "scales", "row_scales") if t[k] is not None)
    floor = nbytes / bw * 1e6
    copies = max(2, math.ceil(150_000_000 / nbytes))
    sets = [t] + [{k: (v.clone() if v is not None else None) for k, v in t.items()} for _ in range(copies - 1)]
    p = FPProblem(meta.elem, meta.scale, meta.slab, meta.bits, "float16", N, K)
    cfg = dict(SPACE.default_config(p, 1, props), fold=1)
    x = torch.randn(1, K, device=dev, dtype=torch.float16)

    def call(tt):
        xp, xs = FK.quantize_activations_split(x, meta.act, meta.act_block, tt["act_scale"])
        return FK.launch(xp, tt["qweight"], tt["scales"], tt["row_scales"], None, meta.elem, meta.scale, meta.block, cfg, x_scales=xs)

    set_pdl(False)
    ref = call(t)
    out = []
    for mode in (0, 1):
        set_pdl(mode)
        same = bool(torch.equal(call(t), ref))
        us = time_graph([lambda tt=tt: call(tt) for tt in sets], target_ms=30.0)
        out.append(dict(kernel=f"{scheme} fold", K=K, N=N, mode=mode, us=us, x_floor=us / floor, same=same,
                        config=" ".join(f"{k}={v}" for k, v in cfg.items()) + " (activation kernel + GEMV)"))
    del sets
    return out


def main() -> int:
    dev = torch.device("cuda")
    props = _device.device_props(dev)
    bw = copy_bandwidth(dev, 1 << 30, reps=10)
    print(f"{props.name} ({props.arch}, {props.sm_count} SMs), copy bandwidth {bw / 1e12:.3f} TB/s, torch {torch.__version__}, "
          f"triton {triton.__version__}", flush=True)
    rows = []
    for K, N in SHAPES:
        floor = (N * K // 2 + N * (K // 128) * 2) / bw * 1e6
        new = [] if "--fp-only" in sys.argv else read_rows(K, N, props.sm_count, floor) + int_rows(K, N, props, floor)
        for s in ("MXFP4", "NVFP4"):
            new += fp_rows(K, N, props, bw, s)
        for r in new:
            extra = "" if "same" not in r else f" same={r['same']}" + (f" chain_same={r['chain_same']}" if "chain_same" in r else "")
            print(f"{r['kernel']:12} {K:>5}x{N:<6} pdl{r['mode']} {r['us']:8.2f} us {r['x_floor']:6.3f}x floor{extra}  "
                  f"{r.get('how') or r.get('config')}", flush=True)
        rows += new
    if "--json" in sys.argv:
        json.dump({"device": props.name, "copy_bandwidth_Bps": bw, "rows": rows}, open(sys.argv[sys.argv.index("--json") + 1], "w"), indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
