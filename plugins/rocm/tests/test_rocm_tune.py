"""The ROCm launch-configuration space: wavefront-aware warps, LDS budgets, AMD compile options, the cache keys."""

import json

import pytest
import torch

from quantlinear_rocm import archs, tune
from quantlinear_rocm.device import RocmProps, device_props
from quantlinear_triton.kernels import BACKEND_OPTIONS
from quantlinear_triton.tune import Problem

from fake_rocm import DEVICES, simulate_rocm
from rocm_testutil import CDNA, RDNA


def props(arch, simulated=False):
    p = DEVICES[arch]
    return RocmProps(p.name, p.gcnArchName, p.warp_size, p.shared_memory_per_block, p.multi_processor_count, p.total_memory, simulated)


def problems():
    for bits in (2, 3, 4, 8):
        for dtype in ("float16", "bfloat16", "float32"):
            for g, has_zeros in ((128, False), (32, True), (14336, True)):
                yield Problem(bits, 32 if g % 32 == 0 else 16, g, has_zeros, dtype, 4096, 14336)


M_VALUES = (1, 2, 8, 16, 64, 128, 256, 1024, 4096)


@pytest.mark.parametrize("arch", CDNA + RDNA)
def test_every_config_fits_lds_and_uses_whole_wavefronts(arch):
    a, pr = archs.SUPPORTED[arch], props(arch)
    assert pr.arch == arch and pr.info is a
    for p in problems():
        for M in M_VALUES:
            cfgs = [tune.SPACE.default_config(p, M, pr)] + tune.SPACE.candidates(p, M, pr)
            assert len(cfgs) > 1
            for i, c in enumerate(cfgs):
                assert c["kernel"] in ("gemv", "dot", "dqmm")
                if c["kernel"] == "dqmm":
                    assert tune.bucket(M) >= 64 and (i == 0 or p.dtype != "float32")
                    continue
                lanes = c["warps"] * a.wave
                assert lanes in (tune.GEMV_LANES, tune.DOT_LANES, 2 * tune.GEMV_LANES), c
                assert c["stages"] == 2
                assert c["split_k"] >= 1 and c["split_k"] & (c["split_k"] - 1) == 0
                if c["kernel"] == "dot":
                    assert tune.lds_bytes(a, p, c["BM"], c["BN"]) <= a.lds, (arch, p, M, c)
                    assert c["BM"] >= 16 and c["BN"] >= 32
                extra = {k for k in c if k in BACKEND_OPTIONS}
                if not a.cdna:
                    assert extra <= {"waves_per_eu"}, c  # WMMA takes no MFMA options
                if "kpack" in c:
                    assert a.kpack2 and c["kpack"] == 2
                if "matrix_instr_nonkdim" in c:
                    assert c["matrix_instr_nonkdim"] in (16, 32) and c["kernel"] == "dot"


def test_wavefront_semantics_of_num_warps():
    p = Problem(4, 32, 128, False, "float16", 4096, 4096)
    cdna = tune.SPACE.default_config(p, 1, props("gfx942"))
    rdna = tune.SPACE.default_config(p, 1, props("gfx1100"))
    assert cdna["kernel"] == rdna["kernel"] == "gemv"
    assert (cdna["warps"], rdna["warps"]) == (2, 4)  # 128 lanes either way
    dot_c, dot_r = (tune.SPACE.default_config(p, 16, props(a)) for a in ("gfx942", "gfx1201"))
    assert (dot_c["warps"], dot_r["warps"]) == (4, 8)  # 256 lanes
    assert dot_c["matrix_instr_nonkdim"] == 16 and "matrix_instr_nonkdim" not in dot_r


def test_lds_decides_the_large_tile():
    """128x128 (the CUDA default beyond 64 rows) needs 72 KiB: too much for gfx90a/gfx942/RDNA, fine on gfx950."""
    p = Problem(4, 32, 128, False, "float16", 4096, 4096)
    assert tune.lds_bytes(archs.SUPPORTED["gfx942"], p, 128, 128) == 73728  # what Triton 3.9 reports for this tile
    big = {a: tune.SPACE.default_config(p, 256, props(a, simulated=True)) for a in ("gfx90a", "gfx942", "gfx950", "gfx1100")}
    assert [big[a]["BM"] for a in ("gfx90a", "gfx942", "gfx950", "gfx1100")] == [64, 64, 128, 64]
    assert big["gfx942"]["waves_per_eu"] == 2
    # 2-bit tiles are twice as long along K: the skinny tile shrinks to fit as well
    p2 = Problem(2, 32, 128, False, "float16", 4096, 4096)
    assert tune.SPACE.default_config(p2, 64, props("gfx942"))["BM"] == 32
    assert tune.SPACE.default_config(p2, 64, props("gfx950"))["BM"] == 64  # 160 KiB: 2 x 64 KiB of activations fit
    assert tune.SPACE.default_config(p, 64, props("gfx942"))["BM"] == 64


def test_split_k_targets_compute_units():
    p = Problem(4, 32, 128, False, "float16", 4096, 14336)
    mi300, mi250 = (tune.SPACE.default_config(p, 1, props(a)) for a in ("gfx942", "gfx90a"))
    assert mi300["split_k"] >= mi250["split_k"]  # 304 CUs want more programs than 110
    assert -(-4096 // 64) * mi300["split_k"] >= 4 * 304 or mi300["split_k"] == 16


def test_dqmm_only_on_real_devices_and_can_be_forbidden(monkeypatch):
    p = Problem(4, 32, 128, False, "float16", 4096, 4096)
    assert tune.SPACE.default_config(p, 4096, props("gfx942"))["kernel"] == "dqmm"
    assert tune.SPACE.default_config(p, 4096, props("gfx942", simulated=True))["kernel"] == "dot"
    monkeypatch.setenv("QUANTLINEAR_ROCM_DQMM", "0")
    assert all(c["kernel"] != "dqmm" for c in tune.SPACE.candidates(p, 4096, props("gfx942")))


def test_backend_options_are_hip_options_of_installed_triton():
    """The option names the configurations pass are fields of Triton's HIPOptions (triton/backends/amd/compiler.py)."""
    from triton.backends.amd.compiler import HIPOptions

    assert set(BACKEND_OPTIONS) <= set(HIPOptions.__dataclass_fields__)
    assert tune.hip_option_names() == frozenset(HIPOptions.__dataclass_fields__)


def test_older_triton_without_an_option(monkeypatch):
    monkeypatch.setattr(tune, "hip_option_names", lambda: frozenset({"waves_per_eu"}))
    c = tune.SPACE.default_config(Problem(4, 32, 128, False, "float16", 4096, 4096), 16, props("gfx942"))
    assert "matrix_instr_nonkdim" not in c and c["waves_per_eu"] == 0


def test_refused_arch_never_gets_a_config():
    with pytest.raises(RuntimeError, match="gfx906"):
        tune.SPACE.default_config(Problem(4, 32, 128, False, "float16", 4096, 4096), 1, props("gfx906"))


def test_tuner_keys_tables_by_gfx_arch(monkeypatch, tmp_path):
    p = Problem(4, 32, 128, False, "float16", 4096, 4096)
    assert tune.SPACE.cache_path("gfx942") is None  # conftest: cache off
    monkeypatch.delenv("QUANTLINEAR_ROCM_TUNE_CACHE")
    assert tune.SPACE.cache_path("gfx942").name == "rocm-tune-gfx942.json"
    cache = tmp_path / "rocm-tune-gfx942.json"
    monkeypatch.setenv("QUANTLINEAR_ROCM_TUNE_CACHE", str(cache))
    mine = tune.SPACE.candidates(p, 16, props("gfx942"))[-1]
    cache.write_text(json.dumps({"version": tune._tune.CACHE_VERSION, "configs": {p.key(16): {"config": mine}}}))
    t = tune._tune.Tuner(tune.SPACE)
    with simulate_rocm("gfx942"):
        pr = device_props(torch.device("cuda", 0))
        assert pr.arch == "gfx942" and not pr.simulated
        assert t.get(torch.device("cuda", 0), p, 9) == mine and t.lookup(pr, p, 16)[1] == "cache"
    monkeypatch.setenv("QUANTLINEAR_ROCM_TUNE_CACHE", "off")  # an explicit path serves every arch; without it, per arch
    t = tune._tune.Tuner(tune.SPACE)
    with simulate_rocm("gfx950"):  # no table for gfx950: the heuristic
        pr = device_props(torch.device("cuda", 0))
        assert t.get(torch.device("cuda", 0), p, 9) == tune.SPACE.default_config(p, 9, pr)
