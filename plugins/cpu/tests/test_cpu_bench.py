"""Smoke test of the CPU benchmark runner and script on one tiny shape (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from quantlinear import benchutil
from quantlinear_cpu import bench, plugin

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu.py"


def _opts(**kw):
    base = dict(device="cpu", scheme="W4A16", dtype=torch.bfloat16, shapes=((256, 64),), ms=(1, 3), warmup=1, iters=2,
                progress=False, extra={"reps": 1, "round_ms": 1, "bandwidth": 1e10, "busy_retries": 0})
    base.update(kw)
    return benchutil.BenchOptions(**base)


def test_hook_returns_runner_for_cpu_only():
    assert plugin.quantlinear_benchmark("cpu") is bench.run
    assert plugin.quantlinear_benchmark("cuda") is None


def test_runner_rows():
    rows = bench.run(_opts())
    names = {r.kernel for r in rows}
    assert {"peer.dense_fp32", "peer.dense_bfloat16", "cpu.int4pack", "cpu.dequant", bench.ARK, bench.AR_TORCH} <= names
    assert rows[0].kernel == bench.DENSE  # the CLI takes the first dense peer as its baseline
    assert len(rows) == len(names) * 2 and {r.M for r in rows} == {1, 3}
    for r in rows:
        assert r.device_us == r.eager_us  # CPU: device time is eager time
        if r.device_us is None:
            assert "not installed" in r.note or "ARK" in r.note
            continue
        assert r.device_us > 0 and r.max_rel_err is not None
        if r.kernel.startswith("cpu."):
            assert r.max_rel_err <= 1e-2, r
    auto = {r.kernel for r in rows if r.note.startswith("auto")}
    assert auto in ({"cpu.native_f32"}, {"cpu.int4pack"})  # int4pack where the C kernel cannot be built
    dicts = bench.add_ark_ratios(benchutil.add_ratios(rows, bench.DENSE))
    assert all("vs_ark" in d and "vs_dense" in d for d in dicts)


def test_runner_fp32_kernel_filter_and_peer_reasons():
    rows = bench.run(_opts(scheme="W3A16", dtype=torch.float32, ms=(2,), kernels=("peer.dense_fp32", "dequant", "ark")))
    by = {r.kernel: r for r in rows}
    assert set(by) == {"peer.dense_fp32", "cpu.dequant", "peer.ark"}
    assert by["cpu.dequant"].max_rel_err <= 1e-4
    assert by["peer.ark"].device_us is None and by["peer.ark"].note  # ARK has no 3-bit kernel (or is not installed)


def test_script_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_cpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "b.json"
    assert mod.main(["--shapes", "128x32", "--ms", "1", "--scheme", "W8A16", "--dtype", "bf16", "--iters", "1", "--reps", "1",
                     "--busy-retries", "0", "--quiet", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "peer.dense_fp32" in text and "M = 1:" in text
    data = json.loads(out.read_text())
    assert data["options"]["dtype"] == "bfloat16" and data["environment"]["torch_threads"] >= 1
    assert {r["kernel"] for r in data["rows"]} >= {"peer.dense_fp32", "cpu.int4x2"}
