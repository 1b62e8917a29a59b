#!/usr/bin/env python3
"""How fast can one kernel merely *read* a layer's packed weight?  The achievable floor at small sizes.

    python plugins/cuda/benchmarks/read_floor.py [--json PATH]

The issue's floor is packed bytes / large-copy bandwidth (a 1 GiB ``copy_``).  A layer of 30 MB is read in ~10 us,
where ramp-up (launch, first loads in flight, the wave's tail) is a large share.  This script times, on the same
CUDA-graph protocol as the benchmark (weight copies > 150 MB, so every call reads HBM), a Triton kernel that only
reads the bytes of each shape's W4 g128 (and W8 g128) weight + scales and writes one word per program -- the best of a
small grid of launch shapes -- and reports it as a multiple of the issue's floor.  A GEMV cannot beat this kernel, so
``read / floor`` is the lowest ratio reachable at that size on this GPU.
"""
import itertools
import json
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, "plugins/cuda/benchmarks")
from quantlinear_cuda.bench import copy_bandwidth, time_graph  # noqa: E402

SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192), (3072, 12288))


@triton.jit
def _read_kernel(p, out, n, per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    start = pid * per_prog
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for off in range(start, tl.minimum(start + per_prog, n), BLOCK):
        idx = off + tl.arange(0, BLOCK)
        acc ^= tl.load(p + idx, mask=idx < n, other=0)
    tl.store(out + pid, tl.reduce(acc, 0, _xor))


@triton.jit
def _xor(a, b):
    return a ^ b


def read_time(nbytes: int, sms: int) -> tuple[float, str]:
    n = nbytes // 4
    copies = max(2, -(-150_000_000 // nbytes))
    bufs = [torch.randint(-2**31, 2**31 - 1, (n,), dtype=torch.int32, device="cuda") for _ in range(copies)]
    best = (1e9, "")
    for mult, block, warps in itertools.product((1, 2, 4, 8), (1024, 2048, 4096), (4, 8)):
        progs = sms * mult
        per = -(-n // progs)
        per = -(-per // block) * block
        progs = -(-n // per)
        out = torch.empty(progs, dtype=torch.int32, device="cuda")
        fns = [lambda b=b: _read_kernel[(progs,)](b, out, n, per, BLOCK=block, num_warps=warps) for b in bufs]
        t = time_graph(fns, target_ms=30.0)
        best = min(best, (t, f"{progs} programs x {per * 4 // 1024} KiB, BLOCK {block}, {warps} warps"))
    del bufs
    return best


def main() -> int:
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    bw = copy_bandwidth(dev, 1 << 30, reps=10)
    rows = []
    print(f"{torch.cuda.get_device_name(dev)}: copy bandwidth {bw / 1e12:.3f} TB/s", flush=True)
    print(f"{'scheme':6} {'K x N':>12} {'MB':>7} {'floor us':>9} {'read us':>8} {'read/floor':>10}  launch", flush=True)
    for bits, (K, N) in itertools.product((4, 8), SHAPES):
        nbytes = N * K * bits // 8 + N * (K // 128) * 2
        floor = nbytes / bw * 1e6
        t, how = read_time(nbytes, sms)
        rows.append({"bits": bits, "K": K, "N": N, "bytes": nbytes, "floor_us": floor, "read_us": t, "ratio": t / floor, "launch": how})
        print(f"W{bits}A16 {K:>5}x{N:<6} {nbytes / 1e6:7.1f} {floor:9.2f} {t:8.2f} {t / floor:10.3f}  {how}", flush=True)
    if "--json" in sys.argv:
        path = sys.argv[sys.argv.index("--json") + 1]
        json.dump({"device": torch.cuda.get_device_name(dev), "copy_bandwidth_Bps": bw, "rows": rows}, open(path, "w"), indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
