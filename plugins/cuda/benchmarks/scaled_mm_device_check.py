#!/usr/bin/env python3
"""GPU check of ``cuda.fp8_scaled_mm`` (FP8_STATIC through ``torch._scaled_mm``): numerics and speed vs cuBLAS fp16/bf16.

    python plugins/cuda/benchmarks/scaled_mm_device_check.py OUT_DIR [--quick]

For (K, N) in (4096, 14336), (8192, 28672), (14336, 4096), M in 1, 16, 256, 1024, 4096 and fp16 / bf16:

* numerics: the layer's output against the exact result (fp32 matmul of the reference-quantized activation and
  the dequantized weight; FP8 products are exact): ``max |y - ref| / max |ref|`` and the share of elements more
  than one output ulp (+ a 2^-12 accumulation allowance) away;
* speed: CUDA-graph replay time (``quantlinear_cuda.bench.time_graph``) of the layer (activation quantization
  included) and of dense ``F.linear`` with the same weight in fp16/bf16 (cuBLAS), and the weight-read floor at
  the measured copy bandwidth (``copy_bandwidth``).

Issue #5's target: FP8_STATIC at large M (1024, 4096) at least 1.5x faster than cuBLAS fp16.  Prints a table;
writes OUT_DIR/scaled_mm_device_check.json.  About a minute on an H100.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = ((4096, 14336), (8192, 28672), (14336, 4096))
MS = (1, 16, 256, 1024, 4096)
TARGET = 1.5


def build(K: int, N: int, dtype: torch.dtype, dev: torch.device):
    from quantlinear import PRESETS, LayerSpec, fpquant
    from quantlinear_cuda.kernels.scaled_mm_fp8 import FP8ScaledMMLinear

    g = torch.Generator(device=dev).manual_seed(K + N)
    w = (torch.randn(N, K, generator=g, device=dev) * 0.02).to(torch.bfloat16)
    spec = LayerSpec(PRESETS["FP8_STATIC"], "fp8", K, N, False, dtype, dev, False, f"{K}x{N}")
    fw = fpquant.quantize_float(w, spec.scheme, act_amax=6.0)
    fw.input_scale = fw.input_scale.to(dev)
    layer = FP8ScaledMMLinear.from_weights(spec, fw)
    W = fw.dequantize()  # fp32 [N, K]: the reference weight
    return layer, fw, W


def numerics(layer, fw, W, x) -> dict:
    from quantlinear import fpquant

    a = fpquant.fp8_static_quantize_input(x, fw.input_scale).float() * fw.input_scale.float()
    ref = a @ W.t()
    y = layer(x).float()
    ulp = 2.0**-7 if x.dtype == torch.bfloat16 else 2.0**-10
    mag = a.abs() @ W.abs().t()
    off = ((y - ref).abs() > ref.abs() * ulp + mag * 2.0**-12).float().mean()
    return {"rel_err": float((y - ref).abs().max() / ref.abs().max()), "off_ulp_share": float(off)}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ".")
    quick = "--quick" in sys.argv
    out.mkdir(parents=True, exist_ok=True)
    from quantlinear_cuda.bench import copy_bandwidth, time_graph

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    bw = copy_bandwidth(dev)
    meta = {"device": props.name, "capability": list(torch.cuda.get_device_capability(dev)), "torch": torch.__version__,
            "cuda": torch.version.cuda, "copy_bandwidth_GBps": bw / 1e9, "target_speedup_large_m": TARGET}
    print(f"{props.name}  torch {torch.__version__}  CUDA {torch.version.cuda}  copy bw {bw / 1e9:.0f} GB/s", flush=True)
    hdr = f"{'dtype':>5} {'K':>6} {'N':>6} {'M':>5} {'plan':>9} {'rel_err':>9} {'off%':>6} {'fp8 us':>9} {'dense us':>9} {'speedup':>8} {'floor us':>9}"
    print(hdr)
    rows = []
    t0 = time.time()
    for dtype in (torch.float16, torch.bfloat16):
        for K, N in SHAPES[:1] if quick else SHAPES:
            layer, fw, W = build(K, N, dtype, dev)
            Wd = W.to(dtype)
            for M in MS[::2] if quick else MS:
                x = torch.randn(M, K, device=dev, dtype=dtype)
                num = numerics(layer, fw, W, x)
                t_fp8 = time_graph([lambda: layer(x)])
                t_dense = time_graph([lambda: F.linear(x, Wd)])
                floor = (N * K + M * K * x.element_size() + M * N * x.element_size()) / bw * 1e6
                row = {"dtype": str(dtype).replace("torch.", ""), "K": K, "N": N, "M": M, "plan": layer.plan, **num,
                       "fp8_us": t_fp8, "dense_us": t_dense, "speedup": t_dense / t_fp8, "floor_us": floor}
                rows.append(row)
                print(f"{row['dtype']:>5} {K:>6} {N:>6} {M:>5} {layer.plan:>9} {num['rel_err']:>9.2e} {100 * num['off_ulp_share']:>5.2f}% "
                      f"{t_fp8:>9.1f} {t_dense:>9.1f} {row['speedup']:>7.2f}x {floor:>9.1f}", flush=True)
            layer = fw = W = Wd = None  # free this shape's tensors before the next one is built
            torch.cuda.empty_cache()
    large = [r for r in rows if r["dtype"] == "float16" and r["M"] >= 1024]
    met = bool(large) and all(r["speedup"] >= TARGET for r in large)
    worst = min((r["speedup"] for r in large), default=float("nan"))
    summary = {"target_met": met, "worst_large_m_fp16_speedup": worst, "max_rel_err": max(r["rel_err"] for r in rows),
               "seconds": time.time() - t0}
    print(f"issue #5 target (fp16, M >= 1024, >= {TARGET}x cuBLAS fp16): {'MET' if met else 'NOT MET'} (worst {worst:.2f}x); "
          f"max rel err {summary['max_rel_err']:.2e}; {summary['seconds']:.0f}s")
    (out / "scaled_mm_device_check.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
