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
