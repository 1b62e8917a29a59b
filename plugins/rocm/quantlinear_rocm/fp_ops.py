"""The plugin's float-scheme custom operator ``torch.ops.quantlinear_rocm.fp_gemm`` and its tuner.

The shared op and per-call path (:mod:`quantlinear_triton.fp_ops`) over the ROCm float space:
compute units, the wavefront size of the device (64 on CDNA, 32 on RDNA: ``num_warps`` counts
wavefronts, so a program keeps the same lanes), dot tiles shrunk until their LDS (the model of
:func:`quantlinear_triton.fp_tune.dot_shared_bytes`, checked against the compiler for gfx942)
fits the architecture, and AMD's 2 pipeline stages.  ``QUANTLINEAR_ROCM_FP_TUNE=1`` tunes on
first use (off by default).  Registering the op imports no Triton.
"""

from __future__ import annotations

from pathlib import Path

from quantlinear_triton import fp_ops as _shared
from quantlinear_triton.fp_tune import FPSpace, make_tuner

from . import device as _device


def _lds(props) -> int:
    a = props.info
    return a.lds if a is not None else props.lds_per_block


SPACE = FPSpace("rocm_fp", Path(__file__).parent / "tuned", lambda d: _device.device_props(d),
                units=lambda p: p.cu_count, wave=lambda p: p.warp_size, max_shared=_lds, stages=2)
TUNER = make_tuner(SPACE)

run_fp_gemm, fp_gemm, FP_OP = _shared.bind_fp_gemm("quantlinear_rocm", TUNER)
