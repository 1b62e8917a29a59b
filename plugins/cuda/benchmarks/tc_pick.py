#!/usr/bin/env python3
"""Graph-time the tuner's ``tc`` candidates (and dqmm) for W4A16 g128 sym fp16 at one M on given shapes; print JSON rows.

    python plugins/cuda/benchmarks/tc_pick.py M KxN [KxN ...]

The first row of each shape is the configuration used today (the shipped table's entry, else the heuristic).

Used to fill the shipped table's M=256 entries the tc_variants.py run did not cover (same timing: CUDA-graph replays
over weight copies > 150 MB, ``int_perf._time_graph``).
"""
import json
import sys

import torch

sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip  # noqa: E402
from quantlinear_cuda import device as dev  # noqa: E402
from quantlinear_cuda import tune  # noqa: E402
from quantlinear_triton import kernels as tk  # noqa: E402

props = dev.device_props(torch.device("cuda"))
M = int(sys.argv[1])
for shape in sys.argv[2:]:
    K, N = (int(v) for v in shape.split("x"))
    p = tune.Problem(4, 32, 128, False, "float16", N, K)
    wb = N * K // 2 + N * (K // 128) * 2
    ws, x = ip.make(p, M, copies=max(2, -(-150_000_000 // wb)))
    rows = []
    table = json.load(open("plugins/cuda/quantlinear_cuda/tuned/sm90.json"))["configs"]
    current = table.get(p.key(tune.bucket(M)), {}).get("config") or tune.default_config(p, M, props)
    for cfg in [current] + [c for c in tune.candidates(p, M, props) if c["kernel"] in ("tc", "dqmm") and c != current]:
        fns = [lambda q=q, s=s, cfg=cfg: tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg) for q, s, _ in ws]
        rows.append([tune._tune._short(cfg), round(ip._time_graph(fns), 2), cfg])
        print(json.dumps({"key": p.key(tune.bucket(M)), "row": rows[-1]}), flush=True)
    del ws
