"""The standalone benchmark script's option parsing (no GPU needed)."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cuda.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_cuda", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_options():
    mod = load()
    args = mod.parse_args(["--shapes", "4096x4096,8192x28672", "--ms", "1,16", "--scheme", "W8A16", "--dtype", "bf16",
                           "--kernels", "cuda.triton,peer.cublas", "--iters", "7"])
    o = mod.build_options(args)
    assert o.shapes == ((4096, 4096), (8192, 28672)) and o.ms == (1, 16)
    assert o.scheme == "W8A16" and o.dtype == torch.bfloat16 and o.kernels == ("cuda.triton", "peer.cublas") and o.iters == 7
    o = mod.build_options(mod.parse_args([]))
    assert o.scheme == "W4A16" and o.dtype == torch.float16 and len(o.shapes) == 6 and o.device == "cuda"


def test_host_profile_lists_where_the_calls_spend_their_time():
    from quantlinear_cuda.bench import host_profile

    def decode_call():
        return sorted(range(50), key=lambda v: -v)

    text = host_profile(decode_call, 20, 5)
    row = next(line for line in text.splitlines() if "(decode_call)" in line)
    assert row.split()[0] == "20" and "tottime" in text  # 20 calls of it, listed by own time


def test_interleaved_timing_spreads_a_clock_drift_over_every_implementation():
    """Batches are taken in turns (the order rotated each round): under a GPU that slows down through the run, two
    equally fast implementations still measure equal, where timing one after the other would favour the first."""
    from quantlinear_cuda.bench import time_interleaved

    clock = {"t": 0}
    order = []

    class Drifting:  # a timer whose every batch reads 1% slower than the last one of any implementation
        def __init__(self, name, us):
            self.name, self.us = name, us

        def settle(self, ms):
            order.append(f"settle {self.name} {ms:g}")

        def batch(self):
            order.append(self.name)
            clock["t"] += 1
            return self.us * (1.01 ** clock["t"])

    got = time_interleaved({"ours": Drifting("ours", 100.0), "cublas": Drifting("cublas", 100.0)}, rounds=5)
    assert order == ["ours", "cublas", "cublas", "ours", "ours", "cublas", "cublas", "ours", "ours", "cublas"]
    assert abs(got["ours"] / got["cublas"] - 1) < 0.011  # the medians: batch 5 vs batch 6 of ten
    one_after_other = [100.0 * 1.01 ** t for t in range(1, 11)]
    assert one_after_other[7] / one_after_other[2] > 1.05  # what five batches each, in sequence, would have read
    order.clear()
    time_interleaved({"ours": Drifting("ours", 1.0), "cublas": Drifting("cublas", 1.0)}, rounds=1, settle_ms=100.0)
    assert order == ["settle ours 100", "ours", "settle cublas 100", "cublas"]  # each batch at its own steady clock
