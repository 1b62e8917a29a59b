"""Plugin discovery through real entry points: lazy, isolated, and never fatal for ``auto``.

Each test installs small plugin distributions (a ``*.dist-info`` with ``entry_points.txt``
next to the module, on ``sys.path``), which is exactly how pip-installed plugins are found.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import quantlinear as ql
from quantlinear import LayerSpec, Registry, Scheme, select_kernel

GOOD = '''
import torch
from quantlinear import QuantLinear, hookimpl, PLUGIN_API_VERSION

class Dense(QuantLinear):
    """Third-party kernel used by tests: dequantize once and matmul."""
    name = "goodplug.dense"
    priority = 100
    device_families = frozenset({"cpu"})
    bits = frozenset({4})
    def prepare(self, w):
        self.register_buffer("w", w.dequantize(self.spec.group_size, self.spec.dtype))
    def compute(self, x):
        return x @ self.w.t()

@hookimpl
def quantlinear_plugin_api():
    return [PLUGIN_API_VERSION]

@hookimpl
def quantlinear_kernels():
    return [Dense]
'''

PLUGINS = {
    "goodplug": GOOD,
    "brokenplug": "raise ImportError('libvendor.so: cannot open shared object file')\n",
    "hookraises": "from quantlinear import hookimpl\n@hookimpl\ndef quantlinear_kernels():\n    raise RuntimeError('driver too old')\n",
    "junkplug": "from quantlinear import hookimpl\n@hookimpl\ndef quantlinear_kernels():\n    return ['not a kernel']\n",
    "futureplug": "from quantlinear import hookimpl\n@hookimpl\ndef quantlinear_plugin_api():\n    return [99]\n@hookimpl\ndef quantlinear_kernels():\n    return []\n",
    # a device-family plugin for a family this machine does not have
    "fakegpu": "raise ImportError('no fakegpu here')\n",
}


def install_fake_plugins(root, names):
    for name in names:
        mod = f"ql_test_{name}"
        (root / f"{mod}.py").write_text(textwrap.dedent(PLUGINS[name]))
        di = root / f"{mod}-1.0.dist-info"
        di.mkdir()
        (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod}\nVersion: 1.0\n")
        (di / "entry_points.txt").write_text(f"[quantlinear.plugins]\n{name} = {mod}\n")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    import importlib

    registry_module = importlib.import_module("quantlinear.registry")  # the attribute quantlinear.registry is the function
    monkeypatch.setattr(registry_module, "FAMILIES", registry_module.FAMILIES + ("fakegpu",))
    install_fake_plugins(tmp_path, list(PLUGINS))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in PLUGINS:
        sys.modules.pop(f"ql_test_{name}", None)
    return tmp_path


def spec(device="cpu"):
    return LayerSpec(Scheme(bits=4, group_size=128), "gptq", 256, 64, False, torch.float32, device, False, "model.layers.0.mlp.up_proj")


def test_discovery_reads_metadata_without_importing(installed):
    pytest.importorskip("quantlinear_cpu", reason="checks the installed in-tree CPU plugin too")
    reg = Registry()
    states = {p.name: p.state for p in reg.plugins()}
    assert states["goodplug"] == states["brokenplug"] == "available"
    assert states["cpu"] == "available"  # the real in-tree plugin, found the same way
    assert "ql_test_goodplug" not in sys.modules
    assert reg.plugin("goodplug").distribution == "ql_test_goodplug" and reg.plugin("goodplug").version == "1.0"


def test_auto_survives_broken_plugins_and_reports_them(installed):
    reg = Registry()
    sel = select_kernel(spec(), registry=reg)
    assert sel.kernel.name == "goodplug.dense"
    states = {p.name: (p.state, p.error) for p in reg.plugins()}
    assert states["brokenplug"][0] == "failed" and "libvendor.so" in states["brokenplug"][1]
    assert states["hookraises"][0] == "failed" and "driver too old" in states["hookraises"][1]
    assert states["junkplug"][0] == "failed" and "not a concrete QuantLinear" in states["junkplug"][1]
    assert states["futureplug"][0] == "failed" and "plugin API [99]" in states["futureplug"][1]
    notes = "\n".join(sel.notes)
    assert "brokenplug" in notes and "hookraises" in notes


def test_plugins_of_other_device_families_are_not_imported_for_cpu(installed):
    reg = Registry()
    select_kernel(spec(), registry=reg)
    assert reg.plugin("fakegpu").state == "available"
    assert "ql_test_fakegpu" not in sys.modules
    reg.load_all()  # what `quantlinear doctor` does
    assert reg.plugin("fakegpu").state == "failed" and "no fakegpu here" in reg.plugin("fakegpu").error


def test_naming_a_failed_plugin_explains_why(installed):
    reg = Registry()
    with pytest.raises(ql.NoKernelError, match="libvendor.so"):
        select_kernel(spec(), "brokenplug", registry=reg)


def test_blocked_plugins_are_never_imported(installed, monkeypatch):
    pytest.importorskip("quantlinear_cpu", reason="falls back to the installed in-tree CPU plugin")
    monkeypatch.setenv("QUANTLINEAR_DISABLE", "brokenplug,goodplug")
    reg = Registry()
    sel = select_kernel(spec(), registry=reg)
    assert sel.kernel.name.startswith("cpu.")
    assert reg.plugin("brokenplug").state == "blocked"
    assert "ql_test_brokenplug" not in sys.modules


def test_kernels_must_be_namespaced_by_their_plugin():
    from quantlinear import QuantLinear, hookimpl

    class Wrong(QuantLinear):
        name = "other.k"
        device_families = frozenset({"cpu"})
        bits = frozenset({4})

    class P:
        @hookimpl
        def quantlinear_kernels(self):
            return [Wrong]

    reg = Registry(entry_points=False)
    rec = reg.register(P(), "mine")
    assert rec.state == "failed" and "namespaced by its plugin" in rec.error


def test_importing_quantlinear_imports_no_plugin():
    code = "import sys, quantlinear; bad = [m for m in sys.modules if m.startswith(('quantlinear_', 'triton'))]; print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
