"""Cross-compile the shared Triton kernels for AMD targets, exactly as ``launch()`` would launch them.

Run as a script (``python rocm_compile.py``, with ``TRITON_INTERPRET`` off: compiling needs real
``@triton.jit`` functions): reads a JSON list of jobs on stdin and prints one JSON result per job.
A job is ``{"arch", "wave", "bits", "group", "sym", "dtype", "M", "K", "N", "cfg"}``.  The launch
is recorded and turned into an ``ASTSource`` by :mod:`quantlinear_triton.aot` (the launch's constexprs,
16-byte divisibility hints where the JIT would give them, and the compile options: ``num_warps``,
``num_stages`` and the AMD options), and compiled by Triton's HIP backend for
``GPUTarget("hip", arch, wave)``.  No GPU is needed; the result is the compiler's own
``metadata.shared`` (LDS bytes) and whether the AMDGCN uses MFMA / WMMA instructions.
"""

from __future__ import annotations

import json
import os
import sys


def compile_job(job: dict) -> list[dict]:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    from quantlinear import Scheme
    from quantlinear.benchutil import random_int_weights
    from quantlinear_triton import aot, kernels
    from quantlinear_triton.packing import choose_slab, constant_zero, pack_codes, pack_scales, pack_zeros

    sc = Scheme(bits=job["bits"], group_size=job["group"], sym=job["sym"])
    K, N, M = job["K"], job["N"], job["M"]
    w = random_int_weights(K, N, sc, seed=0)
    g = sc.group_size_for(K)
    slab = choose_slab(g, K)
    zc = constant_zero(w.zeros)
    x = torch.zeros(M, K, dtype=getattr(torch, job["dtype"]))
    args = (x, pack_codes(w.qweight, sc.bits, slab), pack_scales(w.scales), None if zc is not None else pack_zeros(w.zeros), None,
            sc.bits, slab, g, K, float(zc or 0))
    out = []
    for fn, a, kw in aot.record(kernels, ("_gemv_kernel", "_dot_kernel", "_dequant_kernel"), kernels.launch, *args, job["cfg"]):
        src, opts = aot.source(fn, a, kw, ("num_warps", "num_stages") + kernels.BACKEND_OPTIONS)
        c = triton.compile(src, target=GPUTarget("hip", job["arch"], job["wave"]), options=opts)
        asm = c.asm["amdgcn"]
        out.append({"kernel": fn.__name__, "shared": c.metadata.shared, "num_warps": c.metadata.num_warps,
                    "mfma": "v_mfma" in asm, "wmma": "v_wmma" in asm})
    return out


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "compiling needs TRITON_INTERPRET=0"
    for job in json.loads(sys.stdin.read()):
        print(json.dumps({"job": job, "result": compile_job(job)}), flush=True)
