"""Triton code shared by quantlinear's GPU plugins (``quantlinear-cuda``, ``quantlinear-rocm``).

A library, not a plugin: it has no ``quantlinear.plugins`` entry point and registers no kernel.
The device plugins import it and add what is theirs: device properties, launch-configuration
spaces per architecture, their custom-op namespace and their capability checks.

* :mod:`.packing` -- the slab-interleaved int32 layout the kernels read, and tinygemm's operands;
* :mod:`.kernels` -- the Triton kernels (GEMV, ``tl.dot`` GEMM, their paired-fp16 variants,
  dequantize) and ``launch`` (imports Triton; loaded on first launch only);
* :mod:`.launch` -- a low-overhead launcher: the compiled kernel's launcher called directly once
  a specialization has been compiled (falls back to ``kernel[grid]``);
* :mod:`.tune` -- M buckets, the problem key, and the tuner (memory -> user cache -> shipped
  table -> tune -> heuristic), parameterized by a plugin's *space*;
* :mod:`.ops` -- the per-call dispatch and a factory for a plugin's ``wna16_gemm`` custom op;
* :mod:`.layers` -- the ``prepare``/``compute`` halves of the Triton and tinygemm kernels;
* :mod:`.scaled_mm` -- the capability declarations of the FP8 ``torch._scaled_mm`` kernels;
* :mod:`.runtime` -- whether Triton is importable / interpreting, without importing it.

Importing this package imports no Triton.
"""

__version__ = "0.1.0"
