"""Build a model skeleton without materializing its float weights.

``with quantlinear.skeleton(): model = MyModel(config)`` puts every *parameter* on the
``meta`` device (so a 70B model costs no memory) while *buffers* stay real: non-persistent
buffers such as rotary-embedding tables are computed in ``__init__`` and are not in any
checkpoint, so they must not be lost to ``meta``.  Weight-initialization functions are
skipped inside the block, since every parameter is replaced at load time.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

_INIT_FUNCS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
)


@contextlib.contextmanager
def skeleton() -> Iterator[None]:
    old_register = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        old_register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and not p.is_meta:
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    saved = {f: getattr(nn.init, f) for f in _INIT_FUNCS if hasattr(nn.init, f)}
    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    for f in saved:
        setattr(nn.init, f, lambda t, *a, **k: t)
    try:
        yield
    finally:
        nn.Module.register_parameter = old_register  # type: ignore[method-assign]
        for f, fn in saved.items():
            setattr(nn.init, f, fn)
