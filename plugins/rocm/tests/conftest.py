"""Test setup for the ROCm plugin (no AMD hardware needed).

The ROCm runtime is simulated per test (``fake_rocm.simulate_rocm(arch)``); CPU tensors stand in
for the GPU's (``QUANTLINEAR_ROCM_CPU_INTERPRET=1``) and the Triton kernels run in Triton's
interpreter, which the repository's conftest switches on for machines without a GPU.  Tuning is
off and no cache file is used: the tests get each architecture's deterministic defaults.
"""

import pytest

from quantlinear_rocm import tune

ENV = {"QUANTLINEAR_ROCM_TUNE": "0", "QUANTLINEAR_ROCM_TUNE_CACHE": "off", "QUANTLINEAR_ROCM_CPU_INTERPRET": "1"}


@pytest.fixture(autouse=True)
def _rocm_plugin_env(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    tune.TUNER.clear()  # configurations are per (device, problem): a test may simulate another arch on "cpu"
    yield
    tune.TUNER.clear()
