"""Machinery of the integrations suite: tiny models, real AutoRound exports, independent references.

Nothing here imports transformers, diffusers or auto_round at module level; the test modules
``importorskip`` what they need.

The reference of every test is built without quantlinear: the checkpoint's raw tensors are
decoded by :func:`decode_layer` (numpy, from AutoRound's pack code: little-endian bit fields
of int32 words; GPTQ codes along K with zeros along N stored ``z - 1`` for
``auto_round:auto_gptq`` and raw for ``auto_round``; AWQ codes and zeros along N with the
0-2-4-6-1-3-5-7 interleave), dequantized in float64, and loaded into a float model built
directly by Transformers / Diffusers.  quantlinear's one-call load must match it.
"""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

#: The brief's tolerance: max|diff| / max|ref|.
TOL = 2e-2
#: What a correct fp32 load achieves against the float64-decoded reference (observed ~1e-6).
TOL_EXACT = 1e-4

#: Measured figures, printed at the end of the session by conftest.py.
RESULTS: dict[str, dict[str, Any]] = {}

VOCAB = 256
INPUT_IDS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1234))


def record(key: str, **metrics: Any) -> None:
    RESULTS.setdefault(key, {}).update(metrics)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def timed(key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    out = fn()
    record(key, seconds=round(time.monotonic() - t0, 2))
    return out


# ---- raw checkpoint access and the independent decoder ------------------------------------------
def read_tensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def read_qcfg(d: Path) -> dict[str, Any]:
    d = Path(d)
    cfg = json.loads((d / "config.json").read_text())
    if "quantization_config" in cfg:
        return cfg["quantization_config"]
    return json.loads((d / "quantization_config.json").read_text())


def layout_of(qcfg: dict[str, Any]) -> tuple[str, int]:
    method = str(qcfg.get("quant_method")).lower()
    if method == "gptq":
        return "gptq", 1
    if method == "awq":
        return "awq", 0
    packing = qcfg.get("packing_format", "auto_round:auto_gptq")
    return {"auto_round:auto_gptq": ("gptq", 1), "auto_round": ("gptq", 0), "auto_round:gptqmodel": ("gptq", 0),
            "auto_round:auto_awq": ("awq", 0)}[packing]


def _fields(words: torch.Tensor, bits: int, axis: int) -> np.ndarray:
    """Unsigned ``bits``-bit fields of int32 words along ``axis``, field i at bit offset i*bits."""
    w = words.numpy().astype(np.int64) & 0xFFFFFFFF
    per = 32 // bits
    f = np.stack([(w >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], axis=axis + 1)
    shape = list(w.shape)
    shape[axis] *= per
    return f.reshape(shape)


_AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def _awq_unshuffle(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for slot, col in enumerate(_AWQ_ORDER):
        out[..., col::8] = x[..., slot::8]
    return out


def decode_layer(tensors: dict[str, torch.Tensor], name: str, layout: str, zero_offset: int, bits: int,
                 group_size: int, K: int, N: int) -> torch.Tensor:
    """The float64 ``[N, K]`` weight of one packed layer (K may be stored padded to whole groups)."""
    qw, qz, sc = tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"], tensors[f"{name}.scales"]
    if layout == "gptq":
        codes = _fields(qw, bits, 0)[:K].T  # [N, K]
        zeros = _fields(qz, bits, 1)[:, :N]  # [G, N]
    else:
        codes = _awq_unshuffle(_fields(qw, bits, 1))[:K, :N].T
        zeros = _awq_unshuffle(_fields(qz, bits, 1))[:, :N]
    zeros = zeros + zero_offset
    g = K if group_size in (-1, 0) else group_size
    gi = np.arange(K) // g
    assert gi.max() < sc.shape[0], (name, K, g, sc.shape)
    s = sc.double().numpy()  # [G, N]
    w = (codes - zeros.T[:, gi]).astype(np.float64) * s.T[:, gi]
    return torch.from_numpy(w)


def layer_group_size(qcfg: dict[str, Any], name: str) -> int:
    extra = qcfg.get("extra_config") or {}
    if name in extra and "group_size" in extra[name]:
        return int(extra[name]["group_size"])
    return int(qcfg["group_size"])


def layer_bits(qcfg: dict[str, Any], name: str) -> int:
    extra = qcfg.get("extra_config") or {}
    if name in extra and "bits" in extra[name]:
        return int(extra[name]["bits"])
    for k, v in extra.items():
        if k != name and "bits" in v and re.search(k, name):
            return int(v["bits"])
    return int(qcfg["bits"])


def dequantized_state_dict(d: Path, dims: dict[str, tuple[int, int]], rename: Callable[[str], str] = lambda k: k) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in float32, packed layers replaced by their decoded weight.

    ``dims``: module name (model naming) -> (in_features, out_features); ``rename`` maps a
    checkpoint key to the model's naming.
    """
    tensors = read_tensors(d)
    qcfg = read_qcfg(d)
    layout, off = layout_of(qcfg)
    sd: dict[str, torch.Tensor] = {}
    packed = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    for name in packed:
        K, N = dims[rename(name + ".qweight")[: -len(".qweight")]]
        w = decode_layer(tensors, name, layout, off, layer_bits(qcfg, name), layer_group_size(qcfg, name), K, N)
        sd[rename(f"{name}.weight")] = w.float()
    for k, t in tensors.items():
        if k.rsplit(".", 1)[0] in packed and k.rsplit(".", 1)[1] in ("qweight", "qzeros", "scales", "g_idx"):
            continue
        sd[rename(k)] = t.float() if t.dtype.is_floating_point else t
    return sd


def linear_dims(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def load_reference(model: nn.Module, sd: dict[str, torch.Tensor], allow_missing: tuple[str, ...] = ()) -> nn.Module:
    res = model.load_state_dict(sd, strict=False)
    assert not res.unexpected_keys, res.unexpected_keys
    assert set(res.missing_keys) <= set(allow_missing), res.missing_keys
    return model.float().eval()


# ---- tiny Transformers models --------------------------------------------------------------------
def llm_config(arch: str):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.1)
    if arch == "llama":
        return LlamaConfig(intermediate_size=256, tie_word_embeddings=False, **common)
    if arch == "qwen2":
        return Qwen2Config(intermediate_size=192, tie_word_embeddings=True, **common)
    raise ValueError(arch)


def build_llm(arch: str, seed: int = 0) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(llm_config(arch), dtype=torch.float32).eval()


@functools.lru_cache(maxsize=None)
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab["[UNK]"] = 0
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[UNK]", eos_token="[UNK]", bos_token="[UNK]")


def autoround_llm_export(arch: str, out: Path, **kw: Any) -> Path:
    """The real AutoRound, model-object flow (RTN), as /work/shared/notes/autoround-exports.md."""
    from auto_round import AutoRound

    model = build_llm(arch)
    ar = AutoRound(model, tokenizer(), iters=0, disable_opt_rtn=True, device_map="cpu", **kw)
    ar.quantize_and_save(str(out), format="auto_round")
    found = sorted(p.parent for p in Path(out).rglob("config.json"))
    assert len(found) == 1, found
    return found[0]


def llm_logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).logits.float()


def thinker_config():
    from transformers import Qwen2_5OmniThinkerConfig

    return Qwen2_5OmniThinkerConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128, initializer_range=0.1,
                         rope_scaling={"type": "default", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[0], patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        audio_config=dict(encoder_layers=1, d_model=64, encoder_attention_heads=2, encoder_ffn_dim=128, output_dim=64,
                          num_mel_bins=16, max_source_positions=100, n_window=10),
    )


def build_thinker(seed: int = 0) -> nn.Module:
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(seed)
    return Qwen2_5OmniThinkerForConditionalGeneration(thinker_config()).float().eval()


def thinker_hub_name(name: str) -> str:
    """Transformers-5 thinker module/tensor name -> the Hub checkpoint's (the full omni model's)."""
    for new, old in (("model.language_model.", "thinker.model."), ("model.visual.", "thinker.visual."),
                     ("model.audio_tower.", "thinker.audio_tower."), ("lm_head.", "thinker.lm_head.")):
        if name.startswith(new):
            return old + name[len(new):]
    raise AssertionError(f"no Hub name for {name}")


# ---- tiny Diffusers models -----------------------------------------------------------------------
FLUX_CONFIG = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32,
                   num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32, axes_dims_rope=(8, 12, 12))
ZIMAGE_CONFIG = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=96, n_layers=1, n_refiner_layers=1,
                     n_heads=3, n_kv_heads=3, cap_feat_dim=32, axes_dims=[8, 12, 12], axes_lens=[64, 32, 32])


def build_flux(seed: int = 0) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    m = FluxTransformer2DModel(**FLUX_CONFIG)
    with torch.no_grad():  # zero-initialized output projections would hide the quantized blocks
        for p in m.parameters():
            if p.dim() >= 1 and float(p.abs().max()) == 0.0:
                p.normal_(0, 0.05)
    return m.eval()


def build_zimage(seed: int = 0) -> nn.Module:
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    m = ZImageTransformer2DModel(**ZIMAGE_CONFIG)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 1 and float(p.abs().max()) == 0.0:
                p.normal_(0, 0.05)
    return m.eval()


def flux_inputs(dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    seq, txt = 16, 8
    return dict(
        hidden_states=torch.randn(1, seq, 16, generator=g).to(dtype),
        encoder_hidden_states=torch.randn(1, txt, 64, generator=g).to(dtype),
        pooled_projections=torch.randn(1, 32, generator=g).to(dtype),
        timestep=torch.tensor([0.5]).to(dtype),
        img_ids=torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(-1, 3),
        txt_ids=torch.zeros(txt, 3),
    )


def flux_out(model: nn.Module, dtype=torch.float32) -> torch.Tensor:
    with torch.no_grad():
        return model(**flux_inputs(dtype), return_dict=False)[0].float()


def zimage_out(model: nn.Module, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = [torch.randn(4, 1, 8, 8, generator=g).to(dtype)]
    cap = [torch.randn(8, 32, generator=g).to(dtype)]
    with torch.no_grad():
        out = model(x, torch.tensor([0.5]).to(dtype), cap, return_dict=False)[0]
    return torch.stack([o.float() for o in out])


def autoround_pipeline_export(kind: str, out: Path, **kw: Any) -> Path:
    """AutoRound's pipeline route (zero-shot RTN) on a pipeline of a scheduler and the transformer."""
    from auto_round import AutoRound
    from diffusers import FlowMatchEulerDiscreteScheduler

    if kind == "flux":
        from diffusers import FluxPipeline

        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                            text_encoder_2=None, tokenizer_2=None, transformer=build_flux())
    elif kind == "zimage":
        from diffusers import ZImagePipeline

        pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                              transformer=build_zimage())
    else:
        raise ValueError(kind)
    ar = AutoRound(pipe, iters=0, disable_opt_rtn=True, device_map="cpu", **kw)
    ar.quantize_and_save(str(out), format="auto_round")
    assert (Path(out) / "model_index.json").is_file()
    return Path(out)


def autoround_model_free_export(src_model: nn.Module, src: Path, out: Path, **kw: Any) -> Path:
    """AutoRound's model-free route on a saved Diffusers transformer folder (bf16 source, as the notes advise)."""
    from auto_round import AutoRound

    src_model.to(torch.bfloat16).save_pretrained(str(src))
    src_model.float()
    ar = AutoRound(str(src), iters=0, disable_opt_rtn=True, device_map="cpu", enable_torch_compile=False, **kw)
    ar.quantize_and_save(str(out), format="auto_round")
    return Path(out)
