#!/usr/bin/env python3
"""Which way of calling ``torch._scaled_mm`` is fastest for FP8_STATIC on this GPU, and what it costs in accuracy.

    python plugins/cuda/benchmarks/scaled_mm_variants.py OUT_DIR

For large M (the prefill regime of issue #5's target) times, with CUDA graphs: dense ``F.linear`` (fp16/bf16),
the activation quantization alone, and ``_scaled_mm`` with row-wise or tensor-wise scales, fp16/bf16 output,
``use_fast_accum`` off/on; prints each variant's time, its speedup over dense fp16 and its max relative error
against the exact fp32 product.  Writes OUT_DIR/scaled_mm_variants.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from quantlinear_cuda.bench import time_graph
from quantlinear_cuda.kernels.scaled_mm_fp8 import quantize_static

SHAPES = ((4096, 14336), (14336, 4096), (8192, 28672))
MS = (1024, 4096)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    dev = torch.device("cuda")
    rows = []
    print(f"{'K':>6} {'N':>6} {'M':>5} {'variant':<34} {'us':>8} {'vs fp16':>8} {'rel err':>8}")
    for K, N in SHAPES:
        g = torch.Generator(device=dev).manual_seed(0)
        w = torch.randn(N, K, device=dev, generator=g) * 0.02
        ws = w.abs().amax(1) / 448
        w8 = (w / ws[:, None]).to(torch.float8_e4m3fn)
        w8t = w8.t()
        wd16 = (w8.float() * ws[:, None]).half()
        for M in MS:
            x = torch.randn(M, K, device=dev, generator=g).half()
            isc = (x.abs().max().float() / 448).reshape(1)
            x8 = quantize_static(x, isc)
            ref = (x8.float() * isc) @ (w8.float() * ws[:, None]).t()
            dense = time_graph([lambda: F.linear(x, wd16)])
            base = {"K": K, "N": N, "M": M}
            rows.append({**base, "variant": "dense fp16 F.linear", "us": dense})
            print(f"{K:>6} {N:>6} {M:>5} {'dense fp16 F.linear':<34} {dense:8.1f}")
            t = time_graph([lambda: quantize_static(x, isc)])
            rows.append({**base, "variant": "act quant only", "us": t})
            print(f"{K:>6} {N:>6} {M:>5} {'act quant only':<34} {t:8.1f} {dense / t:8.2f}")
            sa_row = isc.reshape(1, 1).expand(M, 1).contiguous()
            sb_row = ws.reshape(1, N).contiguous()
            one = torch.ones(1, device=dev)
            for odt in (torch.float16, torch.bfloat16):
                zb = torch.zeros(N, device=dev, dtype=odt)
                for fast in (False, True):
                    variants = {
                        "rowwise": lambda: torch._scaled_mm(x8, w8t, scale_a=sa_row, scale_b=sb_row, bias=zb, out_dtype=odt, use_fast_accum=fast),
                        "tensorwise+epilogue": lambda: (torch._scaled_mm(x8, w8t, scale_a=isc, scale_b=one, out_dtype=odt, use_fast_accum=fast) * sb_row).to(odt),
                        "tensorwise only": lambda: torch._scaled_mm(x8, w8t, scale_a=isc, scale_b=one, out_dtype=odt, use_fast_accum=fast),
                    }
                    for name, f in variants.items():
                        label = f"{name} {str(odt)[6:]} fast={int(fast)}"
                        try:
                            y = f()
                            err = float((y.float() - ref).abs().max() / ref.abs().max()) if name != "tensorwise only" else None
                            t = time_graph([f])
                        except Exception as e:
                            print(f"{K:>6} {N:>6} {M:>5} {label:<34} failed: {type(e).__name__}: {str(e)[:80]}")
                            continue
                        rows.append({**base, "variant": label, "us": t, "rel_err": err})
                        print(f"{K:>6} {N:>6} {M:>5} {label:<34} {t:8.1f} {dense / t:8.2f} {'-' if err is None else format(err, '.1e'):>8}")
    (out / "scaled_mm_variants.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
