"""The NPU plugin's hooks. Adding a kernel: its file under ``kernels/``, one line here, its tests.

``quantlinear_kernels`` is where torch_npu is imported, and only if it is installed and not
imported yet (normally PyTorch's device-backend autoload already imported it).  A torch_npu that
is installed but cannot be imported (no CANN: ``ImportError: libhccl.so ...``) raises here, so
the core reports this plugin as *failed* with that error while every other plugin, and ``auto``
on other devices, go on.  The core imports this plugin only for NPU layers, for
``backend="npu"``/``"npu.*"`` and for ``quantlinear doctor``.
"""

from quantlinear import PLUGIN_API_VERSION, hookimpl


@hookimpl
def quantlinear_plugin_api():
    return [PLUGIN_API_VERSION]


@hookimpl
def quantlinear_kernels():
    from . import runtime
    from .kernels.wqbmm import WeightQuantBatchMatmulLinear

    runtime.import_torch_npu()  # raises PluginError on a broken install; None when not installed
    return [WeightQuantBatchMatmulLinear]
