"""Ahead-of-time compiles of the launches a ``launch()`` would make: compile checks for GPU targets without a GPU.

The kernels of a module are swapped for recorders while its host code runs on CPU tensors
(:func:`record`); each recorded launch becomes an ``ASTSource`` with the launch's constexprs,
the 16-byte divisibility hints the JIT would give its pointers and multiples of 16, and the
compile options it names (:func:`source`), which ``triton.compile`` builds for any
``GPUTarget`` -- Triton ships the backends' assemblers.  Used by the test tools that check the
kernels compile for sm80/sm90/gfx targets (``plugins/triton/tests/fp_compile_check.py``,
``plugins/rocm/tests/rocm_compile.py``); nothing here runs at inference.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

#: Triton signature type of each tensor dtype a launch passes
_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32", torch.uint8: "u8",
          torch.int16: "i16"}


def record(module: Any, names: tuple[str, ...], fn: Callable, *args, **kwargs) -> list[tuple]:
    """``(kernel, args, kwargs)`` of every ``kernel[grid](...)`` launch of ``module``'s kernels ``names`` made by
    ``fn(*args, **kwargs)``; nothing is launched.  The kernels are restored afterwards."""
    log: list[tuple] = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *a, **kw: log.append((self.kernel, a, kw))

    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, Recorder(saved[n]))
        fn(*args, **kwargs)
    finally:
        for n in names:
            setattr(module, n, saved[n])
    return log


def source(kernel, args: tuple, kwargs: dict, option_names: tuple[str, ...]):
    """(``ASTSource``, compile options) of one recorded launch: ``kwargs`` named in ``option_names`` are options, the
    rest constexprs."""
    from triton.compiler import ASTSource

    sig, consts, attrs, opts = {}, {}, {}, {}
    for i, (name, v) in enumerate(zip(kernel.arg_names, args)):
        if isinstance(v, torch.Tensor):
            sig[name], attrs[(i,)] = "*" + _TYPES[v.dtype], [["tt.divisibility", 16]]
        elif isinstance(v, int):
            sig[name] = "i32"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32"
    for name, v in kwargs.items():
        if name in option_names:
            opts[name] = v
        else:
            sig[name], consts[name] = "constexpr", v
    return ASTSource(kernel, {n: sig[n] for n in kernel.arg_names}, constexprs=consts, attrs=attrs), opts
