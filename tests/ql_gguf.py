"""GGUF test helpers that share no code with quantlinear's GGUF reader.

* tiny Transformers models (Llama, Qwen2, Qwen3) with rows of whole K-quant blocks (256);
* :func:`write_gguf`: a ``.gguf`` file of such a model written with llama.cpp's own
  ``gguf.GGUFWriter``, names from llama.cpp's ``TensorNameMap``, Q/K rows permuted for ``llama``
  with the converter's formula (``LlamaModel.permute``), data from ``gguf.quants.quantize`` where
  gguf-py implements the type and random valid blocks otherwise;
* :func:`reference_state_dict`: what a file means, read the independent way: ``gguf.GGUFReader``,
  ``gguf.quants.dequantize`` (bit-identical to llama.cpp), ``TensorNameMap`` run over the model's
  own parameter names, and the converter's permutation undone in numpy.

The module imports ``gguf`` and ``transformers`` lazily: tests ``importorskip`` them first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

VOCAB = 256
IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(7))


def tiny_config(arch: str, *, tie: bool = False, hidden: int = 256, intermediate: int = 512, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, bias: bool = False):
    import transformers

    common = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.1,
                  tie_word_embeddings=tie)
    if arch == "llama":
        return transformers.LlamaConfig(attention_bias=bias, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(head_dim=hidden // heads, **common)
    raise ValueError(arch)


def tiny_model(arch: str, seed: int = 0, **kw) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **kw), dtype=torch.float32).eval()


def skeleton(config, dtype=torch.float32) -> nn.Module:
    import quantlinear
    from transformers import AutoModelForCausalLM

    with quantlinear.skeleton():
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


# ---- llama.cpp's conventions, from its own sources ----------------------------------------------------
def permute_like_converter(w: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` (conversion/llama.py): HF row order -> llama.cpp's RoPE order."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of :func:`permute_like_converter` (as transformers' ``reverse_permute_weights``)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_arch(arch: str):
    import gguf

    return {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}[arch]


def gguf_names(model: nn.Module, arch: str) -> dict[str, str]:
    """HF parameter name -> GGUF tensor name, by llama.cpp's TensorNameMap (the converter's map)."""
    import gguf

    nmap = gguf.get_tensor_name_map(gguf_arch(arch), model.config.num_hidden_layers)
    out = {}
    for k in model.state_dict():
        g = nmap.get_name(k, try_suffixes=(".weight", ".bias"))
        if g is not None:
            out[k] = g
    return out


def heads_for(gname: str, cfg) -> int | None:
    if ".attn_q." in gname:
        return cfg.num_attention_heads
    if ".attn_k." in gname:
        return cfg.num_key_value_heads
    return None


# ---- writing -------------------------------------------------------------------------------------------
def random_blocks(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    import gguf

    from quantlinear.testing_gguf import random_gguf_weights  # finite scales; the bytes are what matters

    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0] <= cols
    return random_gguf_weights(qtype, rows, cols, seed).data.numpy()


def write_gguf(path: Path, model: nn.Module, arch: str, type_of: Callable[[str, tuple[int, ...]], str], *,
               drop: tuple[str, ...] = (), extra: dict[str, tuple[str, np.ndarray]] | None = None) -> Path:
    """Write ``model`` as llama.cpp's converter would (names, permutation), each tensor in ``type_of(name, shape)``."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf_arch(arch)])
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    sd = model.state_dict()
    for i, (hf, g) in enumerate(sorted(gguf_names(model, arch).items(), key=lambda kv: kv[1])):
        if g in drop:
            continue
        x = sd[hf].detach().float().numpy()
        h = heads_for(g, cfg)
        if arch == "llama" and h is not None:
            x = permute_like_converter(x, h)
        qtype = type_of(g, x.shape)
        qt = gguf.GGMLQuantizationType[qtype]
        if qtype == "F32":
            w.add_tensor(g, x.astype(np.float32))
        elif qtype == "F16":
            w.add_tensor(g, x.astype(np.float16))
        else:
            try:
                data = gguf.quants.quantize(x, qt)
            except NotImplementedError:
                data = random_blocks(qtype, x.shape[0], x.shape[1], seed=i)
            w.add_tensor(g, data, raw_dtype=qt)
    for g, (qtype, data) in (extra or {}).items():
        w.add_tensor(g, data, raw_dtype=None if qtype == "F32" else gguf.GGMLQuantizationType[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


# ---- reading, the independent way ----------------------------------------------------------------------
def file_types(path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def reference_state_dict(path: Path, model: nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """HF name -> fp32 tensor of ``path`` as llama.cpp means it (tied lm_head from token_embd)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    cfg = model.config
    data = {}
    for t in reader.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        x = x.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
        h = heads_for(t.name, cfg)
        if arch == "llama" and h is not None:
            x = unpermute(x, h)
        data[t.name] = torch.from_numpy(np.ascontiguousarray(x))
    out = {hf: data[g] for hf, g in gguf_names(model, arch).items() if g in data}
    if "output.weight" not in data and "lm_head.weight" in model.state_dict():
        out["lm_head.weight"] = data["token_embd.weight"]
    return out


def reference_model(path: Path, arch: str, config) -> nn.Module:
    """A plain fp32 Transformers model holding the file's dequantized weights."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    sd = reference_state_dict(path, m, arch)
    res = m.load_state_dict(sd, strict=False)
    assert not res.unexpected_keys and set(res.missing_keys) <= {"lm_head.weight"}, res
    return m


def applied_to_eye(layer: nn.Module, K: int) -> torch.Tensor:
    """``layer(I)``: ``W.T + b`` exactly in fp32 (each output sums one exact product and zeros,
    then adds the bias once), so it can be compared with ``torch.equal`` to the reference."""
    with torch.no_grad():
        return layer(torch.eye(K))


def expected_on_eye(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return weight.t() + bias if bias is not None else weight.t()


def logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
