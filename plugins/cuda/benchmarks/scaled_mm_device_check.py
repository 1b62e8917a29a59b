#!/usr/bin/env python3
"""GPU check of ``cuda.fp8_scaled_mm`` (FP8_STATIC through ``torch._scaled_mm``): numerics and speed vs cuBLAS fp16/bf16.

    python plugins/cuda/benchmarks/scaled_mm_device_check.py OUT_DIR [--quick] [--shapes=KxN,...] [--ms=1,16,...]

For (K, N) in (4096, 14336), (8192, 28672), (14336, 4096), M in 1, 16, 256, 1024, 4096 and fp16 / bf16:

* numerics: the layer's output against the exact result (fp32 matmul of the reference-quantized activation and
  the dequantized weight; FP8 products are exact): ``max |y - ref| / max |ref|`` and the share of elements more
  than one output ulp (+ a 2^-12 accumulation allowance) away; and whether the fused activation quantization
  (``quantlinear_cuda::fp8_quant_static``) gives the reference's codes for this x (``quant_exact``);
* speed: CUDA-graph replay time (``quantlinear_cuda.bench.time_graph``) of the fused activation quantization alone
  (``q_us``) and, for comparison, of the reference's torch ops (``q_torch_us``); of the whole layer (quantization
  included, ``fp8_us``); of dense ``F.linear`` with the same weight in fp16/bf16 (cuBLAS, ``dense_us``); and the
  weight-read floor at the measured copy bandwidth (``copy_bandwidth``).  The layer runs with fp32-exact sums
  (``QUANTLINEAR_FP8_FAST_ACCUM=0``) for those columns; at M >= 1024 it is also timed with fast accumulation (its
  default, ``use_fast_accum=True``; here the flag is switched on the same layer): ``fast_us``, ``fast_speedup``,
  ``fast_rel_err``.  ``scheme_err`` puts these
  errors in scale: the exact FP8 product against the product with the unquantized activation (the error the scheme's
  own activation quantization makes).  For M <= 64 the layer's two paths are also timed alone (``gemv_us``: the Triton
  FP8 GEMV it runs up to ``small_m`` rows; ``scaled_mm_us``: ``_scaled_mm``), to check where its limit sits.  (The quantization alone
  re-reads the same x each replay, so at the smaller sizes part of it comes from L2.)

Issue #5's target: FP8_STATIC at large M (1024, 4096) at least 1.5x faster than cuBLAS fp16, end to end; the summary
reports it with the default (fast) and the exact accumulation.  Prints a table; writes
OUT_DIR/scaled_mm_device_check.json.  About a minute on an H100 (``--quick``: one shape, M in 1, 256, 4096).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = ((4096, 14336), (8192, 28672), (14336, 4096))
MS = (1, 16, 32, 64, 256, 1024, 4096)
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
    layer.fast_accum = False  # the exact columns; the fast ones switch it on for their own timing
    W = fw.dequantize()  # fp32 [N, K]: the reference weight
    return layer, fw, W


def numerics(layer, fw, W, x) -> dict:
    from quantlinear import fpquant
    from quantlinear_cuda.fp8_act_ops import FP8_QUANT_OP

    x8_ref = fpquant.fp8_static_quantize_input(x, fw.input_scale)
    x8 = FP8_QUANT_OP(x, layer.input_scale, False)
    exact = bool(torch.equal(x8.view(torch.uint8), x8_ref.view(torch.uint8)))
    a = x8_ref.float() * fw.input_scale.float()
    ref = a @ W.t()
    y = layer(x).float()
    ulp = 2.0**-7 if x.dtype == torch.bfloat16 else 2.0**-10
    mag = a.abs() @ W.abs().t()
    off = ((y - ref).abs() > ref.abs() * ulp + mag * 2.0**-12).float().mean()
    full = x.float() @ W.t()  # the unquantized activation: what the scheme's own activation quantization costs
    return {"rel_err": float((y - ref).abs().max() / ref.abs().max()), "off_ulp_share": float(off), "quant_exact": exact,
            "scheme_err": float((ref - full).abs().max() / full.abs().max()), "_ref": ref}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ".")
    quick = "--quick" in sys.argv
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    shapes = tuple(tuple(int(v) for v in kn.split("x")) for kn in opts["shapes"].split(",")) if "shapes" in opts else SHAPES
    ms = tuple(int(m) for m in opts["ms"].split(",")) if "ms" in opts else MS
    out.mkdir(parents=True, exist_ok=True)
    from quantlinear import fpquant
    from quantlinear_cuda.bench import copy_bandwidth, time_graph
    from quantlinear_cuda.fp8_act_ops import FP8_QUANT_OP

    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    bw = copy_bandwidth(dev)
    meta = {"device": props.name, "capability": list(torch.cuda.get_device_capability(dev)), "torch": torch.__version__,
            "cuda": torch.version.cuda, "copy_bandwidth_GBps": bw / 1e9, "target_speedup_large_m": TARGET}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    print(f"{props.name}  torch {torch.__version__}  CUDA {torch.version.cuda}  Triton {meta['triton']}  copy bw {bw / 1e9:.0f} GB/s",
          flush=True)
    hdr = (f"{'dtype':>5} {'K':>6} {'N':>6} {'M':>5} {'plan':>8} {'act':>6} {'rel_err':>8} {'off%':>6} {'exact':>5} {'q us':>7} "
           f"{'q torch':>8} {'fp8 us':>8} {'dense us':>8} {'speedup':>7} {'fast us':>8} {'fast x':>6} {'fast err':>8} {'floor':>7} {'scheme':>8}")
    print(hdr)
    rows = []
    t0 = time.time()
    for dtype in (torch.float16, torch.bfloat16):
        for K, N in shapes[:1] if quick else shapes:
            layer, fw, W = build(K, N, dtype, dev)
            Wd = W.to(dtype)
            for M in ms[::2] if quick else ms:
                x = torch.randn(M, K, device=dev, dtype=dtype)
                num = numerics(layer, fw, W, x)
                ref = num.pop("_ref")
                t_q = time_graph([lambda: FP8_QUANT_OP(x, layer.input_scale, False)])
                t_qt = time_graph([lambda: fpquant.fp8_static_quantize_input(x, layer.input_scale)])
                t_fp8 = time_graph([lambda: layer(x)])
                paths = {"gemv_us": None, "scaled_mm_us": None}
                if M <= 64 and layer.slab:  # both paths of the layer, to place its small-M limit
                    limit = layer.small_m
                    try:
                        for key, lim in (("gemv_us", 1 << 30), ("scaled_mm_us", 0)):
                            layer.small_m = lim
                            paths[key] = time_graph([lambda: layer(x)])
                    finally:
                        layer.small_m = limit
                t_dense = time_graph([lambda: F.linear(x, Wd)])
                fast = {"fast_us": None, "fast_speedup": None, "fast_rel_err": None}
                if M >= 1024:
                    layer.fast_accum = True
                    try:
                        yf = layer(x).float()
                        t_fast = time_graph([lambda: layer(x)])
                    finally:
                        layer.fast_accum = False
                    fast = {"fast_us": t_fast, "fast_speedup": t_dense / t_fast,
                            "fast_rel_err": float((yf - ref).abs().max() / ref.abs().max())}
                floor = (N * K + M * K * x.element_size() + M * N * x.element_size()) / bw * 1e6
                row = {"dtype": str(dtype).replace("torch.", ""), "K": K, "N": N, "M": M, "plan": layer.plan,
                       "act_quant": layer.act_quant, **num, "q_us": t_q, "q_torch_us": t_qt, "fp8_us": t_fp8, "dense_us": t_dense,
                       "speedup": t_dense / t_fp8, **fast, **paths, "small_m": layer.small_m, "floor_us": floor}
                rows.append(row)
                fs = (f"{fast['fast_us']:>8.1f} {fast['fast_speedup']:>5.2f}x {fast['fast_rel_err']:>8.1e}" if fast["fast_us"] else
                      f"{'-':>8} {'-':>6} {'-':>8}")
                print(f"{row['dtype']:>5} {K:>6} {N:>6} {M:>5} {layer.plan:>8} {layer.act_quant:>6} {num['rel_err']:>8.1e} "
                      f"{100 * num['off_ulp_share']:>5.2f}% {'yes' if num['quant_exact'] else 'NO':>5} {t_q:>7.1f} {t_qt:>8.1f} "
                      f"{t_fp8:>8.1f} {t_dense:>8.1f} {row['speedup']:>6.2f}x {fs} {floor:>7.1f} {num['scheme_err']:>8.1e}"
                      + (f"  gemv {paths['gemv_us']:.1f} / _scaled_mm {paths['scaled_mm_us']:.1f}" if paths["gemv_us"] else ""),
                      flush=True)
                x = ref = None
            layer = fw = W = Wd = None  # free this shape's tensors before the next one is built
            torch.cuda.empty_cache()
    large = [r for r in rows if r["dtype"] == "float16" and r["M"] >= 1024]
    met = bool(large) and all(r["speedup"] >= TARGET for r in large)
    met_fast = bool(large) and all(r["fast_speedup"] >= TARGET for r in large)
    worst = min((r["speedup"] for r in large), default=float("nan"))
    worst_fast = min((r["fast_speedup"] for r in large), default=float("nan"))
    fast_errs = [r["fast_rel_err"] for r in rows if r["fast_rel_err"] is not None]
    summary = {"target_met": met, "worst_large_m_fp16_speedup": worst,
               "target_met_fast_accum": met_fast, "worst_large_m_fp16_speedup_fast_accum": worst_fast,
               "quant_bit_exact_all": all(r["quant_exact"] for r in rows),
               "max_rel_err": max(r["rel_err"] for r in rows), "max_rel_err_fast_accum": max(fast_errs, default=None),
               "min_scheme_err": min(r["scheme_err"] for r in rows),
               "seconds": time.time() - t0}
    print(f"issue #5 target (fp16, M >= 1024, >= {TARGET}x cuBLAS fp16, end to end): fast accum (default) "
          f"{'MET' if met_fast else 'NOT MET'} (worst {worst_fast:.2f}x); exact {'MET' if met else 'NOT MET'} (worst {worst:.2f}x)")
    print(f"fused quantization bit-exact on every x: {summary['quant_bit_exact_all']}; max rel err {summary['max_rel_err']:.2e} "
          f"(fast accum {summary['max_rel_err_fast_accum'] or float('nan'):.2e}); {summary['seconds']:.0f}s")
    (out / "scaled_mm_device_check.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
