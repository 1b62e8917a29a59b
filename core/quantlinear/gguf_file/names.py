"""llama.cpp tensor names -> Transformers module names, and the converter's Q/K row permutation.

The names are those of llama.cpp's ``gguf.TensorNameMap`` read backwards, for the
architectures AutoRound's GGUF export writes and quantlinear has checked
(``general.architecture``): ``llama`` (Llama, Mistral and other ``LlamaModel`` subclasses of the
converter), ``qwen2`` and ``qwen3``.  A table rather than the live ``TensorNameMap``: an
architecture is only accepted once its permutation rule is known, since a wrong guess loads
without error and gives wrong outputs.

Permutation (``conversion/llama.py`` ``LlamaModel.permute``, ``undo_permute = True``): for
``llama`` the converter stores ``q_proj`` / ``k_proj`` rows (weights and biases) in llama.cpp's
RoPE order, ``W.reshape(n_head, 2, rows // n_head // 2, K).swapaxes(1, 2)``, with ``n_head`` the
KV head count for ``k_proj``.  ``Qwen2Model`` / ``Qwen3Model`` (``conversion/qwen.py``) derive
from ``TextModel`` and do not permute.  Undoing it moves whole rows, so quantized blocks are
reordered exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import CheckpointError


@dataclass(frozen=True)
class Architecture:
    name: str
    permute_qk: bool  #: the converter permuted attn_q / attn_k rows (llama.cpp's RoPE layout)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (Architecture("llama", True), Architecture("qwen2", False), Architecture("qwen3", False))
}

_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_GLOBAL = re.compile(r"^([a-z_]+)\.(weight|bias)$")

#: tensors the converter derives from the config and Transformers recomputes (llama 3 RoPE
#: scaling factors); they are not loaded
DERIVED = frozenset({"rope_freqs.weight"})
#: the GGUF module names whose rows the llama converter permutes
PERMUTED = {"attn_q": "head_count", "attn_k": "head_count_kv"}


def architecture(name: str, where: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise CheckpointError(
            f"{where}: GGUF architecture {name!r} is not supported (supported: {', '.join(ARCHITECTURES)}); "
            "its tensor names and row permutation are not known to quantlinear"
        ) from None


def hf_name(gguf_name: str) -> str | None:
    """The Transformers parameter name of a GGUF tensor, or None when the name is not known."""
    m = _BLK.match(gguf_name)
    if m:
        mod = _BLOCK.get(m.group(2))
        return f"model.layers.{m.group(1)}.{mod}.{m.group(3)}" if mod else None
    m = _GLOBAL.match(gguf_name)
    if m and m.group(1) in _TOP:
        return f"{_TOP[m.group(1)]}.{m.group(2)}"
    return None


def permuted_by(gguf_name: str) -> str | None:
    """``head_count`` / ``head_count_kv`` when the llama converter permutes this tensor's rows."""
    m = _BLK.match(gguf_name)
    return PERMUTED.get(m.group(2)) if m else None


def unpermute_index(rows: int, n_head: int, where: str) -> torch.Tensor:
    """Row index ``perm`` with ``W_hf = W_file[perm]``: the inverse of ``LlamaModel.permute``.

    The file holds row ``h*d + 2j + i`` = HF row ``h*d + i*(d/2) + j`` (``d = rows / n_head``).
    """
    if n_head <= 0 or rows % (2 * n_head):
        raise CheckpointError(f"{where}: {rows} rows cannot be split into {n_head} heads of an even size (RoPE permutation)")
    return torch.arange(rows).reshape(n_head, rows // n_head // 2, 2).transpose(1, 2).reshape(rows)
