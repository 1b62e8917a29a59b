"""``quantlinear`` command line: doctor, inspect, explain, bench.

Every command prints a human-readable report by default and machine-readable JSON with
``--json``.  ``python -m quantlinear`` is the same program.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any, Sequence

import torch

from . import __version__
from .errors import QuantLinearError

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}


def _dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown dtype {name!r}; use one of {sorted(set(_DTYPES))}") from None


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# ---- doctor ---------------------------------------------------------------------------------------
def _devices() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"device": "cpu", "family": "cpu", "name": "CPU", "threads": torch.get_num_threads()}]
    from .devices import device_family

    try:
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                d = {"device": f"cuda:{i}", "family": device_family(f"cuda:{i}"), "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)}
                if getattr(torch.version, "hip", None):
                    d["arch"] = getattr(p, "gcnArchName", "?").split(":")[0]
                else:
                    d["capability"] = f"{p.major}.{p.minor}"
                out.append(d)
    except Exception as e:  # a broken driver must not break doctor
        out.append({"device": "cuda", "error": repr(e)})
    for typ in ("xpu", "npu"):
        mod = getattr(torch, typ, None)
        try:
            if mod is not None and mod.is_available():
                for i in range(mod.device_count()):
                    out.append({"device": f"{typ}:{i}", "family": typ, "name": mod.get_device_name(i)})
        except Exception as e:
            out.append({"device": typ, "error": repr(e)})
    return out


def _kernel_info(k) -> dict[str, Any]:
    norm = lambda xs: sorted(str(x).replace("torch.", "") for x in xs)
    return {
        "name": k.name,
        "priority": k.priority,
        "device_families": norm(k.device_families),
        "data_types": norm(k.data_types),
        "bits": sorted(k.bits),
        "group_sizes": sorted(k.group_sizes) if k.group_sizes is not None else "any",
        "sym": sorted(k.sym),
        "formats": norm(k.formats),
        "dtypes": norm(k.dtypes),
        "doc": (k.__doc__ or "").strip().splitlines()[0] if k.__doc__ else "",
        "verified": getattr(k, "verified", None),
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    from .registry import registry

    reg = registry()
    reg.load_all()
    versions = {"quantlinear": __version__, "torch": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None), "xpu": getattr(torch.version, "xpu", None)}
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception:
        versions["triton"] = None
    plugins = [p.to_dict() for p in reg.plugins()]
    from .select import effective_priority, priority_overrides

    overrides = priority_overrides()
    kernels = sorted(reg.kernels(), key=lambda k: (-effective_priority(k, overrides), k.name))
    infos = [dict(_kernel_info(k), priority=effective_priority(k, overrides), declared_priority=k.priority) for k in kernels]
    report = {"versions": versions, "devices": _devices(), "plugins": plugins, "kernels": infos}
    if args.json:
        _print_json(report)
        return 0
    print(f"quantlinear {__version__}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print("\ndevices:")
    for d in report["devices"]:
        extra = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("device", "name"))
        print(f"  {d['device']:<8} {d.get('name', '')}  ({extra})")
    print("\nplugins:")
    if not plugins:
        print("  none installed: pip install 'quantlinear[cpu]' (or [cuda], [rocm], [xpu], [npu])")
    for p in plugins:
        ver = f" {p['distribution']} {p['version']}" if p["distribution"] else ""
        print(f"  {p['name']:<10} {p['state']:<9}{ver}  ({p['source']})")
        if p["error"]:
            print(f"             error: {p['error']}")
    print("\nkernels, in the order auto ranks them (priority, then name):")
    for k in report["kernels"]:
        gs = k["group_sizes"] if k["group_sizes"] == "any" else ",".join(map(str, k["group_sizes"]))
        print(
            f"  {k['name']:<24} prio {k['priority']:>3}{'*' if k['priority'] != k['declared_priority'] else ' '} on {','.join(k['device_families'])}: "
            f"{'/'.join(k['data_types'])} bits {','.join(map(str, k['bits']))}, groups {gs}, "
            f"{'sym+asym' if len(k['sym']) == 2 else ('sym' if k['sym'] == [True] else 'asym')}, formats {','.join(k['formats'])}, {','.join(k['dtypes'])}"
        )
        if k["verified"]:
            print(f"  {'':<24} verified: {k['verified']}")
    if any(k["priority"] != k["declared_priority"] for k in infos):
        print("  (* priority overridden by QUANTLINEAR_PRIORITY)")
    return 0


# ---- inspect / explain ------------------------------------------------------------------------------------
def _inspect(path: str, device: str | None, dtype: torch.dtype | None, backend: str) -> dict[str, Any]:
    from .devices import default_device
    from .formats import get_format
    from .formats.gptq import g_idx_is_trivial
    from .loader import layer_format, open_checkpoint, quantized_prefixes
    from .select import select_kernel
    from .spec import LayerSpec

    ckpt, qcfg = open_checkpoint(path)  # safetensors + quantization config, or a .gguf file
    model_cfg = _model_config(ckpt.directory)
    dev = torch.device(device) if device else default_device()
    if dtype is None:
        dtype = _DTYPES.get(str(model_cfg.get("torch_dtype") or model_cfg.get("dtype") or "float16"), torch.float16)
    layers = []
    prefixes = quantized_prefixes(ckpt)
    for name in prefixes:
        scheme = qcfg.layer_scheme(name)
        entry: dict[str, Any] = {"layer": name}
        fmt_name = layer_format(qcfg, name, scheme) if scheme is not None else None
        if scheme is None or fmt_name is None:
            entry["error"] = "packed tensors, but the config gives no scheme/layout quantlinear reads for this layer"
            layers.append(entry)
            continue
        fmt = get_format(fmt_name)
        shapes = {t: ckpt.shape(f"{name}.{t}") for t in fmt.tensor_names_for_inspect if f"{name}.{t}" in ckpt}
        K, N = fmt.infer_features(shapes, scheme.bits)
        act_order = f"{name}.g_idx" in ckpt and not g_idx_is_trivial(ckpt.get(f"{name}.g_idx"), K, scheme.group_size_for(K))
        spec = LayerSpec(scheme, fmt_name, K, N, f"{name}.bias" in ckpt, dtype, dev, act_order, name)
        sel = select_kernel(spec, backend, raise_on_none=False)
        entry.update({"scheme": scheme.id, "in_features": K, "out_features": N, "bias": spec.bias, "act_order": act_order, "kernel": sel.kernel.name if sel.kernel else None, "selection": sel.to_dict()})
        layers.append(entry)
    qnames = set(prefixes)
    packed = sum(_nbytes(ckpt, k) for k in ckpt.keys() if k.rsplit(".", 1)[0] in qnames and not k.endswith(".bias"))
    return {
        "path": str(path),
        "files": [str(f.name) for f in ckpt.files],
        "bytes": ckpt.total_bytes,
        "config": qcfg.to_dict(),
        "device": str(dev),
        "dtype": str(dtype).replace("torch.", ""),
        "backend": backend,
        "quantized_layers": len(layers),
        "packed_weight_bytes": packed,
        "layers": layers,
        "quantized_embeddings": dict(getattr(qcfg, "embedding_types", {})),
    }


def _model_config(directory) -> dict[str, Any]:
    """The folder's config.json (for its dtype), or {} when there is none (a lone .gguf file)."""
    from pathlib import Path

    from .config import _read_json

    f = Path(directory) / "config.json"
    return _read_json(f) if f.is_file() else {}


def _nbytes(ckpt, name: str) -> int:
    return ckpt.nbytes(name)


def cmd_inspect(args: argparse.Namespace) -> int:
    info = _inspect(args.path, args.device, args.dtype, args.backend)
    if args.json:
        _print_json(info)
        return 0
    c = info["config"]
    print(f"{info['path']}: {len(info['files'])} file(s), {info['bytes'] / 2**20:.1f} MiB")
    print(f"  quant_method={c['quant_method']} packing_format={c['packing_format']} -> format {c['format']}")
    if c.get("gguf_types"):  # a GGUF file: one llama.cpp type per tensor
        types = ", ".join(f"{k} x{v}" for k, v in sorted(c["gguf_types"].items()))
        emb = ", ".join(f"{k} {v}" for k, v in info["quantized_embeddings"].items())
        print(f"  GGUF architecture {c['architecture']}: tensor types {types}" + (f"; quantized embedding {emb}" if emb else ""))
    else:
        print(f"  scheme {c['scheme_id']}" + (f", {len(c['overrides'])} per-layer override(s)" if c["overrides"] else ""))
    if c["block_names"]:
        print(f"  blocks: {', '.join(c['block_names'])}")
    print(f"  {info['quantized_layers']} quantized layers; kernels on {info['device']} ({info['dtype']}, backend={info['backend']}):")
    schemes = Counter(layer.get("scheme") for layer in info["layers"])
    kernels = Counter(layer.get("kernel") for layer in info["layers"])
    print("    schemes: " + ", ".join(f"{k} x{v}" for k, v in schemes.items()))
    print("    kernels: " + ", ".join(f"{k or 'NONE'} x{v}" for k, v in kernels.items()))
    if args.layers:
        for layer in info["layers"]:
            print(f"    {layer['layer']:<48} {layer.get('scheme', '?'):<20} K={layer.get('in_features')} N={layer.get('out_features')} -> {layer.get('kernel') or 'NONE'}")
    shown = set()
    for layer in info["layers"]:
        sel = layer.get("selection")
        if not sel:
            continue
        sig = (layer["scheme"], layer["in_features"], layer["out_features"], layer["bias"])
        if (args.explain or not layer["kernel"]) and sig not in shown:
            shown.add(sig)
            print(f"\n  why, for {layer['layer']} (and layers like it):")
            for cnd in sel["candidates"]:
                mark = "->" if cnd["chosen"] else ("ok" if cnd["ok"] else "no")
                print(f"    {mark} {cnd['kernel']:<26} prio {cnd['priority']:>3}  {cnd['reason'] or ('chosen' if cnd['chosen'] else 'lower priority')}")
            for n in sel["notes"]:
                print(f"    note: {n}")
    return 0 if all(layer.get("kernel") for layer in info["layers"]) else 1


def cmd_explain(args: argparse.Namespace) -> int:
    from .scheme import get_scheme
    from .select import explain
    from .spec import LayerSpec

    spec = LayerSpec(get_scheme(args.scheme), args.format, args.in_features, args.out_features, args.bias, args.dtype, args.device or "cpu", False, "<layer>")
    print(explain(spec, args.backend, as_json=args.json))
    return 0


# ---- bench ----------------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from . import benchutil
    from .devices import default_device, device_family
    from .registry import registry

    dev = torch.device(args.device) if args.device else default_device()
    fam = device_family(dev)
    reg = registry()
    reg.load_for_family(fam)
    runner = reg.benchmark_runner(fam)
    if runner is None:
        raise QuantLinearError(f"no installed plugin provides a benchmark for device family {fam!r} (pip install 'quantlinear[{fam}]')")
    opts = benchutil.BenchOptions(device=str(dev), scheme=args.scheme, dtype=args.dtype, iters=args.iters, warmup=args.warmup,
                                  rounds=args.rounds, kernels=tuple(args.kernels or ()))
    if args.shapes:
        opts.shapes = benchutil.parse_shapes(args.shapes)
    if args.m:
        opts.ms = tuple(int(m) for m in args.m.split(","))
    rows = runner(opts)
    peers = [r.kernel for r in rows if r.kind == "peer"]
    # the dense baseline: cuBLAS on GPUs, dense F.linear on CPUs, else the first peer
    dense = next((p for p in peers if p == "peer.cublas"), None) or next((p for p in peers if p.startswith("peer.dense")), None) or (peers[0] if peers else "")
    dicts = benchutil.add_ratios(rows, dense)
    for d, r in zip(dicts, rows):
        d["best_us"] = r.best_us
    if args.out:
        benchutil.write_json(args.out, dicts, opts, {"device": str(dev)})
    if args.plot:
        benchutil.plot(dicts, args.plot, title=f"{args.scheme} {str(args.dtype).replace('torch.', '')} on {dev}")
    if args.json:
        _print_json(dicts)
    else:
        print(benchutil.format_table(dicts))
        print(f"\n'x dense' is relative to {dense}; 'x floor' to packed bytes / measured copy bandwidth.")
    return 0


# ---- entry point ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantlinear", description="Run weight-quantized models on any accelerator.")
    p.add_argument("--version", action="version", version=f"quantlinear {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("doctor", help="versions, devices, plugins and their status, kernels and their ranking")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_doctor)

    i = sub.add_parser("inspect", help="a checkpoint's scheme(s), layers, and which kernel each layer would get here and why")
    i.add_argument("path")
    i.add_argument("--device", help="target device (default: the current accelerator, else cpu)")
    i.add_argument("--dtype", type=_dtype, default=None, help="activation dtype (default: the checkpoint's torch_dtype)")
    i.add_argument("--backend", default="auto", help="'auto', a plugin name or a kernel name")
    i.add_argument("--layers", action="store_true", help="list every layer")
    i.add_argument("--explain", action="store_true", help="show every candidate's verdict for each distinct layer shape")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    e = sub.add_parser("explain", help="every kernel's verdict for one layer description")
    e.add_argument("--scheme", default="W4A16")
    e.add_argument("--format", default="gptq", help="canonical packing format: gptq, gptq_v2, awq")
    e.add_argument("--in-features", type=int, default=4096)
    e.add_argument("--out-features", type=int, default=4096)
    e.add_argument("--bias", action="store_true")
    e.add_argument("--dtype", type=_dtype, default=torch.float16)
    e.add_argument("--device")
    e.add_argument("--backend", default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_explain)

    from .benchutil import BenchOptions  # (its defaults)

    b = sub.add_parser("bench", help="time every installed kernel and its peers on this device")
    b.add_argument("--device")
    b.add_argument("--scheme", default="W4A16")
    b.add_argument("--dtype", type=_dtype, default=torch.float16)
    b.add_argument("--shapes", help="comma-separated KxN list, e.g. 4096x4096,4096x14336")
    b.add_argument("--m", help="comma-separated M values, e.g. 1,16,256")
    b.add_argument("--kernels", nargs="*", help="restrict to these kernels/peers")
    b.add_argument("--iters", type=int, default=50)
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--rounds", type=int, default=BenchOptions.rounds,
                   help="timed batches per implementation where batches are taken in turns (CUDA); the median is reported")
    b.add_argument("--out", help="write results as JSON to this file")
    b.add_argument("--plot", help="draw time against M per kernel (PNG)")
    b.add_argument("--json", action="store_true", help="print JSON instead of the table")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except QuantLinearError as e:
        print(f"quantlinear: error: {e}", file=sys.stderr)
        return 2
