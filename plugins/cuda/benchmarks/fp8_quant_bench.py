#!/usr/bin/env python3
"""Device time of FP8_STATIC's activation quantization (``quantlinear_triton.fp8_act``) against its memory floor.

    python plugins/cuda/benchmarks/fp8_quant_bench.py [--json PATH]

Per (M, K, dtype): the E4M3 codes computed on the bits (``native=False``, what every backend can run) and with the
hardware's ``cvt.rn.satfinite.e4m3x2.f32`` (``native=True``, sm_89+), each at the default launch shape and a few
others, and the native codes written in slab order (``slab=32``, what the CUDA FP8 layer's ``_scaled_mm`` path takes); the floor is 3 bytes an element (read 2, write 1) over the copy bandwidth of the same run.  Every timed
variant's codes are compared with the reference (``clamp(x / s, +-448).to(float8_e4m3fn)``) on the timed input.
CUDA-graph timing over input copies > 150 MB (``quantlinear_cuda.bench.time_graph``).
"""
import itertools
import json
import sys

import torch

from quantlinear_cuda.bench import copy_bandwidth, time_graph
from quantlinear_triton import fp8_act

SHAPES = ((1024, 4096), (1024, 14336), (4096, 4096), (4096, 8192), (4096, 14336))
LAUNCH = ((8, 1024, 8), (16, 1024, 8), (16, 1024, 16), (32, 1024, 16), (4, 1024, 4), (8, 2048, 16))


def main() -> int:
    dev = torch.device("cuda")
    bw = copy_bandwidth(dev, 1 << 30, reps=10)
    print(f"{torch.cuda.get_device_name(dev)}: copy bandwidth {bw / 1e12:.3f} TB/s", flush=True)
    rows = []
    for dtype, (M, K) in itertools.product((torch.float16, torch.bfloat16), SHAPES):
        copies = max(1, -(-150_000_000 // (2 * M * K)))
        xs = [torch.randn(M, K, device=dev, dtype=dtype) * 40 for _ in range(copies)]
        s = torch.tensor([0.37], device=dev)  # fp32, as AutoRound stores input_scale
        ref = fp8_act.reference(xs[0], s).view(torch.uint8)
        floor = 3 * M * K / bw * 1e6
        variants = [(False, None, 0), (True, None, 0), (True, None, 32)] + [(True, c, 32) for c in LAUNCH]
        for native, cfg, slab in variants:
            y = fp8_act.quantize_static(xs[0], s, native=native, config=cfg, slab=slab).view(torch.uint8)
            same = bool(torch.equal(y, fp8_act.to_slab_order(ref, slab)))
            t = time_graph([lambda x=x: fp8_act.quantize_static(x, s, native=native, config=cfg, slab=slab) for x in xs],
                           target_ms=30.0)
            row = {"dtype": str(dtype).split(".")[1], "M": M, "K": K, "native": native, "slab": slab,
                   "launch": cfg or fp8_act._config(M, K), "us": t, "floor_us": floor, "ratio": t / floor, "exact": same}
            rows.append(row)
            print(f"{row['dtype']:8} {M:5}x{K:<6} native={int(native)} slab={slab:2} launch={str(row['launch']):16} {t:8.2f} us  "
                  f"{t / floor:5.2f}x floor  exact={same}", flush=True)
        del xs
    if "--json" in sys.argv:
        json.dump({"device": torch.cuda.get_device_name(dev), "copy_bandwidth_Bps": bw, "rows": rows},
                  open(sys.argv[sys.argv.index("--json") + 1], "w"), indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
