"""Checkpoint-key mappings per model family: load a checkpoint quantized under one module tree
into a model whose modules are named differently.

A quantized checkpoint is written under the module names of the model that was quantized:
the Hub layout of Qwen2.5-Omni (``thinker.model.layers.0...``), the original Wan release
(``blocks.0.self_attn.q``) and so on.  The classes that load it today may name the same
modules differently (Transformers 5 puts the thinker's text model under
``model.language_model``; Diffusers calls Wan's query projection ``attn1.to_q``), as serving
engines such as vLLM-Omni do with their own module trees.  Each :class:`KeyMapping` here is the
data for one family: ordered ``regex -> replacement`` rules (``re.sub``, applied in order to
every checkpoint key, as :func:`quantlinear.load_quantized`'s ``key_mapping=``), and a
``detect`` pattern saying when a checkpoint is in the foreign naming at all (a mapping is only
applied when some checkpoint key matches it, so a checkpoint already in the model's own naming
loads unchanged).  The per-layer entries of the quantization config stay in the checkpoint's
names; the loader looks them up through the mapping.

Mappings are keyed by model class name (a subclass finds its base class's mapping) and may be
added with :func:`register_key_mapping`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from ..errors import ConfigError

__all__ = ["KeyMapping", "register_key_mapping", "key_mapping_for", "registered_key_mappings", "select_key_mapping"]


@dataclass(frozen=True)
class KeyMapping:
    """Rules that rename one family's checkpoint keys onto another module tree."""

    name: str
    #: (regex, replacement) in order; a replacement of None drops matching tensors
    rules: tuple[tuple[str, str | None], ...]
    #: a checkpoint is in the foreign naming when one of its keys matches this (re.search)
    detect: str
    description: str = ""

    def __post_init__(self) -> None:
        for pattern in (self.detect, *(p for p, _ in self.rules)):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"key mapping {self.name!r}: invalid regex {pattern!r}: {e}") from None
        for p, r in self.rules:
            if r is not None and not isinstance(r, str):
                raise ConfigError(f"key mapping {self.name!r}: replacement for {p!r} must be a string or None, got {r!r}")

    def applies_to(self, keys: Iterable[str]) -> bool:
        pat = re.compile(self.detect)
        return any(pat.search(k) for k in keys)

    def as_dict(self) -> dict[str, str | None]:
        """The rules in the form ``load_quantized(key_mapping=...)`` takes."""
        return dict(self.rules)

    def apply(self, key: str) -> str | None:
        for p, r in self.rules:
            if r is None:
                if re.search(p, key):
                    return None
                continue
            key = re.sub(p, r, key)
        return key


_REGISTRY: dict[str, KeyMapping] = {}


def register_key_mapping(class_name: str, mapping: KeyMapping | Mapping[str, str], *, detect: str | None = None,
                         replace: bool = False, description: str = "") -> KeyMapping:
    """Register the key mapping of model class ``class_name`` (Transformers or Diffusers class name).

    ``mapping`` is a :class:`KeyMapping` or an ordered ``{regex: replacement}`` dict (then
    ``detect`` is required).  Registering a name twice is an error unless ``replace=True``.
    """
    if not isinstance(class_name, str) or not class_name:
        raise ConfigError(f"register_key_mapping: class name must be a non-empty string, got {class_name!r}")
    if isinstance(mapping, KeyMapping):
        km = mapping
    elif isinstance(mapping, Mapping):
        if not detect:
            raise ConfigError(f"register_key_mapping({class_name!r}): a rule dict needs detect= (a regex matching foreign keys)")
        km = KeyMapping(class_name, tuple((str(p), r) for p, r in mapping.items()), detect, description)
    else:
        raise ConfigError(f"register_key_mapping({class_name!r}): mapping must be a KeyMapping or a dict, got {type(mapping).__name__}")
    if class_name in _REGISTRY and not replace:
        raise ConfigError(f"register_key_mapping: {class_name!r} already has mapping {_REGISTRY[class_name].name!r} (pass replace=True)")
    _REGISTRY[class_name] = km
    return km


def registered_key_mappings() -> dict[str, KeyMapping]:
    return dict(_REGISTRY)


def key_mapping_for(model_class) -> KeyMapping | None:
    """The registered mapping of a model class (or class name), searching its base classes."""
    if isinstance(model_class, str):
        return _REGISTRY.get(model_class)
    for klass in getattr(model_class, "__mro__", (type(model_class),)):
        km = _REGISTRY.get(klass.__name__)
        if km is not None:
            return km
    return None


def select_key_mapping(model_class, checkpoint_keys: Iterable[str]) -> KeyMapping | None:
    """The family mapping to apply for this class and checkpoint, or None (keys already match)."""
    km = key_mapping_for(model_class)
    if km is None:
        return None
    return km if km.applies_to(checkpoint_keys) else None


# ---- the data ------------------------------------------------------------------------------------
# Qwen2.5-Omni thinker (the language-model stage of the omni model).  Hub checkpoints name it
# ``thinker.model.layers.*``, ``thinker.visual.*``, ``thinker.audio_tower.*``, ``thinker.lm_head``
# (and a standalone thinker ``model.layers.*``, ``visual.*``, ``audio_tower.*``); Transformers 5's
# Qwen2_5OmniThinkerForConditionalGeneration has ``model.language_model.*``, ``model.visual.*``,
# ``model.audio_tower.*`` (its own conversion mapping, ``transformers/conversion_mapping.py``).
_OMNI_THINKER = KeyMapping(
    "qwen2_5_omni_thinker",
    (
        (r"^(?:talker|token2wav)\.", None),  # the other stages of a full Omni checkpoint
        (r"^thinker\.", ""),
        (r"^audio_tower\.", "model.audio_tower."),
        (r"^visual\.", "model.visual."),
        (r"^model\.(?!(?:language_model|visual|audio_tower)\.)", "model.language_model."),
    ),
    detect=r"^(?:thinker\.|audio_tower\.|visual\.|model\.(?!(?:language_model|visual|audio_tower)\.))",
    description="Qwen2.5-Omni thinker: Hub names (thinker.model.*, visual.*, audio_tower.*) -> Transformers 5 modules",
)

# Qwen2-VL / Qwen2.5-VL: Hub ``model.layers.*`` / ``visual.*`` -> ``model.language_model.*`` / ``model.visual.*``.
_QWEN_VL = KeyMapping(
    "qwen2_vl",
    (
        (r"^visual\.", "model.visual."),
        (r"^model\.(?!(?:language_model|visual)\.)", "model.language_model."),
    ),
    detect=r"^(?:visual\.|model\.(?!(?:language_model|visual)\.))",
    description="Qwen2-VL / Qwen2.5-VL: Hub names -> Transformers 5 modules",
)

# LLaVA: ``language_model.model.*`` / ``language_model.lm_head`` / ``vision_tower.*`` ->
# ``model.language_model.*`` / ``lm_head`` / ``model.vision_tower.*``.
_LLAVA = KeyMapping(
    "llava",
    (
        (r"^language_model\.lm_head\.", "lm_head."),
        (r"^language_model\.model\.", "model.language_model."),
        (r"^vision_tower\.", "model.vision_tower."),
        (r"^multi_modal_projector\.", "model.multi_modal_projector."),
    ),
    detect=r"^(?:language_model\.|vision_tower\.|multi_modal_projector\.)",
    description="LLaVA: Hub names -> Transformers 5 modules",
)

# Wan 2.x: the original release's module tree (``blocks.N.self_attn.q``, ``ffn.0``, ``norm3`` ...)
# -> Diffusers' WanTransformer3DModel (``blocks.N.attn1.to_q``, ``ffn.net.0.proj``, ``norm2`` ...),
# the renames of ``diffusers/loaders/single_file_utils.py`` (``convert_wan_transformer_to_diffusers``).
_WAN = KeyMapping(
    "wan",
    (
        (r"^model\.diffusion_model\.", ""),
        (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
        (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
        (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
        (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
        (r"^time_projection\.1\.", "condition_embedder.time_proj."),
        (r"^img_emb\.proj\.0\.", "condition_embedder.image_embedder.norm1."),
        (r"^img_emb\.proj\.1\.", "condition_embedder.image_embedder.ff.net.0.proj."),
        (r"^img_emb\.proj\.3\.", "condition_embedder.image_embedder.ff.net.2."),
        (r"^img_emb\.proj\.4\.", "condition_embedder.image_embedder.norm2."),
        (r"\.cross_attn\.", ".attn2."),
        (r"\.self_attn\.", ".attn1."),
        (r"\.(attn[12])\.o\.", r".\1.to_out.0."),
        (r"\.(attn[12])\.([qkv])\.", r".\1.to_\2."),
        (r"\.k_img\.", ".add_k_proj."),
        (r"\.v_img\.", ".add_v_proj."),
        (r"\.norm_k_img\.", ".norm_added_k."),
        (r"^head\.modulation$", "scale_shift_table"),
        (r"^head\.head\.", "proj_out."),
        (r"^(blocks\.\d+)\.modulation$", r"\1.scale_shift_table"),
        (r"\.ffn\.0\.", ".ffn.net.0.proj."),
        (r"\.ffn\.2\.", ".ffn.net.2."),
        # the original norm3 (cross-attention norm) is Diffusers' norm2, and norm2 its norm3
        (r"^(blocks\.\d+)\.norm([23])\.", r"\1.norm__\2."),
        (r"^(blocks\.\d+)\.norm__2\.", r"\1.norm3."),
        (r"^(blocks\.\d+)\.norm__3\.", r"\1.norm2."),
    ),
    detect=r"(?:^|\.)(?:self_attn|cross_attn)\.[qkvo]\.|^head\.head\.|^time_embedding\.0\.|^model\.diffusion_model\.",
    description="Wan 2.x original release names -> Diffusers WanTransformer3DModel",
)
for _cls, _km in [
    ("Qwen2_5OmniThinkerForConditionalGeneration", _OMNI_THINKER),
    ("Qwen2VLForConditionalGeneration", _QWEN_VL),
    ("Qwen2_5_VLForConditionalGeneration", _QWEN_VL),
    ("LlavaForConditionalGeneration", _LLAVA),
    ("WanTransformer3DModel", _WAN),
]:
    register_key_mapping(_cls, _km)
