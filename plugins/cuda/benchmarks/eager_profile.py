#!/usr/bin/env python3
"""Host time per eager layer call, against ``F.linear``, and which launch path each kernel took (one GPU).

    python plugins/cuda/benchmarks/eager_profile.py [--shape KxN] [--m 1,2,16,64,300] [--profile M] [--json OUT]

For int W4A16 g128 (fp16, bf16), MXFP4 and NVFP4 layers of one shape: wall time per eager call (synchronizing once
per 200 calls: where the host is slower than the GPU this is the host's time), the same for ``F.linear`` on a dense
fp16 weight of the shape, and the direct / ``kernel[grid]`` launch counts of those calls
(:func:`quantlinear_triton.launch.stats`): a warm call that still takes the ``kernel[grid]`` path costs 25-45 us.
``host`` is the CPU's time per call alone (the layer's / ``F.linear``'s, issued while the GPU is held busy:
:func:`quantlinear_cuda.bench.time_host`).  ``--profile M,...`` adds the top of a cProfile of 200 calls at those M per layer; ``--trace`` the GPU's own time per call
of those eager calls (torch.profiler: kernel durations summed, and the span from the first kernel's start to the
last one's end over 50 calls), which tells a host-bound call from a slow kernel.  Issue #4's target: eager overhead
within 10 us of ``F.linear``'s.
"""
import argparse
import json

import torch
import torch.nn.functional as F

from quantlinear import LayerSpec, Scheme
from quantlinear.benchutil import random_int_weights
from quantlinear.scheme import PRESETS
from quantlinear.testing import Case
from quantlinear.testing_fp import build_float_layer, format_for
from quantlinear_cuda.bench import host_profile, time_eager, time_host
from quantlinear_cuda.kernels.triton_fp import TritonFPLinear
from quantlinear_cuda.kernels.triton_wna16 import TritonWNA16Linear
from quantlinear_triton import launch as L


def int_layer(K, N, dtype):
    sc = Scheme(bits=4, group_size=128, sym=True)
    spec = LayerSpec(sc, "gptq", K, N, dtype=dtype, device=torch.device("cuda"), name="eager")
    return TritonWNA16Linear.from_weights(spec, random_int_weights(K, N, sc, seed=0), None)


def float_layer(name, K, N):
    sc = PRESETS[name]
    spec = LayerSpec(sc, format_for(TritonFPLinear, sc), K, N, dtype=torch.float16, device=torch.device("cuda"), name="eager")
    return build_float_layer(Case(TritonFPLinear, spec))[0]


def trace(fn, calls=50):
    """(kernel time, first-start-to-last-end span) per call in us over ``calls`` eager calls (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not ev:
        return float("nan"), float("nan")
    busy = sum(e.time_range.elapsed_us() for e in ev)
    span = max(e.time_range.end for e in ev) - min(e.time_range.start for e in ev)
    return busy / calls, span / calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x14336")
    ap.add_argument("--m", default="1,2,16,64,300")
    ap.add_argument("--profile", default="", help="comma-separated M values to cProfile")
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--layers", default="W4A16 fp16,W4A16 bf16,MXFP4,NVFP4")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    K, N = map(int, a.shape.split("x"))
    Ms = [int(v) for v in a.m.split(",")]
    make = {"W4A16 fp16": lambda: (int_layer(K, N, torch.float16), torch.float16),
            "W4A16 bf16": lambda: (int_layer(K, N, torch.bfloat16), torch.bfloat16),
            "MXFP4": lambda: (float_layer("MXFP4", K, N), torch.float16),
            "NVFP4": lambda: (float_layer("NVFP4", K, N), torch.float16)}
    layers = {name: make[name]() for name in a.layers.split(",")}
    dense = {dt: torch.randn(N, K, device="cuda", dtype=dt) for dt in (torch.float16, torch.bfloat16)}
    rows = []
    print(f"{K} x {N}: eager us per call (sync per 200 calls); launches of the timed calls: direct / kernel[grid]")
    for name, (layer, dt) in layers.items():
        for M in Ms:
            x = torch.randn(M, K, device="cuda", dtype=dt)
            ref = time_eager(lambda: F.linear(x, dense[dt]), 200)
            L.stats(reset=True)
            us = time_eager(lambda: layer(x), 200)
            st = {k: v for k, v in L.stats().items() if v != (0, 0)}
            host, ref_host = time_host(lambda: layer(x)), time_host(lambda: F.linear(x, dense[dt]))
            row = dict(layer=name, M=M, eager_us=us, f_linear_us=ref, host_us=host, f_linear_host_us=ref_host, launches=st)
            if a.trace:
                row["kernel_us"], row["span_us"] = trace(lambda: layer(x))
            rows.append(row)
            print(f"  {name:<11} M={M:<4} {us:7.1f} us  F.linear {ref:7.1f} us  {us - ref:+7.1f}  host {host:5.1f} / {ref_host:4.1f} us  "
                  + (f"[GPU: kernels {row['kernel_us']:.1f} us, span {row['span_us']:.1f} us per call]  " if a.trace else "")
                  + ", ".join(f"{k} {d}/{n}" for k, (d, n) in st.items()), flush=True)
            if str(M) in a.profile.split(","):
                print(host_profile(lambda: layer(x), 200, 25))
    print(L.status())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(shape=[K, N], device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
