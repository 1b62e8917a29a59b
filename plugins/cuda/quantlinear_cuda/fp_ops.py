"""The plugin's float-scheme custom operator ``torch.ops.quantlinear_cuda.fp_gemm`` and its tuner.

The op and its per-call path are the shared ones (:mod:`quantlinear_triton.fp_ops`); this module
binds them to the CUDA float space (:class:`quantlinear_triton.fp_tune.FPSpace` over this
plugin's device properties: SM count, 32-lane warps; 64x64 large tiles below sm80, whose 64 KiB
of shared memory the 128x128 tile exceeds).  Switches: ``QUANTLINEAR_CUDA_FP_TUNE=1`` tunes on
first use (off by default), ``QUANTLINEAR_CUDA_FP_TUNE_CACHE`` moves or disables the user
cache.  Per M: ``mmv`` (the tensor-core decode kernel) at M = 1..16 for fp16 MXFP4 / NVFP4 on sm_80+ (NVFP4 sm_89+),
``gemv16`` (PTX fp16x2 decode) at M = 1 for the other fp16 4-bit weights, ``tc`` (the register-A
tensor-core kernel) for 65..512 rows on Hopper, ``dqmm`` (dequantize into a temporary, then cuBLAS) from 1024; ``QUANTLINEAR_CUDA_DQMM=0`` (or
``QUANTLINEAR_CUDA_FP_DQMM=0``) forbids ``dqmm``.  Registering the op imports no Triton.
"""

from __future__ import annotations

from pathlib import Path

from quantlinear_triton import fp_ops as _shared
from quantlinear_triton.fp_tune import FPSpace, make_tuner

from . import device as _device
from . import tune


def _max_shared(props) -> int | None:
    return 64 * 1024 if props.capability < (8, 0) else None


def _hopper(props) -> bool:
    """The float ``tc`` kernel's tiles (up to 128 KiB of shared memory for the activation pipeline) were measured on
    sm90 only; elsewhere the M > 64 buckets keep ``dot`` / ``dqmm``."""
    return props.capability[0] == 9


SPACE = FPSpace("cuda_fp", Path(__file__).parent / "tuned", lambda d: _device.device_props(d),
                units=lambda p: p.sm_count, max_shared=_max_shared, paired_fp16=True, dqmm=True,
                dqmm_envs=("QUANTLINEAR_CUDA_DQMM",), tc=_hopper, mmv=tune.mmv_device)
TUNER = make_tuner(SPACE)

run_fp_gemm, fp_gemm, FP_OP = _shared.bind_fp_gemm("quantlinear_cuda", TUNER)
