"""Check and time the Hopper prefill kernel (:mod:`quantlinear_triton.kernels_wg`) against tc, dequantize-then-cuBLAS
and cuBLAS, per launch configuration.

    python plugins/cuda/benchmarks/wg_variants.py OUT.json [--no-check] [--bf16] [--ms 128,256,1024]
        [--shapes 4096x14336,...] [--variants JSON] [--budget SECONDS]

First (unless ``--no-check``) a correctness block: ragged M / N / K, asymmetric zeros, bias, bf16, split-K and both
step widths, each against the fp32 product with the dequantized weight and against the tc kernel on the same weights.
Then, per (K, N, M): ``cublas`` (``F.linear`` with a dense weight), ``tc`` (its shipped default), ``dqmm`` (M >= 512)
and every ``wg`` variant (``--variants``: name -> launch_wg configuration; ``"split_k": "auto"``: the CUDA plugin's default
split rule, :func:`quantlinear_cuda.tune.wg_config`).  Device time per call from CUDA-graph replays over weight copies > 150 MB
(:func:`quantlinear_cuda.bench.time_graph`).  Rows go to OUT.json as they are measured; a line per (K, N, M) with
each variant's time over cuBLAS is printed at the end.  Needs an sm_90 GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback

import torch
import torch.nn.functional as F

SHAPES = ((4096, 14336), (14336, 4096), (28672, 8192), (8192, 28672), (4096, 4096), (3072, 12288))
VARIANTS = {"m128p2": {"BM": 128, "planes": 2, "split_k": "auto"}, "m256": {"BM": 256, "split_k": "auto"},
            "m256p2s3": {"BM": 256, "planes": 2, "stages": 3, "split_k": "auto"}, "m64p2": {"BM": 64, "planes": 2}}
#: (K, N, M, group, zeros, bias, dtype, cfg) of the correctness block
CHECKS = [(4096, 14336, 256, 128, False, False, torch.float16, {}),
          (4096, 4096, 200, 128, True, True, torch.float16, {"BM": 128}),
          (4096, 4096, 200, 128, True, True, torch.bfloat16, {"BM": 128}),
          (3000, 1000, 77, 128, True, True, torch.float16, {"BM": 64}),
          (3000, 1000, 300, 256, False, True, torch.bfloat16, {"BM": 256}),
          (2048, 384, 130, 2048, True, False, torch.float16, {"BM": 128, "split_k": 4}),
          (8192, 512, 256, 128, True, True, torch.bfloat16, {"BM": 256, "split_k": 3}),
          (512, 256, 1, 128, False, False, torch.float16, {"BM": 64}),
          (4096, 4096, 256, 128, True, True, torch.float16, {"BM": 256, "planes": 2, "stages": 3}),
          (3000, 1000, 300, 256, True, True, torch.bfloat16, {"BM": 128, "planes": 2, "split_k": 2})]


def _weights(K, N, group, zeros, gen, dev):
    KW = -(-K // 256) * 32
    q = torch.randint(-2**31, 2**31 - 1, (N, KW), dtype=torch.int32, device=dev, generator=gen)
    G = -(-K // group)
    s = (torch.rand(G, N, device=dev, generator=gen) * 0.02 + 0.001).half()
    z = torch.randint(0, 16, (G, N), dtype=torch.uint8, device=dev, generator=gen) if zeros else None
    return q, s, z


def _auto_split(cfg: dict, M: int, N: int, K: int, sms: int) -> dict:
    """``cfg`` with ``"split_k": "auto"`` replaced by the CUDA plugin's default rule (:func:`quantlinear_cuda.tune.wg_config`)."""
    if cfg.get("split_k") != "auto":
        return dict(cfg)
    from quantlinear_cuda.tune import Problem, wg_config

    p = Problem(bits=4, slab=32, group_size=128, has_zeros=False, dtype="float16", N=N, K=K)
    rest = {k: v for k, v in cfg.items() if k != "split_k"}
    return dict(rest, split_k=wg_config(p, M, sms, **rest)["split_k"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="time bf16 activations too")
    ap.add_argument("--ms", default="256,1024")
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    ap.add_argument("--variants", default=None, help="JSON: name -> launch_wg configuration")
    ap.add_argument("--budget", type=float, default=400.0, help="stop timing after this many seconds")
    a = ap.parse_args()

    from quantlinear_cuda.bench import copy_bandwidth, time_graph
    from quantlinear_triton import kernels as TK
    from quantlinear_triton import kernels_tc as TC
    from quantlinear_triton import kernels_wg as WG
    from quantlinear_triton.packing import SlabMeta, dequantize_slabs

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    res = dict(device=torch.cuda.get_device_name(), rows=[], checks=[])
    t0 = time.time()

    def save():
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)

    if not a.no_check:
        for K, N, M, gs, zeros, bias, dt, cfg in CHECKS:
            try:
                q, s, z = _weights(K, N, gs, zeros, gen, dev)
                W = dequantize_slabs(q, s, z, 8, SlabMeta(4, 32, gs, K, N))
                x = torch.randn(M, K, device=dev, generator=gen).to(dt)
                b = torch.randn(N, device=dev, generator=gen).to(dt) if bias else None
                ref = x.float() @ W.t() + (b.float() if bias else 0)
                y = WG.launch_wg(x, q, s, z, b, gs, 8.0, cfg)
                yt = TC.launch_tc(x, q, s, z, b, 4, 32, gs, K, 8.0, TC.default_config(M, N, dt))
                r = dict(K=K, N=N, M=M, group=gs, zeros=zeros, bias=bias, dtype=str(dt), cfg=cfg,
                         err=float((y.float() - ref).abs().max() / ref.abs().max()),
                         err_tc=float((yt.float() - ref).abs().max() / ref.abs().max()))
            except Exception:
                r = dict(K=K, N=N, M=M, cfg=cfg, error=traceback.format_exc()[-1500:])
            print("check", r, flush=True)
            res["checks"].append(r)
            save()

    res["copy_bandwidth"] = copy_bandwidth(dev)
    variants = json.loads(a.variants) if a.variants else VARIANTS
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    dqmm = {"kernel": "dqmm", "BN": 64, "tpp": 4, "warps": 4}
    for dt in (torch.float16, torch.bfloat16) if a.bf16 else (torch.float16,):
        for K, N in shapes:
            if time.time() - t0 > a.budget:
                break
            copies = max(2, math.ceil(150e6 / (N * K // 2 + K // 128 * N * 2)))
            ws = [_weights(K, N, 128, False, gen, dev)[:2] for _ in range(copies)]
            dense = [torch.randn(N, K, device=dev, generator=gen).to(dt) * 0.02 for _ in range(max(2, math.ceil(150e6 / (N * K * 2))))]
            W = dequantize_slabs(ws[0][0], ws[0][1], None, 8, SlabMeta(4, 32, 128, K, N))
            for M in (int(m) for m in a.ms.split(",")):
                if time.time() - t0 > a.budget:
                    break
                x = torch.randn(M, K, device=dev, generator=gen).to(dt)
                ref = x.float() @ W.t()
                row = dict(dtype=str(dt), K=K, N=N, M=M,
                           cublas=time_graph([lambda d=d, x=x: F.linear(x, d) for d in dense], target_ms=20.0, batches=3))
                tcc = TC.default_config(M, N, dt)
                runs = [("tc", lambda q, s, x=x: TC.launch_tc(x, q, s, None, None, 4, 32, 128, K, 8.0, tcc))]
                if M >= 512:
                    runs.append(("dqmm", lambda q, s, x=x: TK.launch(x, q, s, None, None, 4, 32, 128, K, 8.0, dqmm)))
                for name, cfg in variants.items():
                    c = _auto_split(cfg, M, N, K, sms)
                    runs.append((name, lambda q, s, x=x, c=c: WG.launch_wg(x, q, s, None, None, 128, 8.0, c)))
                for name, fn in runs:
                    try:
                        y = fn(*ws[0])
                        row[name + "_err"] = float((y.float() - ref).abs().max() / ref.abs().max())
                        row[name] = time_graph([lambda q=q, s=s: fn(q, s) for q, s in ws], target_ms=20.0, batches=3)
                    except Exception as e:
                        row[name + "_error"] = f"{type(e).__name__}: {e}"[:400]
                res["rows"].append(row)
                save()
                times = {k: v for k, v in row.items() if k not in ("dtype", "K", "N", "M", "cublas")
                         and isinstance(v, float) and not k.endswith("_err")}
                print(f"{row['dtype'][6:]:8} {K:5} {N:6} {M:5} cublas {row['cublas']:8.1f} us | "
                      + " ".join(f"{k} {v / row['cublas']:.3f}" for k, v in times.items()), flush=True)
            del ws, dense, W
            torch.cuda.empty_cache()
    print(f"total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
