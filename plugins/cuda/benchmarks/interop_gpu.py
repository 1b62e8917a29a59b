#!/usr/bin/env python3
"""Real AutoRound checkpoints on the GPU: every export of the interop suite, loaded with ``backend="auto"``.

Two steps, because AutoRound quantizes on the CPU (where the interop suite runs it) and the GPU machine has no
``auto_round``:

    python plugins/cuda/benchmarks/interop_gpu.py pack DIR    # CPU, needs auto-round: exports + exact fp32 logits
    python plugins/cuda/benchmarks/interop_gpu.py check DIR --out FILE.json    # GPU: load, run, compare

``pack`` makes each variant of ``tests/interop/helpers.VARIANTS`` (W2 / W3 / W4 / W8, sym and asym, AutoRound /
GPTQ / AWQ packings, ``g_idx``, a sharded Qwen2 with biases and tied embeddings, a partial last group, per-layer
overrides) with the real AutoRound (RTN) into ``DIR/<variant>``, and its logits from the interop suite's exact
numpy decoder -- no quantlinear code -- into ``DIR/_refs/<variant>.safetensors``.

``check`` loads each export onto the current CUDA device in fp16 and bf16, and compares the model's logits at 48, 6
and 1 tokens a layer (the prefill, small-batch and decode paths) with the exact fp32 model's, max |a - ref| / max |ref|
over the whole model; it records the kernel ``auto`` took for each layer, and runs three variants under
``torch.compile(fullgraph=True)`` against eager.  Set ``QUANTLINEAR_CUDA_TUNE=0``: the tiny layers are in no
shipped table, and tuning each of them costs minutes of compiles.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "interop"))
import helpers as h  # noqa: E402  (the interop suite's variants, tiny models and exact decoder)

#: the prefill, small-batch and decode paths of a tiny model (tokens = M of every layer)
INPUTS = {"M48": h.INPUT_IDS, "M6": h.INPUT_IDS[:1, :6].contiguous(), "M1": h.INPUT_IDS[:1, :1].contiguous()}
#: variants also run under torch.compile(fullgraph=True): AutoRound's GPTQ packing, AWQ's, 8-bit with g_idx
COMPILED = ("ar_w4g128_sym", "awq_w4g64_asym", "gptq_w8gch_asym")
#: end-to-end tolerances against the exact fp32 model (two layers of fp16 / bf16 activations)
TOL = {"float16": 1e-2, "bfloat16": 3e-2}


def pack(root: Path) -> None:
    from safetensors.torch import save_file

    (root / "_refs").mkdir(parents=True, exist_ok=True)
    for vid, v in h.VARIANTS.items():
        t = time.time()
        tmp = root / "_tmp" / vid
        shutil.rmtree(tmp, ignore_errors=True)
        ex = h.Export(v, h.export_with_autoround(v, tmp))
        dest = root / vid
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(ex.dir, dest)
        save_file({"exact_logits": ex.exact_logits.contiguous(), "input_ids": h.INPUT_IDS.contiguous()},
                  str(root / "_refs" / f"{vid}.safetensors"))
        print(f"{vid:26s} exported in {time.time() - t:.1f} s", flush=True)
    shutil.rmtree(root / "_tmp", ignore_errors=True)


def check(root: Path, out: Path | None, device: str = "cuda") -> int:
    import quantlinear
    from safetensors.torch import load_file

    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        variant, ref_file = h.VARIANTS.get(d.name), root / "_refs" / f"{d.name}.safetensors"
        if variant is None or not ref_file.is_file():
            raise SystemExit(f"{d}: not an export of `pack` (variant {d.name!r} known: {variant is not None}, "
                             f"reference {ref_file} present: {ref_file.is_file()})")
        ref = load_file(str(ref_file))
        if not torch.equal(ref["input_ids"], h.INPUT_IDS):
            raise SystemExit(f"{d.name}: the references were made for other inputs")
        exact_model = h.Export(variant, d).exact_model()
        with torch.no_grad():
            exact = {k: exact_model(ids).logits.float() for k, ids in INPUTS.items()}
        if h.rel_err(exact["M48"], ref["exact_logits"]) > 1e-6:
            raise SystemExit(f"{d.name}: the exact decoder disagrees with the packed references")
        for dt in (torch.float16, torch.bfloat16):
            t = time.time()
            m = quantlinear.load_quantized(h.skeleton_from_export(d), d, backend="auto", device=device, dtype=dt).eval()
            row = dict(variant=d.name, dtype=str(dt).removeprefix("torch."),
                       kernels=sorted({mod.name for mod in m.modules() if isinstance(mod, quantlinear.QuantLinear)}))
            with torch.no_grad():
                eager = {k: m(ids.to(device)).logits.float().cpu() for k, ids in INPUTS.items()}
                row["rel_err"] = {k: h.rel_err(eager[k], exact[k]) for k in INPUTS}
                if d.name in COMPILED:
                    torch._dynamo.reset()
                    cm = torch.compile(m, fullgraph=True)
                    row["compile_vs_eager"] = {k: h.rel_err(cm(ids.to(device)).logits.float().cpu(), eager[k])
                                               for k, ids in INPUTS.items()}
            row["seconds"] = round(time.time() - t, 1)
            rows.append(row)
            print(f"{d.name:26s} {row['dtype']:8s} " + " ".join(f"{k} {v:.1e}" for k, v in row["rel_err"].items())
                  + (" compiled " + " ".join(f"{v:.1e}" for v in row["compile_vs_eager"].values())
                     if "compile_vs_eager" in row else "") + f"  {row['kernels']}", flush=True)
            del m
    bad = [(r["variant"], r["dtype"], k, v) for r in rows for k, v in r["rel_err"].items() if v > TOL[r["dtype"]]]
    for dt in TOL:
        print(f"{dt}: worst {max(v for r in rows if r['dtype'] == dt for v in r['rel_err'].values()):.1e} "
              f"(tolerance {TOL[dt]:.0e})")
    print("over tolerance:", bad or "none")
    if out is not None:
        out.write_text(json.dumps(dict(torch=torch.__version__, device=torch.cuda.get_device_name() if device == "cuda" else device, tolerance=TOL,
                                       rows=rows), indent=1))
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("pack", "check"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--out", type=Path, help="check: write the rows as JSON here")
    ap.add_argument("--device", default="cuda", help="check: where to load the exports (cpu: a smoke test of this script)")
    a = ap.parse_args()
    if a.step == "pack":
        pack(a.dir)
        return 0
    return check(a.dir, a.out, a.device)


if __name__ == "__main__":
    raise SystemExit(main())
