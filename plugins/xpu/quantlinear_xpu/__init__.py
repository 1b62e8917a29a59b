"""quantlinear Intel XPU plugin: int4/int8 weight-only matmuls from PyTorch's XPU (oneDNN) ops,
and optionally intel-extension-for-pytorch's weight-only linear where a matching build exists.
Registered through the entry point ``quantlinear.plugins: xpu``.

Verification status: every kernel here was written against the vendor sources named in
``README.md`` and tested only against faithful fakes of those APIs (``tests/fake_xpu.py``);
none has run on Intel hardware yet.
"""

__version__ = "0.1.0"
