#!/usr/bin/env python3
"""Graph-time the tc kernel with narrow token tiles (wgmma N = BM = 16 / 32) at small M against the configuration in use.

    python plugins/cuda/benchmarks/tc_small_m.py M KxN [KxN ...]      (W4A16 g128 sym; QL_DTYPE=bfloat16 for bf16)

Question answered: does the register-A tensor-core kernel (``kernels_tc``: the dequantized weight is wgmma's A
operand, the tokens its N) stream the weight faster than ``dot16`` at M = 16, where the issue's target is 1.4x the
M = 1 time?  Each shape prints the shipped/heuristic configuration first, then every tc variant, sorted, with the
error against an fp32 matmul of the dequantized weight (JSON rows; timing as tc_pick.py).
"""
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, "plugins/cuda/benchmarks")
import int_perf as ip  # noqa: E402
from quantlinear_cuda import device as dev  # noqa: E402
from quantlinear_cuda import tune  # noqa: E402
from quantlinear_triton import kernels as tk  # noqa: E402
from quantlinear_triton.packing import SlabMeta, dequantize_slabs  # noqa: E402

DT = os.environ.get("QL_DTYPE", "float16")


def variants(M: int, dq: int):
    bms = sorted({max(16, min(64, 1 << (M - 1).bit_length()))})
    for bm, (bn, warps), bk, sk, st in itertools.product(bms, ((64, 4), (128, 8)), (256, 512), (1, 2, 4), (2, 3)):
        yield {"kernel": "tc", "BN": bn, "BM": bm, "BK": bk, "warps": warps, "stages": st, "group_m": 8, "dq": dq,
               "prefetch": 1, "split_k": sk}


def main() -> None:
    props = dev.device_props(torch.device("cuda"))
    M = int(sys.argv[1])
    table = json.load(open("plugins/cuda/quantlinear_cuda/tuned/sm90.json"))["configs"]
    for shape in sys.argv[2:]:
        K, N = (int(v) for v in shape.split("x"))
        p = tune.Problem(4, 32, 128, False, DT, N, K)
        wb = N * K // 2 + N * (K // 128) * 2
        ws, x = ip.make(p, M, copies=max(2, -(-150_000_000 // wb)))
        q, s, _ = ws[0]
        ref = x.float() @ dequantize_slabs(q, s, None, 8, SlabMeta(4, 32, 128, K, N)).t()
        current = table.get(p.key(tune.bucket(M)), {}).get("config") or tune.default_config(p, M, props)
        rows = []
        for cfg in [current] + list(variants(M, 2 if DT == "bfloat16" else 1)):
            try:
                y = tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg)
                err = float((y.float() - ref).abs().max() / ref.abs().max())
                fns = [lambda q=q, s=s, cfg=cfg: tk.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, cfg) for q, s, _ in ws]
                t = round(ip._time_graph(fns), 2)
            except Exception as e:  # a variant that does not compile (shared memory, registers) is reported, not fatal
                t, err = None, f"{type(e).__name__}: {str(e)[:80]}"
            rows.append({"key": p.key(tune.bucket(M)), "us": t, "err": err, "cfg": tune._tune._short(cfg), "current": cfg is current})
            print(json.dumps(rows[-1]), flush=True)
        best = sorted((r for r in rows if r["us"]), key=lambda r: r["us"])[:5]
        print("BEST", shape, json.dumps(best), flush=True)
        del ws, ref


if __name__ == "__main__":
    main()
