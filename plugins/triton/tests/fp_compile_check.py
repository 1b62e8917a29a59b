"""Cross-compile the float-scheme Triton kernels for GPU targets without a GPU (a tool, not a pytest module).

    TRITON_INTERPRET=0 python plugins/triton/tests/fp_compile_check.py [sm90 sm80 gfx942] [--kernels=gemv16,dqmm]

Each launch ``fp_kernels.launch`` / ``quantize_activations`` would make (MXFP4, NVFP4, MXFP8 with every FP8
decode, FP8_STATIC; fp16/bf16/fp32; GEMV, GEMV with rows, ``gemv16`` and its folded 4-bit path,
skinny dot, 128x128 dot) is recorded on CPU tensors (``gemv16`` with its PTX path, ``ASM=True``, on
CUDA targets; ``dqmm``: its dequantize kernel), turned into an ``ASTSource``
(:mod:`quantlinear_triton.aot`) and compiled by Triton's own backends (ptxas ships with Triton).
Prints one line per kernel with its shared memory; the exit status is the number of failures.  Too slow for the test suite (hundreds of compiles).
"""

from __future__ import annotations

import os
import sys
import time

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "compiling needs TRITON_INTERPRET=0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from quantlinear import fpquant  # noqa: E402
from quantlinear.scheme import PRESETS  # noqa: E402
from quantlinear_triton import aot  # noqa: E402
from quantlinear_triton import fp_kernels as FK  # noqa: E402
from quantlinear_triton import fp_packing as P  # noqa: E402

NAMES = ("_fp_gemv_kernel", "_fp_gemv16_kernel", "_fp_dot_kernel", "_act_quant_kernel", "_fp_dequant_kernel")
OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion", "waves_per_eu", "matrix_instr_nonkdim", "kpack")
TARGETS = {"sm90": GPUTarget("cuda", 90, 32), "sm80": GPUTarget("cuda", 80, 32), "gfx942": GPUTarget("hip", "gfx942", 64)}
CONFIGS = [(1, {"kernel": "gemv", "BM": 1, "BN": 64, "split_k": 4, "warps": 4}),
           (4, {"kernel": "gemv", "BM": 4, "BN": 32, "split_k": 2, "warps": 4}),
           (16, {"kernel": "dot", "BM": 16, "BN": 64, "split_k": 2, "swap": True, "warps": 4, "stages": 3}),
           (512, {"kernel": "dot", "BM": 128, "BN": 128, "split_k": 1, "swap": True, "warps": 8, "stages": 3}),
           (1, {"kernel": "gemv16", "BM": 1, "BN": 64, "split_k": 4, "warps": 4}),
           (1, {"kernel": "gemv16", "BM": 1, "BN": 64, "split_k": 4, "warps": 4, "psum": 1}),
           (512, {"kernel": "dqmm", "BN": 64, "warps": 4})]


def record(fn, *args):
    """The (kernel, args, kwargs) of every launch ``fn(*args)`` makes, without running any."""
    return aot.record(FK, NAMES, fn, *args)


def compile_one(kernel, args, kwargs, target):
    src, opts = aot.source(kernel, args, kwargs, OPTIONS)
    if target.backend == "hip":
        opts["num_stages"] = 2
    return triton.compile(src, target=target, options=opts)


def main(which: list[str], kinds: set[str] | None = None) -> int:
    K, failures = 4096, 0
    for name, elems in (("MXFP4", [P.E2M1]), ("NVFP4", [P.E2M1]), ("MXINT4", [P.E0M4]), ("MXFP8", [P.E4M3, P.E4M3_NV, P.E4M3_B8]),
                        ("FPW8A16", [P.E4M3_NV]), ("FP8_STATIC", [P.E4M3])):
        sc = PRESETS[name]
        w = fpquant.quantize_float(torch.randn(256, K).to(torch.bfloat16) * 0.05, sc, act_amax=3.0)
        for elem in elems:
            meta, t = P.prepare_float(w, fpquant.act_quant_kind(sc), fp8_elem=elem)
            for dt in (torch.float16, torch.bfloat16, torch.float32):
                for M, cfg in CONFIGS:
                    if kinds is not None and cfg["kernel"] not in kinds:
                        continue
                    x = torch.zeros(M, K, dtype=dt)
                    launches = record(FK.launch, x, t["qweight"], t["scales"], t["row_scales"], torch.zeros(256, dtype=dt),
                                      meta.elem, meta.scale, meta.block, cfg)
                    launches += record(FK.quantize_activations, x, meta.act, meta.act_block, t["act_scale"])
                    if dt == torch.float16 and meta.act != P.A_NONE:  # mmv's activation pairs (px), every act code
                        launches += record(FK.quantize_activations_pairs, x, meta.act, meta.act_block, t["act_scale"],
                                           name == "NVFP4")
                    if cfg["kernel"] == "gemv16" and cfg.get("psum", 4) == 4 and FK.fold_fits(meta.elem, meta.scale, meta.block, meta.act,
                                                                                              meta.act_block, dt):
                        # the folded GEMV: split activations (value pairs + block scales) from one quantization launch
                        pairs = torch.zeros(M, K // 2, dtype=torch.int32)
                        xs = torch.zeros(M, K // meta.act_block, dtype=torch.float32)
                        launches += record(FK.quantize_activations_split, x, meta.act, meta.act_block, t["act_scale"])
                        launches += record(FK.launch, pairs, t["qweight"], t["scales"], t["row_scales"], torch.zeros(256, dtype=dt),
                                           meta.elem, meta.scale, meta.block, cfg, None, xs)
                    for tn in which:
                        if (elem == P.E4M3_NV and tn != "sm90") or (elem == P.E4M3_B8 and tn != "gfx942"):
                            continue  # hardware FP8 decode only where the target has that format
                        for kernel, a, kw in launches:
                            if "ASM" in kw:
                                kw = dict(kw, ASM=TARGETS[tn].backend == "cuda")
                            what = f"{name} {P.ELEMENT_NAMES[elem]} {str(dt)[6:]} M={M} {tn} {kernel.__name__}"
                            t0 = time.time()
                            try:
                                c = compile_one(kernel, a, kw, TARGETS[tn])
                                print(f"{what}: ok {time.time() - t0:.1f}s shared={c.metadata.shared}", flush=True)
                            except Exception as e:
                                failures += 1
                                print(f"{what}: FAILED {type(e).__name__}: {str(e)[:400]}", flush=True)
    return failures


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--kernels=")]
    ks = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--kernels=")]
    sys.exit(main(args or list(TARGETS), set(ks[0].split(",")) if ks else None))
