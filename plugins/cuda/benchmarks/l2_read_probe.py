#!/usr/bin/env python3
"""How many bytes a second can the multiprocessors read out of L2?  The ceiling of a GEMM whose operands sit in L2.

    python plugins/cuda/benchmarks/l2_read_probe.py [--json PATH]

``wg`` (the Hopper prefill kernel) streams each program's activation rows ``[BM, K]`` through TMA and its weight rows
as 4-bit words: a 256 x 128 tile reads ``256 K * 2 + 128 K / 2`` bytes for ``2 * 256 * 128 * K`` FLOPs, i.e. once per
128 weight rows the whole of ``x``.  This probe times plain reads of an L2-resident buffer on the benchmark's CUDA-graph
protocol, so that ``wg``'s read rate can be held against what the multiprocessors get out of L2:

* ``lsu``: ``P`` programs each read the whole buffer (int32, 16-byte vector loads), program ``p`` starting at its own
  offset (``p * 4099`` blocks of 16 KB on, wrapping around): every line is read by every program, but not at the same time;
* ``lsu-same``: the same, every program starting at 0: the programs read the same lines at about the same time, as the
  programs of one token block of ``wg`` do;
* ``tma``: as ``lsu-same`` through TMA boxes of 256 x 64 fp16 (``wg``'s load path; Triton's tensor descriptors).

Each row: buffer MB, programs, warps, time (us), bytes read by all programs / time (TB/s).  With ``--wg``, ``wg``
itself on the benchmark shapes (the table's configurations) with the bytes its programs read and their rate.

H100 (``results/h100-l2-read-probe-2026-11-26.txt``): TMA reads 6.0-6.7 TB/s with one program a multiprocessor and
10.0-10.8 with two; staggered vector loads 5.0-7.7 and 8.0-9.7.  ``wg`` at M = 1024 reads 5.1-6.4 TB/s (579-728
TFLOP/s), one program a multiprocessor (its 256-token tiles take the register file), i.e. at the one-program rate; at
M = 256 on 4096 x 4096 it reads 3.3 TB/s, so there the limit is elsewhere.  More activation stages in flight did not
make ``wg`` faster (``results/h100-wg-probes-not-kept-2026-11-26.txt``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantlinear_cuda.bench import time_graph  # noqa: E402
from read_floor import _xor  # noqa: E402
from wg_variants import _weights  # noqa: E402


@triton.jit
def _lsu_read(p, out, n, stagger, BLOCK: tl.constexpr):
    """``n`` a power of two, ``stagger`` a multiple of ``BLOCK``: each block is contiguous (vector loads)."""
    pid = tl.program_id(0)
    start = (pid * stagger) & (n - 1)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for off in range(0, n, BLOCK):
        base = tl.multiple_of((start + off) & (n - 1), BLOCK)
        acc ^= tl.load(p + base + tl.arange(0, BLOCK))
    tl.store(out + pid, tl.reduce(acc, 0, _xor))


@triton.jit
def _tma_read(desc, out, rows, cols, BM: tl.constexpr, BK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BM, BK], dtype=tl.int16)
    for r in range(0, rows, BM):
        for c in range(0, cols, BK):
            acc ^= desc.load([r, c])
    tl.store(out + pid, tl.reduce(tl.reduce(acc, 1, _xor), 0, _xor).to(tl.int32))


#: (K, N, M, wg configuration) of ``--wg``: the tuned table's choice at M = 1024 and the 4096 x 4096 M = 256 one
WG_CELLS = [(K, N, 1024, {"BM": 256}) for K, N in ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672),
                                                  (28672, 8192), (3072, 12288))] \
    + [(4096, 4096, 256, {"BM": 128, "planes": 2, "split_k": 2})]


def wg_traffic() -> list[dict]:
    """``wg``'s device time per call (CUDA graphs over weight copies > 150 MB, :func:`wg_variants._weights`'s random
    codes and scales) and the bytes its programs read: each reads its ``BM`` rows of ``x`` over its K range (2 bytes an
    element) and its 128 weight rows (half a byte a weight, 2 bytes a scale per 128)."""
    import math

    from quantlinear_triton import kernels_wg as WG

    gen = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for K, N, M, cfg in WG_CELLS:
        copies = max(2, math.ceil(150e6 / (N * K // 2)))
        ws = [_weights(K, N, 128, False, gen, "cuda")[:2] for _ in range(copies)]
        x = torch.randn(M, K, device="cuda", generator=gen).half()
        t = time_graph([lambda q=q, s=s: WG.launch_wg(x, q, s, None, None, 128, 8.0, cfg) for q, s in ws], target_ms=20.0)
        BM = cfg["BM"]
        tiles = -(-M // BM) * -(-N // 128)
        nbytes = tiles * (BM * K * 2 + 128 * K // 2 + 128 * (K // 128) * 2)  # (split-K: the K ranges add up)
        out.append(dict(K=K, N=N, M=M, cfg=cfg, us=t, l2_bytes=nbytes, TBps=nbytes / t / 1e6,
                        TFLOPs=2 * M * N * K / t / 1e6))
        print(f"wg {K:5} x {N:5}  M={M:4}  {t:8.1f} us  reads {nbytes / 1e9:6.3f} GB  {out[-1]['TBps']:5.2f} TB/s  "
              f"{out[-1]['TFLOPs']:5.0f} TFLOP/s", flush=True)
        del ws
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json")
    ap.add_argument("--wg", action="store_true", help="also time wg on the benchmark shapes and give its L2 read rate")
    a = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for mb, mult, warps in itertools.product((2, 8, 16), (1, 2), (4, 8)):
        n = mb * 2**20 // 4
        buf = torch.randint(-2**31, 2**31 - 1, (n,), dtype=torch.int32, device="cuda")
        progs = sms * mult
        out = torch.empty(progs, dtype=torch.int32, device="cuda")
        for mode, stagger in (("lsu", 4099 * 4096), ("lsu-same", 0)):
            t = time_graph([lambda: _lsu_read[(progs,)](buf, out, n, stagger, BLOCK=4096, num_warps=warps)], target_ms=20.0)
            rows.append(dict(mode=mode, MB=mb, programs=progs, warps=warps, us=t, TBps=progs * n * 4 / t / 1e6))
            print(f"{mode:9} {mb:3} MB  {progs:4} programs  {warps} warps  {t:9.1f} us  {rows[-1]['TBps']:6.2f} TB/s", flush=True)
        try:
            from triton.tools.tensor_descriptor import TensorDescriptor

            x = buf.view(torch.int16).view(-1, 4096)
            desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [256, 64])
            t = time_graph([lambda: _tma_read[(progs,)](desc, out, x.shape[0], 4096, BM=256, BK=64, num_warps=warps)],
                           target_ms=20.0)
            rows.append(dict(mode="tma", MB=mb, programs=progs, warps=warps, us=t, TBps=progs * n * 4 / t / 1e6))
            print(f"{'tma':9} {mb:3} MB  {progs:4} programs  {warps} warps  {t:9.1f} us  {rows[-1]['TBps']:6.2f} TB/s", flush=True)
        except Exception as e:  # (a Triton without host tensor descriptors)
            print(f"tma: {type(e).__name__}: {str(e)[:300]}", flush=True)
        del buf
    wg = wg_traffic() if a.wg else []
    res = dict(device=torch.cuda.get_device_name(), triton=triton.__version__, rows=rows, wg=wg)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
