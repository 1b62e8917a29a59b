"""Shared helpers for the CUDA plugin tests (imported as a module, not a conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from quantlinear_cuda.device import DeviceProps

GPU = torch.cuda.is_available() and not getattr(torch.version, "hip", None)
DEV = torch.device("cuda") if GPU else torch.device("cpu")


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref| (NaN anywhere fails)."""
    y = y.float()
    if not torch.isfinite(y).all():
        return float("inf")
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


#: tolerance on rel_err per activation dtype (fp32 reference, output rounded to the dtype)
TOL = {torch.float16: 2e-3, torch.float32: 2e-5, torch.bfloat16: 1.6e-2}


# ---- CUDA graphs ----------------------------------------------------------------------------------------------
def capture_graph(fn, *args, warmups=1):
    """Run ``fn(*args)`` ``warmups`` times on a side stream, then capture one call into a CUDA graph.

    Returns ``(graph, output)``; the graph has not been replayed yet.
    """
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmups):
            fn(*args)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = fn(*args)
    return g, y


def graph_replay_fresh(layer, x):
    """Capture ``layer(x)`` in a CUDA graph, refill ``x`` with fresh randoms and the output with NaN,
    replay twice and synchronize; returns the graph's output tensor."""
    g, y = capture_graph(layer, x)
    x.copy_(torch.randn_like(x))
    y.fill_(float("nan"))
    g.replay()
    g.replay()
    torch.cuda.synchronize()
    return y


# ---- selection with simulated devices -------------------------------------------------------------------------
SM90 = DeviceProps("NVIDIA H100 80GB HBM3", (9, 0), sm_count=132)
SM80 = DeviceProps("NVIDIA A100-SXM4-80GB", (8, 0), sm_count=108)
SM75 = DeviceProps("Tesla T4", (7, 5), sm_count=40)
SM70 = DeviceProps("Tesla V100", (7, 0), sm_count=80)


def simulate(monkeypatch, props, triton=True):
    """Make the plugin see a device with ``props`` (and Triton available or not); clears the selection cache."""
    from quantlinear.select import clear_cache
    from quantlinear_cuda import device as cuda_device

    monkeypatch.setattr(cuda_device, "device_props", lambda device: props)
    monkeypatch.setattr(cuda_device, "triton_available", lambda: triton)
    clear_cache()


# ---- cross-compile checks -------------------------------------------------------------------------------------
def compile_in_subprocess(test_file: str, arg: str, timeout: int = 600) -> list[dict]:
    """Run ``python test_file arg`` with compiled (not interpreted) Triton and return the JSON lines it prints: the
    Gluon kernels' machine-code checks build them for a GPU target on a CPU-only machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "QUANTLINEAR_CUDA_CPU_INTERPRET")}
    r = subprocess.run([sys.executable, test_file, arg], env=env, capture_output=True, text=True, timeout=timeout,
                       cwd=os.path.dirname(test_file))
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
