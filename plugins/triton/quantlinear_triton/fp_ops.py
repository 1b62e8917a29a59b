"""The per-call path of the float kernels and a factory for a plugin's ``fp_gemm`` custom op.

Each GPU plugin registers its own op (``torch.ops.quantlinear_cuda.fp_gemm``, ...) through
:func:`bind_fp_gemm` (over :func:`define_fp_gemm`), bound to its own tuner.  One op call is the whole layer: activation
quantization (one launch, when the scheme has it; for the 4-bit-activation schemes on the fp16 ``gemv16``
path it writes the unscaled E2M1 values and their block scales, which the folded GEMV multiplies into the
weight's), then the GEMV, ``tl.dot`` or dequantize-then-cuBLAS
(``dqmm``) path chosen for this M at run time.  The op is opaque to ``torch.compile`` (its fake gives the output's shape
and dtype, so ``fullgraph=True`` traces without a break) and captures in CUDA/HIP graphs (two
launches at most; split-K needs no memset).  Registering an op imports no Triton.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Callable, Optional

import torch
from torch import Tensor

from . import ops as _ops
from . import tune
from .fp_packing import A_NONE, bits_of, slab_for
from .fp_tune import FPProblem
from .ops import dtype_name

_kernels = None


def fp_kernels():
    """:mod:`quantlinear_triton.fp_kernels`, imported (with Triton) on first use."""
    global _kernels
    if _kernels is None:
        from . import fp_kernels

        _kernels = fp_kernels
    return _kernels


@functools.lru_cache(maxsize=1)
def _mmv():
    """:mod:`quantlinear_triton.kernels_mmv` (imports Triton)."""
    from . import kernels_mmv

    return kernels_mmv


def problem_of(x: Tensor, qweight: Tensor, in_features: int, elem: int, scale: int, block: int) -> FPProblem:
    return FPProblem(elem, scale, slab_for(scale, block), bits_of(elem), dtype_name(x.dtype), qweight.shape[0], in_features)


@functools.lru_cache(maxsize=256)
def _as_fp16(problem: FPProblem) -> FPProblem:
    """``problem`` with fp16 activations (made once per layer shape: the eager path runs on every call)."""
    return replace(problem, dtype="float16")


def run_fp_gemm(tuner: "tune.Tuner", x: Tensor, qweight: Tensor, scales: Optional[Tensor], row_scales: Optional[Tensor],
                bias: Optional[Tensor], act_scale: Optional[Tensor], in_features: int, elem: int, scale: int, block: int,
                act: int, act_block: int, problem: FPProblem | None = None, mmv_sigma: Optional[Tensor] = None,
                mmv_mul: float = 0.0, plans: dict | None = None) -> Tensor:
    """Quantize the activations if the scheme says so, choose the configuration for this M, launch.

    ``mmv_sigma`` / ``mmv_mul``: the layer's scales for the tensor-core decode kernel (MXFP4 / NVFP4,
    :func:`.fp_packing.mx_sigma` / :func:`.fp_packing.nv_sigma`); a ``kernel: mmv`` configuration runs it where they
    exist and the activations are fp16 on an sm_80+ GPU (NVFP4: sm_89+), else the space's configuration without it.
    ``plans``: the layer's launch plans (eager calls; as :func:`.ops.run_gemm`'s), here of the activation kernel and
    the GEMV together, the quantized activations a fresh temporary per call.
    """
    if plans is not None:
        if problem is None:
            problem = problem_of(x, qweight, in_features, elem, scale, block)
        cfg = tuner.settled(problem, x)
        if cfg is not None:
            weights = (qweight, scales, row_scales, bias, act_scale, mmv_sigma)
            return _ops.run_planned(plans, cfg, x, qweight.shape[0], weights, _ops.triton_kernels().persistent_tensors,
                                    lambda: _run_fp_gemm(tuner, x, qweight, scales, row_scales, bias, act_scale, in_features,
                                                         elem, scale, block, act, act_block, problem, mmv_sigma, mmv_mul))
    return _run_fp_gemm(tuner, x, qweight, scales, row_scales, bias, act_scale, in_features, elem, scale, block, act,
                        act_block, problem, mmv_sigma, mmv_mul)


def _run_fp_gemm(tuner, x, qweight, scales, row_scales, bias, act_scale, in_features, elem, scale, block, act, act_block,
                 problem, mmv_sigma, mmv_mul) -> Tensor:
    k = fp_kernels()
    x_in, qx, px = x, [], []  # the activations as given; their quantization for mmv, plain and as pairs (made once)
    if problem is None:
        problem = problem_of(x, qweight, in_features, elem, scale, block)
    if act != A_NONE and k.fold_fits(elem, scale, block, act, act_block, x.dtype):
        # 4-bit activations: gemv16 (psum 4, fold not 0) takes the values and their block scales apart.  The values
        # are E2M1 whatever x's dtype, so bf16 layers run the same fp16-pair GEMV (fp16's configuration at M = 1)
        # and only the output is bf16
        x_raw, xq, split = x, [], []
        if x.dtype != torch.float16 and x.shape[0] == 1:
            problem = _as_fp16(problem)

        def run(cfg: dict) -> Tensor:
            if cfg["kernel"] == "gemv16" and int(cfg.get("psum", 4)) == 4 and int(cfg.get("fold", 1)):
                if not split:
                    split.extend(k.quantize_activations_split(x_raw, act, act_block, act_scale))
                out = None if x_raw.dtype == torch.float16 else x_raw.new_empty((x_raw.shape[0], qweight.shape[0]))
                return k.launch(split[0], qweight, scales, row_scales, bias, elem, scale, block, cfg, out=out,
                                x_scales=split[1])
            if not xq:
                xq.append(k.quantize_activations(x_raw, act, act_block, act_scale))
            return k.launch(xq[0], qweight, scales, row_scales, bias, elem, scale, block, cfg)
    else:
        if act != A_NONE:
            x = k.quantize_activations(x, act, act_block, act_scale)

        def run(cfg: dict) -> Tensor:
            return k.launch(x, qweight, scales, row_scales, bias, elem, scale, block, cfg)

    nv = scale == 2  # (S_E4M3: NVFP4)
    mmv = mmv_sigma is not None and _mmv().runs_fp(x_in, x_in.shape[0], nv)

    def run_any(cfg: dict) -> Tensor:  # ``mmv`` configurations here, the scheme's paths in ``run``
        if cfg["kernel"] != "mmv":
            return run(cfg)
        mm = _mmv()
        if act != A_NONE and mm.reads_pairs(cfg, x_in.shape[0]):  # ks: the quantized activations as B-register pairs
            if not px:
                px.append(k.quantize_activations_pairs(x_in, act, act_block, act_scale, nv))
            return mm.launch_mmv_fp(x_in, qweight, mmv_sigma, row_scales, bias, mmv_mul, cfg, nv=nv, pairs=px[0])
        if not qx:
            qx.append(x_in if act == A_NONE else k.quantize_activations(x_in, act, act_block, act_scale))
        return mm.launch_mmv_fp(qx[0], qweight, mmv_sigma, row_scales, bias, mmv_mul, cfg, nv=nv)

    cfg = tuner.get(x.device, problem, x.shape[0], run_any)
    if cfg["kernel"] == "dqmm" and not tuner.dqmm_enabled():  # a table's dqmm entry, forbidden now
        cfg = tuner.default_config(problem, x.shape[0], tuner.device_props(x.device), allow_dqmm=False)
    if cfg["kernel"] == "mmv" and not mmv:  # a configuration for layers with mmv_sigma; this one has none
        cfg = _without_mmv(tuner, problem, x)
    return run_any(cfg)


_no_mmv: dict[tuple, dict] = {}


def _without_mmv(tuner: "tune.Tuner", problem: FPProblem, x: Tensor) -> dict:
    """The space's default for a layer ``mmv`` cannot run (no ``mmv_sigma``, bf16 activations, an older GPU), made once
    per (tuner, problem, M, device)."""
    key = (id(tuner), problem, x.shape[0], x.get_device())
    cfg = _no_mmv.get(key)
    if cfg is None:
        if len(_no_mmv) > 4096:
            _no_mmv.clear()
        cfg = _no_mmv[key] = tuner.space.default_config(problem, x.shape[0], tuner.device_props(x.device), mmv=False)
    return cfg


def define_fp_gemm(qualname: str, run: Callable[..., Tensor]):
    """Register ``qualname`` (``"<namespace>::fp_gemm"``) as a custom op running ``run`` (with a fake)."""

    def fp_gemm(x: Tensor, qweight: Tensor, scales: Optional[Tensor], row_scales: Optional[Tensor], bias: Optional[Tensor],
                act_scale: Optional[Tensor], in_features: int, elem: int, scale: int, block: int, act: int, act_block: int,
                mmv_sigma: Optional[Tensor] = None, mmv_mul: float = 0.0) -> Tensor:
        return run(x, qweight, scales, row_scales, bias, act_scale, in_features, elem, scale, block, act, act_block,
                   mmv_sigma=mmv_sigma, mmv_mul=mmv_mul)

    fp_gemm.__doc__ = "``actq(x) @ W^T (+ bias)`` for float-scheme weights in the layout of :mod:`quantlinear_triton.fp_packing`."
    op = torch.library.custom_op(qualname, mutates_args=())(fp_gemm)

    @op.register_fake
    def _fp_gemm_fake(x, qweight, scales, row_scales, bias, act_scale, in_features, elem, scale, block, act, act_block,
                      mmv_sigma=None, mmv_mul=0.0):
        torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
        torch._check(x.shape[1] == in_features, lambda: f"x has {x.shape[1]} features, expected {in_features}")
        torch._check(qweight.dim() == 2 and qweight.dtype == torch.int32, lambda: "qweight must be a 2-D int32 tensor")
        return x.new_empty((x.shape[0], qweight.shape[0]))

    return op


def bind_fp_gemm(namespace: str, tuner: "tune.Tuner"):
    """A plugin's float op bound to ``tuner``: ``(run_fp_gemm, fp_gemm, FP_OP)``.

    ``run_fp_gemm(x, ..., act_block, problem=None)`` is the per-call path (what the layers call in
    eager mode), ``fp_gemm`` the custom op ``"<namespace>::fp_gemm"`` running it, ``FP_OP`` its
    overload packet (``torch.ops.<namespace>.fp_gemm``).
    """

    def run(x: Tensor, qweight: Tensor, scales: Optional[Tensor], row_scales: Optional[Tensor], bias: Optional[Tensor],
            act_scale: Optional[Tensor], in_features: int, elem: int, scale: int, block: int, act: int, act_block: int,
            problem: FPProblem | None = None, mmv_sigma: Optional[Tensor] = None, mmv_mul: float = 0.0,
            plans: dict | None = None) -> Tensor:
        return run_fp_gemm(tuner, x, qweight, scales, row_scales, bias, act_scale, in_features, elem, scale, block, act, act_block,
                           problem, mmv_sigma, mmv_mul, plans)

    run.__name__ = run.__qualname__ = "run_fp_gemm"
    op = define_fp_gemm(f"{namespace}::fp_gemm", run)
    return run, op, getattr(getattr(torch.ops, namespace), "fp_gemm")


__all__ = ["bind_fp_gemm", "define_fp_gemm", "fp_kernels", "problem_of", "run_fp_gemm"]
