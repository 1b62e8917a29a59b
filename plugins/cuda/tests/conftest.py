"""Test setup for the CUDA plugin.

Without a CUDA GPU every Triton kernel runs through Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, read when the kernels module is first imported, which happens
inside these tests) with the plugin's test-only CPU switch on.  On a machine with a CUDA GPU
the same tests run the compiled kernels on the GPU, and the GPU-only tests run too.
Launch-config tuning is off and the on-disk tuning cache is not used: tests get the
deterministic defaults.  The variables are set per test (autouse fixture), so other test
directories in the same session are not affected.
"""

import pytest
import torch

GPU = torch.cuda.is_available() and not getattr(torch.version, "hip", None)
ENV = {"QUANTLINEAR_CUDA_TUNE": "0", "QUANTLINEAR_CUDA_TUNE_CACHE": "off"}
if not GPU:
    ENV.update({"TRITON_INTERPRET": "1", "QUANTLINEAR_CUDA_CPU_INTERPRET": "1"})


@pytest.fixture(autouse=True)
def _cuda_plugin_env(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def reg():
    """A registry holding only this plugin, with the selection cache cleared before and after."""
    import quantlinear_cuda.plugin as cuda_plugin
    from quantlinear import Registry
    from quantlinear.select import clear_cache

    clear_cache()
    r = Registry(entry_points=False)
    r.register(cuda_plugin, "cuda")
    yield r
    clear_cache()
