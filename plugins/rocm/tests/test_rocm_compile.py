"""The ROCm default launch configurations compile for the real gfx targets (Triton's HIP backend, no GPU).

Each architecture's defaults for decode (GEMV), small M (matrix cores, skinny tile) and large M
(the largest tile) are compiled for ``GPUTarget("hip", arch, wave)`` in a subprocess with the
interpreter off.  Checked from the compiler's output: the LDS the kernel takes fits the
architecture (64 KiB, 160 KiB on gfx950), the AMD options are accepted, the dot kernel really uses
matrix instructions (MFMA on CDNA, WMMA on RDNA), and the LDS model of quantlinear_rocm.tune
matches what the compiler reports.  Nothing runs: numerics are test_rocm_kernels.py's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantlinear_rocm import archs, tune
from quantlinear_rocm.device import RocmProps
from quantlinear_triton.tune import Problem

from fake_rocm import DEVICES
from rocm_testutil import CDNA, RDNA

pytest.importorskip("triton.backends.amd.compiler")

K, N = 4096, 4096
PROBLEMS = [(4, 128, True, "float16"), (2, 64, False, "bfloat16")]


def jobs():
    out = []
    for arch in CDNA + RDNA:
        d = DEVICES[arch]
        props = RocmProps(d.name, d.gcnArchName, d.warp_size, d.shared_memory_per_block, d.multi_processor_count, d.total_memory, True)
        for bits, group, sym, dtype in PROBLEMS:
            if bits == 2 and arch not in ("gfx942", "gfx950", "gfx1201"):  # long 2-bit tiles: one arch per LDS budget/family
                continue
            p = Problem(bits, 32, group, not sym, dtype, N, K)
            for M in ((1, 16, 256) if bits == 4 else (256,)):
                out.append({"arch": arch, "wave": d.warp_size, "bits": bits, "group": group, "sym": sym, "dtype": dtype, "M": M,
                            "K": K, "N": N, "cfg": tune.SPACE.default_config(p, M, props)})
    return out


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9's default, stated to silence its warning
    script, todo = str(Path(__file__).with_name("rocm_compile.py")), jobs()
    procs = []
    for part in (todo[0::2], todo[1::2]):  # two compilers side by side
        p = subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
        p.stdin.write(json.dumps(part))
        p.stdin.close()
        p.stdin = None  # communicate() must not flush it again
        procs.append(p)
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        out += [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return out


def test_defaults_compile_for_every_target(compiled):
    assert len(compiled) == len(jobs())
    seen = set()
    for entry in compiled:
        job, (res,) = entry["job"], entry["result"]
        a = archs.SUPPORTED[job["arch"]]
        cfg = job["cfg"]
        assert res["kernel"] == {"gemv": "_gemv_kernel", "dot": "_dot_kernel"}[cfg["kernel"]]
        assert res["num_warps"] == cfg["warps"]
        assert res["shared"] <= a.lds, (job, res)
        if cfg["kernel"] == "dot":
            assert res["mfma"] == a.cdna and res["wmma"] == (not a.cdna), (job, res)
            p = Problem(job["bits"], 32, job["group"], not job["sym"], job["dtype"], N, K)
            assert res["shared"] == tune.lds_bytes(a, p, cfg["BM"], cfg["BN"]), (job, res)
        seen.add((job["arch"], cfg["kernel"]))
    assert {k for _, k in seen} == {"gemv", "dot"} and {a for a, _ in seen} == set(CDNA + RDNA)
