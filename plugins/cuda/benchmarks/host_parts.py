#!/usr/bin/env python3
"""Host (CPU) cost of the pieces of an eager int W4A16 call on 4096 x 4096 -- the layer, its compute, the configuration
lookup, ``kernels.launch``, and for ``wg`` the TMA descriptor, the direct launcher and Triton's launcher alone -- against
``F.linear`` (min and median of 7 x 300 calls issued while the GPU is held busy, so no call waits for the device).

    python plugins/cuda/benchmarks/host_parts.py OUT.json

Results: results/h100-eager-plans-2026-11-26.txt (before and after the layers' launch plans).
"""
import statistics, time, sys, json
import torch
import torch.nn.functional as F
from quantlinear import LayerSpec, Scheme
from quantlinear.benchutil import random_int_weights
from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear
from quantlinear_cuda import tune as ctune
from quantlinear_triton import kernels as K, kernels_wg as WG, launch as L

def th(fn, n=300, reps=7):
    for _ in range(5): fn()
    torch.cuda.synchronize()
    res = []
    for _ in range(reps):
        torch.cuda._sleep(int(n * 150e-6 * 2e9))
        t0 = time.perf_counter()
        for _ in range(n): fn()
        res.append((time.perf_counter() - t0) / n * 1e6)
        torch.cuda.synchronize()
    return min(res), statistics.median(res)

out = {}
def rep(name, fn):
    mn, md = th(fn)
    out[name] = (mn, md)
    print(f"{name:<44} min {mn:6.2f}  med {md:6.2f} us", flush=True)

Kd, Nd = 4096, 4096
sc = Scheme(bits=4, group_size=128, sym=True)
spec = LayerSpec(sc, "gptq", Kd, Nd, dtype=torch.float16, device=torch.device("cuda"), name="h")
layer = TritonWNA16Linear.from_weights(spec, random_int_weights(Kd, Nd, sc, seed=0), None)
Wd = torch.randn(Nd, Kd, device="cuda", dtype=torch.float16)
b = layer._buffers
m = layer.meta
rep("torch.empty(64,4096)", lambda: torch.empty(64, 4096, device="cuda", dtype=torch.float16))
xx = torch.randn(64, Kd, device="cuda", dtype=torch.float16)
rep("x.new_empty((64,4096))", lambda: xx.new_empty((64, 4096)))
rep("noop python call", lambda: None)
for M in (1, 2, 16, 64, 256):
    x = torch.randn(M, Kd, device="cuda", dtype=torch.float16)
    layer(x); torch.cuda.synchronize()
    cfg = ctune.TUNER.settled(layer.problem, x)
    print(f"M={M} cfg {cfg}")
    rep(f"M={M} F.linear", lambda: F.linear(x, Wd))
    rep(f"M={M} layer(x)", lambda: layer(x))
    rep(f"M={M} layer.compute(x)", lambda: layer.compute(x))
    rep(f"M={M} tuner.settled", lambda: ctune.TUNER.settled(layer.problem, x))
    rep(f"M={M} kernels.launch", lambda: K.launch(x, b["w_slab"], b["w_scales"], None, None, 4, m.slab, 128, Kd, layer.zero_point, cfg))
    if cfg["kernel"] == "wg":
        rep(f"M={M} launch_wg", lambda: WG.launch_wg(x, b["w_slab"], b["w_scales"], None, None, 128, layer.zero_point, cfg))
        rep(f"M={M} _XDesc", lambda: WG._XDesc(x, [M, Kd], [Kd, 1], [cfg['BM'], 32 * cfg.get('planes', 1)], WG._box_layout(cfg['BM'], cfg.get('planes', 1), False)))
        rep(f"M={M} wg.runs", lambda: WG.runs(x, b["w_scales"]))
        # the launcher alone: record one _fast.launch call's arguments
        rec = {}
        real = L.launch
        def spy(*a, **k):
            rec["a"], rec["k"] = a, k
            return real(*a, **k)
        WG._fast.launch = spy
        WG.launch_wg(x, b["w_slab"], b["w_scales"], None, None, 128, layer.zero_point, cfg)
        WG._fast.launch = real
        a = rec["a"]
        rep(f"M={M} _fast.launch (hit)", lambda: real(*a))
        hit = [v for k, v in L._compiled.items() if k[0][0] == "wg"][-1]
        run, function, packed, counts, cvals = hit
        fn, grid, tensors, ints, floats = a[0], a[1], a[2], a[3], a[4]
        args = (*tensors, *ints, *floats, *cvals)
        st = torch._C._cuda_getCurrentRawStream(0)
        rep(f"M={M} CudaLauncher.__call__", lambda: run(grid[0], grid[1], 1, st, function, packed, None, None, None, *args))
        desc = tensors[0]
        from triton.backends.nvidia.driver import make_tensordesc_arg
        meta = run.launch.__closure__ if hasattr(run.launch, "__closure__") else None
        print("launcher closure:", [type(c.cell_contents).__name__ for c in (run.launch.__closure__ or [])])
        tm = None
        for c in run.launch.__closure__ or []:
            v = c.cell_contents
            if isinstance(v, list) and v and isinstance(v[0], dict):
                tm = v[0]
        print("tensordesc meta:", tm)
        if tm:
            rep(f"M={M} make_tensordesc_arg", lambda: make_tensordesc_arg(desc, tm))
torch.cuda.synchronize()
json.dump(out, open(sys.argv[1], "w"), indent=1)
