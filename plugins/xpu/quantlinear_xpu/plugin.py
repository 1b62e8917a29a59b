"""The XPU plugin's hooks. Adding a kernel: its file under ``kernels/``, one line here, its tests.

Nothing vendor-specific is imported here or at kernel-module import time: the XPU ops are part
of PyTorch, and intel-extension-for-pytorch is only imported by ``xpu.ipex`` after its version
was checked against torch's (a mismatched IPEX terminates the process on import).

Triton on XPU: not provided yet.  Intel's Triton backend ships with PyTorch's XPU wheels
(``pytorch-triton-xpu``), so Triton kernels could run here; the shared Triton kernels of the
CUDA plugin are being written separately and will be validated on XPU before this plugin
offers them.  Never add the generic ``triton`` wheel to this plugin's dependencies: it would
replace Intel's build.
"""

from quantlinear import PLUGIN_API_VERSION, hookimpl


@hookimpl
def quantlinear_plugin_api():
    return [PLUGIN_API_VERSION]


@hookimpl
def quantlinear_kernels():
    from .kernels.int4_onednn import Int4OneDNNLinear
    from .kernels.int8pack import Int8PackLinear
    from .kernels.ipex_woq import IPEXWeightOnlyLinear

    return [Int4OneDNNLinear, Int8PackLinear, IPEXWeightOnlyLinear]
