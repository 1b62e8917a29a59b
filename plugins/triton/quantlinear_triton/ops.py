"""The per-call dispatch of the Triton kernels and a factory for a plugin's custom op.

Each GPU plugin registers its own op (``torch.ops.quantlinear_cuda.wna16_gemm``,
``torch.ops.quantlinear_rocm.wna16_gemm``) through :func:`define_wna16_gemm`, bound to its own
tuner, so the two never share a launch-configuration table.  The op is opaque to
``torch.compile`` (no graph break: its fake implementation gives the output's shape and
dtype) and captures in CUDA/HIP graphs (one Triton launch; split-K needs no memset).  The
launch configuration, and with it the GEMV/matrix-unit dispatch on M, is chosen inside the op
at run time from the plugin's tuner.  Registering an op imports no Triton.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from . import launch as _fast
from . import tune

_kernels = None
#: at most this many M values keep a launch plan per layer (:func:`run_gemm`'s ``plans``)
MAX_PLANS = 64


def triton_kernels():
    """:mod:`quantlinear_triton.kernels`, imported (with Triton) on first use."""
    global _kernels
    if _kernels is None:
        from . import kernels

        _kernels = kernels
    return _kernels


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class PlanCache(dict):
    """A layer's launch plans by (M, device, dtype) (:func:`run_gemm`'s ``plans``).  They hold compiled launchers and
    device tensors, so a copy of the layer (``copy.deepcopy``, pickling) starts with an empty cache instead."""

    def __deepcopy__(self, memo) -> "PlanCache":
        return PlanCache()

    def __reduce__(self):
        return (PlanCache, ())


def view_once(cached: tuple | None, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(t, t.view(dtype))``: ``cached`` while it is that pair for ``t``'s current storage, else a new pair.  A layer
    passing a dtype view of a buffer to its kernels keeps one view object per storage this way, so its launch plans
    (which know the tensors by identity) keep replaying."""
    if cached is None or cached[0] is not t or cached[1].data_ptr() != t.data_ptr():
        return (t, t.view(dtype))
    return cached


class _Plan:
    """A layer's launch at one M (:func:`run_gemm`'s ``plans``): the configuration and the weight tensors it was made
    for, and its :class:`.launch.Replay` (None: that call was not one replayable launch; the normal path runs)."""

    __slots__ = ("cfg", "replay", "tensors")

    def __init__(self, cfg: dict, replay, tensors: tuple):
        self.cfg, self.replay, self.tensors = cfg, replay, tensors


def run_gemm(tuner: "tune.Tuner", x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bias: Optional[Tensor],
             bits: int, group_size: int, in_features: int, slab: int, zero_point: float,
             problem: "tune.Problem | None" = None, plans: dict | None = None) -> Tensor:
    """Choose the launch configuration for this M from ``tuner`` (tuning on first use if enabled) and launch.

    ``plans`` (a layer's own dict, eager calls): the first call at each M whose configuration is settled records its
    launch, and later calls at that M with the same configuration and weight tensors relaunch it through a
    :class:`.launch.Replay` (about 15 us less host time per call on an H100 host), falling back to this path whenever
    the replay declines.
    """
    k = _kernels if _kernels is not None else triton_kernels()
    if problem is None:
        problem = tune.Problem(bits, slab, group_size, zeros is not None, dtype_name(x.dtype), qweight.shape[0], in_features)
    cfg = tuner.settled(problem, x)  # the common case: this (layer kind, M) was decided before
    if cfg is not None:
        if plans is not None:
            return run_planned(plans, cfg, x, qweight.shape[0], (qweight, scales, zeros, bias), k.persistent_tensors,
                               lambda: k.launch(x, qweight, scales, zeros, bias, bits, slab, group_size, in_features,
                                                zero_point, cfg))
        return k.launch(x, qweight, scales, zeros, bias, bits, slab, group_size, in_features, zero_point, cfg)

    def run(cfg: dict) -> Tensor:
        return k.launch(x, qweight, scales, zeros, bias, bits, slab, group_size, in_features, zero_point, cfg)

    cfg = tuner.get(x.device, problem, x.shape[0], run)
    if cfg["kernel"] == "dqmm" and not tuner.dqmm_enabled():
        cfg = tuner.default_config(problem, x.shape[0], tuner.device_props(x.device), allow_dqmm=False)
    return run(cfg)


def run_planned(plans: dict, cfg: dict, x: Tensor, N: int, weights: tuple, persistent: Callable[[], list],
                run: Callable[[], Tensor]) -> Tensor:
    """``run()`` (one layer call at ``x``'s M with the settled configuration ``cfg``) through the layer's plan for that
    M: replayed where the plan was made for ``cfg`` and these ``weights`` (the layer's tensors, by identity) and its
    :class:`.launch.Replay` takes the call; else ``run()``, recorded (:class:`.launch.recording`) into a new plan when
    every launch it made was a verified direct one (otherwise the next call records again).  ``persistent``: the
    tensors besides ``weights`` that outlive the call (split-K workspace and counters)."""
    key = (x.shape[0], x.get_device(), x.dtype)
    p = plans.get(key)
    ids = tuple(map(id, weights))
    if p is not None and p.cfg is cfg and p.tensors == ids:
        if p.replay is not None:
            y = x.new_empty((x.shape[0], N))
            if p.replay(x, y):
                return y
        return run()
    if (len(plans) < MAX_PLANS or p is not None) and _fast.enabled():
        with _fast.recording() as rec:
            y = run()
        if all(r is not None for r in rec):
            r = None
            if y.dtype == x.dtype and tuple(y.shape) == (x.shape[0], N):  # what a replay allocates
                r = _fast.replay_of(rec, x, y, (*weights, *persistent()))
            plans[key] = _Plan(cfg, r, ids)
        return y
    return run()


def define_wna16_gemm(qualname: str, run: Callable[..., Tensor]):
    """Register ``qualname`` (``"<namespace>::wna16_gemm"``) as a custom op running ``run`` (with a fake)."""

    def wna16_gemm(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bias: Optional[Tensor],
                   bits: int, group_size: int, in_features: int, slab: int, zero_point: float) -> Tensor:
        return run(x, qweight, scales, zeros, bias, bits, group_size, in_features, slab, zero_point)

    wna16_gemm.__doc__ = "``x @ W^T (+ bias)`` for W in the slab layout (see :mod:`quantlinear_triton.packing`)."
    op = torch.library.custom_op(qualname, mutates_args=())(wna16_gemm)

    @op.register_fake
    def _wna16_gemm_fake(x, qweight, scales, zeros, bias, bits, group_size, in_features, slab, zero_point):
        torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
        torch._check(x.shape[1] == in_features, lambda: f"x has {x.shape[1]} features, expected {in_features}")
        torch._check(qweight.dim() == 2 and qweight.dtype == torch.int32, lambda: "qweight must be a 2-D int32 tensor")
        return x.new_empty((x.shape[0], qweight.shape[0]))

    return op
