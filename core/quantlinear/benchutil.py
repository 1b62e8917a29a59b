"""Device-neutral parts of ``quantlinear bench``: options, rows, the table, JSON and the plot.

Timing is device-specific and lives in each plugin's benchmark runner (hook
``quantlinear_benchmark``); this module only shapes what runners return.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import QuantLinearError

#: (K, N) of the reference benchmark (Llama-3-8B/70B and FLUX-like projections).
DEFAULT_SHAPES: tuple[tuple[int, int], ...] = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 28672), (28672, 8192), (3072, 12288))
DEFAULT_MS: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)


@dataclass
class BenchOptions:
    device: str = "cpu"
    scheme: str = "W4A16"
    dtype: torch.dtype = torch.float16
    shapes: tuple[tuple[int, int], ...] = DEFAULT_SHAPES
    ms: tuple[int, ...] = DEFAULT_MS
    kernels: tuple[str, ...] = ()  # empty: every kernel that can run, plus peers
    warmup: int = 10
    iters: int = 50
    #: timed batches per implementation on devices that time batches in turns (CUDA: the median of ``rounds``)
    rounds: int = 9
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.rounds) < 1:
            raise QuantLinearError(f"bench: rounds must be at least 1 (timed batches per implementation), got {self.rounds!r}")


@dataclass
class BenchRow:
    """One timing. Times in microseconds per call; ``None`` where not measured."""

    kernel: str
    kind: str  # "kernel" (a quantlinear kernel) or "peer" (dense matmul, vendor op, ...)
    K: int
    N: int
    M: int
    device_us: float | None  # device time per call (CUDA graphs on GPUs; equal to eager on CPU)
    eager_us: float | None  # wall time per eager call, launch overhead included
    floor_us: float | None = None  # packed weight bytes / measured copy bandwidth
    weight_bytes: int | None = None
    max_rel_err: float | None = None
    note: str = ""

    @property
    def best_us(self) -> float | None:
        return self.device_us if self.device_us is not None else self.eager_us


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """'4096x4096,4096x14336' -> ((4096, 4096), (4096, 14336)) as (K, N)."""
    out = []
    for part in text.split(","):
        k, _, n = part.strip().lower().partition("x")
        out.append((int(k), int(n)))
    return tuple(out)


def add_ratios(rows: list[BenchRow], dense_name: str) -> list[dict[str, Any]]:
    """Rows as dicts with ratios to the dense peer and to the memory floor, per (K, N, M)."""
    dense = {(r.K, r.N, r.M): r.best_us for r in rows if r.kernel == dense_name}
    out = []
    for r in rows:
        d = asdict(r)
        t = r.best_us
        base = dense.get((r.K, r.N, r.M))
        d["vs_dense"] = (t / base) if (t and base) else None
        d["vs_floor"] = (t / r.floor_us) if (t and r.floor_us) else None
        d["gbps"] = (r.weight_bytes / (t * 1e-6) / 1e9) if (t and r.weight_bytes) else None
        out.append(d)
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'K':>6} {'N':>6} {'M':>5}  {'kernel':<26} {'device us':>10} {'eager us':>9} {'x floor':>8} {'x dense':>8} {'GB/s':>7}  note"
    lines = [head, "-" * len(head)]
    fmt = lambda v, p=1: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"
    last = None
    for d in sorted(rows, key=lambda d: (d["K"], d["N"], d["M"], d["best_us"] if d.get("best_us") else 1e30)):
        key = (d["K"], d["N"], d["M"])
        if last is not None and key != last:
            lines.append("")
        last = key
        lines.append(
            f"{d['K']:>6} {d['N']:>6} {d['M']:>5}  {d['kernel']:<26} {fmt(d['device_us']):>10} {fmt(d['eager_us']):>9} "
            f"{fmt(d['vs_floor'], 2):>8} {fmt(d['vs_dense'], 2):>8} {fmt(d['gbps'], 0):>7}  {d.get('note', '')}"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
    try:
        import quantlinear

        info["quantlinear"] = quantlinear.__version__
    except Exception:
        pass
    return info


def write_json(path: str | Path, rows: list[dict[str, Any]], options: BenchOptions, meta: dict[str, Any]) -> None:
    opts = asdict(options)
    opts["dtype"] = str(options.dtype).replace("torch.", "")
    Path(path).write_text(json.dumps({"options": opts, "environment": {**environment(), **meta}, "rows": rows}, indent=2, default=str))


def plot(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Time per call against M, one panel per shape, one line per kernel, with the memory floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(d["K"], d["N"]) for d in rows})
    cols = min(3, len(shapes))
    nrows = math.ceil(len(shapes) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4.2 * nrows), squeeze=False)
    for ax, (K, N) in zip(axes.flat, shapes):
        sub = [d for d in rows if (d["K"], d["N"]) == (K, N) and d.get("best_us")]
        for kernel in sorted({d["kernel"] for d in sub}):
            pts = sorted((d["M"], d["best_us"]) for d in sub if d["kernel"] == kernel)
            style = "--" if any(d["kind"] == "peer" for d in sub if d["kernel"] == kernel) else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=kernel)
        floor = sorted({(d["M"], d["floor_us"]) for d in sub if d.get("floor_us")})
        if floor:
            ax.plot([p[0] for p in floor], [p[1] for p in floor], ":", color="black", label="HBM floor (packed)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"K={K} N={N}")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("us per call")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(shapes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def random_int_weights(K: int, N: int, scheme, *, seed: int = 0):
    """Random canonical int weights of a scheme (for benchmarks and kernel tests)."""
    from .formats import IntWeights

    g = torch.Generator().manual_seed(seed)
    G = scheme.num_groups(K)
    q = torch.randint(0, 2**scheme.bits, (N, K), generator=g, dtype=torch.int32).to(torch.uint8)
    if scheme.sym:
        z = torch.full((N, G), 2 ** (scheme.bits - 1), dtype=torch.int16)
    else:
        # zero 0 is avoided: GPTQ-v1 checkpoints store z - 1 and cannot represent it
        z = torch.randint(1, 2**scheme.bits, (N, G), generator=g, dtype=torch.int32).to(torch.int16)
    s = (torch.rand(N, G, generator=g) * 0.02 + 0.001).to(torch.float16)
    return IntWeights(q, z, s, None)


def float_format_for(scheme) -> str | None:
    """The canonical float layout that holds ``scheme`` (``mxfp4``, ``nvfp4``, ``fp8``...), or None."""
    from .formats import FLOAT_FORMATS

    for name in sorted(FLOAT_FORMATS):
        fmt = FLOAT_FORMATS[name]
        if scheme.data_type in fmt.data_types and getattr(fmt, "layout_bits", None) == scheme.bits:
            return name
    return None


def random_float_weights(scheme, K: int, N: int, seed: int = 0):
    """Random canonical :class:`FloatWeights` of a float / microscaling scheme (benchmarks, kernel tests).

    Valid everywhere, cheap at benchmark sizes (no quantizer runs): uniform 4-bit codes; FP8
    codes from a normal distribution (no NaN bytes); E8M0 scales ``2**-9 .. 2**-4``; NVFP4 E4M3
    block scales 0.5 .. 4 with a global scale of ``448 * 6 / 2``; FP8 per-row (FP8_STATIC) or
    per-tensor (FPW8A16) bf16 scales.  Activation parameters (NVFP4 ``input_global_scale``, FP8
    ``input_scale``) are set when the scheme quantizes activations.  Stored scales are kept in
    their checkpoint encoding (``raw_scales``), so a format packs them as they are.
    """
    from . import fpcodes, fpquant
    from .formats import FloatWeights
    from .scheme import get_scheme

    scheme = get_scheme(scheme)
    fmt = float_format_for(scheme)
    if fmt is None:
        raise ValueError(f"scheme {scheme} has no float layout (data_type {scheme.data_type}, bits {scheme.bits})")
    g = torch.Generator().manual_seed(seed)
    acts = not scheme.weight_only
    if fmt == "fp8":
        codes = (torch.randn(N, K, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
        rows = 1 if scheme.group_size == 0 else N
        raw = ((torch.rand(rows, generator=g) + 0.5) * 2.0**-8).to(torch.bfloat16)
        isc = fpquant.fp8_scale(torch.tensor(4.0)).reshape(1).to(torch.bfloat16) if acts else None
        return FloatWeights(codes, "e4m3", raw.float().reshape(-1, 1).expand(N, 1).contiguous(), K, "float", raw, input_scale=isc)
    if fmt == "nvfp4":
        codes = torch.randint(0, 16, (N, K), generator=g, dtype=torch.int32).to(torch.uint8)
        raw = (torch.rand(N, K // 16, generator=g) * 3.5 + 0.5).to(torch.float8_e4m3fn)
        gs = torch.tensor([448.0 * 6.0 / 2.0])
        igs = fpquant.nvfp4_global_scale(torch.tensor(4.0)) if acts else None
        return FloatWeights(codes, "e2m1", raw.float(), 16, "e4m3", raw, global_scale=gs, input_global_scale=igs)
    element = fpquant.mx_element(scheme.data_type, scheme.bits)
    if element == "e4m3":
        codes = (torch.randn(N, K, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    else:
        codes = torch.randint(0, 16, (N, K), generator=g, dtype=torch.int32).to(torch.uint8)
    raw = torch.randint(118, 124, (N, K // 32), generator=g, dtype=torch.int32).to(torch.uint8)
    return FloatWeights(codes, element, fpcodes.decode_e8m0(raw), 32, "e8m0", raw)


def iter_cases(options: BenchOptions) -> Iterable[tuple[int, int, int]]:
    for K, N in options.shapes:
        for M in options.ms:
            yield K, N, M
