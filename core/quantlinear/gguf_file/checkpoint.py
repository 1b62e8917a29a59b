"""A ``.gguf`` file seen as a quantlinear checkpoint, so ``load_quantized`` loads it unchanged.

:class:`GGUFCheckpoint` has the reading interface of :class:`quantlinear.checkpoint.Checkpoint`
(``keys``, ``get``, ``shape``, ``nbytes``, ``items_by_file``, ``total_bytes``) over Transformers
names, plus what only GGUF needs: ``quantized_prefixes()`` (the tensors' types, not a marker
tensor, say which layers are quantized), ``quant_config()`` (a :class:`GGUFQuantConfig` with each
layer's scheme and format: a q4_k_m file mixes Q4_K and Q6_K) and ``prepare_model()`` (swaps a
quantized token embedding for a :class:`GGUFEmbedding`).

* Quantized tensors are read as uint8 blocks ``[N, row_bytes]`` (format ``gguf_<type>``, tensor
  ``weight``); F32/F16/BF16 tensors (norms, unquantized weights) as float tensors.
* ``attn_q`` / ``attn_k`` rows of ``llama`` files are put back in Transformers' order
  (:mod:`.names`), weights and biases, quantized or not.
* No ``output.weight`` (tied embeddings): llama.cpp then uses ``token_embd`` as the output layer,
  and so does quantlinear: ``lm_head.weight`` reads the ``token_embd`` blocks (one tensor for both).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..config import QuantConfig
from ..errors import CheckpointError
from ..formats.gguf import gguf_scheme
from ..gguf_types import GGUF_TYPES
from .embedding import GGUFEmbedding
from .names import DERIVED, architecture, hf_name, permuted_by, unpermute_index
from .reader import FLOAT_TYPES, GGUFFile

_EMBEDDINGS = {"token_embd.weight"}


def gguf_path(path: str | os.PathLike) -> Path | None:
    """The ``.gguf`` file ``path`` names (the file, or the only one of a folder without
    safetensors), or None when ``path`` is not a GGUF checkpoint."""
    p = Path(path)
    if p.is_file():
        return p if p.suffix == ".gguf" else None
    if not p.is_dir() or any(p.glob("*.safetensors")):
        return None
    found = sorted(p.glob("*.gguf"))
    if len(found) > 1:
        raise CheckpointError(f"{p}: holds {len(found)} .gguf files ({', '.join(f.name for f in found)}); pass the file to load")
    return found[0] if found else None


@dataclass(frozen=True)
class GGUFQuantConfig(QuantConfig):
    """Per-layer GGUF types as a QuantConfig: ``layer_scheme`` / ``layer_format`` by module name."""

    layer_types: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    embedding_types: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    architecture: str = ""

    def layer_scheme(self, name: str):
        q = self.layer_types.get(name)
        return gguf_scheme(q) if q else None

    def layer_format(self, name: str) -> str | None:
        q = self.layer_types.get(name)
        return GGUF_TYPES[q].format if q else None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(architecture=self.architecture, gguf_types=dict(Counter(self.layer_types.values())),
                 layer_types=dict(self.layer_types), embedding_types=dict(self.embedding_types))
        return d


class GGUFCheckpoint:
    """The tensors of one ``.gguf`` file under Transformers names, read lazily from the map."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: GGUF file does not exist")
        self.file = GGUFFile(self.path)
        self.directory, self.files = self.path.parent, [self.path]
        self.arch = architecture(self.file.architecture, str(self.path))
        self._to_gguf: dict[str, str] = {}
        self.dropped: list[str] = []
        for g in self.file.names():
            info = self.file.info(g)
            if not info.quantized and info.qtype not in FLOAT_TYPES:
                raise CheckpointError(
                    f"{self.path}: tensor {g!r} has type {info.qtype}, which quantlinear does not load "
                    f"(it loads {', '.join(GGUF_TYPES)} and {', '.join(FLOAT_TYPES)})"
                )
            if g in DERIVED:
                self.dropped.append(g)
                continue
            hf = hf_name(g) or g  # unknown names stay as they are: the loader reports them (strict)
            if hf in self._to_gguf:
                raise CheckpointError(f"{self.path}: tensors {self._to_gguf[hf]!r} and {g!r} both map to {hf!r}")
            self._to_gguf[hf] = g
        self.tied_output = "output.weight" not in self.file.names() and "token_embd.weight" in self.file.names()
        if self.tied_output:
            self._to_gguf["lm_head.weight"] = "token_embd.weight"
        self._uses = Counter(self._to_gguf.values())
        self._shared: dict[str, torch.Tensor] = {}
        self.layer_types: dict[str, str] = {}
        self.embedding_types: dict[str, str] = {}
        for hf, g in self._to_gguf.items():
            info = self.file.info(g)
            if info.quantized and hf.endswith(".weight"):
                target = self.embedding_types if (g in _EMBEDDINGS and hf != "lm_head.weight") else self.layer_types
                target[hf[: -len(".weight")]] = info.qtype

    # -- the Checkpoint interface ---------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._to_gguf)

    def __contains__(self, name: str) -> bool:
        return name in self._to_gguf

    def original(self, name: str) -> str:
        """The GGUF name of a (Transformers-named) tensor."""
        return self._to_gguf.get(name, name)

    def get(self, name: str) -> torch.Tensor:
        g = self._to_gguf.get(name)
        if g is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} is not in the GGUF file")
        if g in self._shared:  # token_embd read for both the embedding and the tied lm_head
            t = self._shared[g]
        else:
            t = self._read(g)
            if self._uses[g] > 1:
                self._shared[g] = t
        return t

    def _read(self, g: str) -> torch.Tensor:
        t = self.file.tensor(g)
        heads_key = permuted_by(g) if self.arch.permute_qk else None
        if heads_key is not None:
            t = t.index_select(0, unpermute_index(t.shape[0], self.heads(heads_key), f"{self.path}: tensor {g!r}"))
        return t

    def heads(self, key: str) -> int:
        """``head_count`` / ``head_count_kv`` from the file's metadata (KV defaults to all heads)."""
        full = f"{self.arch.name}.attention.{key}"
        v = self.file.meta(full)
        if v is None and key == "head_count_kv":
            return self.heads("head_count")
        if v is None:
            raise CheckpointError(f"{self.path}: metadata {full!r} is missing; it is needed to undo the Q/K row permutation")
        return int(v)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of the stored tensor: ``(N, row_bytes)`` for blocks, the element shape for floats."""
        info = self.file.info(self.original(name))
        if info.quantized:
            return (*info.shape[:-1], GGUF_TYPES[info.qtype].row_bytes(info.shape[-1]))
        return info.shape

    def nbytes(self, name: str) -> int:
        return self.file.info(self.original(name)).nbytes

    def items_by_file(self) -> Iterator[tuple[Path, list[str]]]:
        yield self.path, self.keys()

    @property
    def total_bytes(self) -> int:
        return self.file.size

    # -- what GGUF adds ---------------------------------------------------------------------------
    def quantized_prefixes(self) -> list[str]:
        return sorted(self.layer_types)

    def quant_config(self) -> GGUFQuantConfig:
        # the most common type names the file's scheme in reports; the layers carry their own
        types = Counter(self.layer_types.values()) or Counter(self.embedding_types.values())
        main = types.most_common(1)[0][0] if types else "Q8_0"  # an all-float file: nominal only
        ftype = self.file.meta("general.file_type")
        packing = _file_type_name(ftype)
        return GGUFQuantConfig(quant_method="gguf", format=GGUF_TYPES[main].format, scheme=gguf_scheme(main),
                               packing_format=packing, layer_types=dict(self.layer_types),
                               embedding_types=dict(self.embedding_types), architecture=self.arch.name,
                               raw={"file": str(self.path), "general.file_type": ftype})

    def prepare_model(self, model: nn.Module, *, dtype: torch.dtype, report) -> None:
        """Check the model against the file's head counts; put GGUFEmbeddings where the embedding is quantized."""
        cfg = getattr(model, "config", None)
        if self.arch.permute_qk:
            for key, attr in (("head_count", "num_attention_heads"), ("head_count_kv", "num_key_value_heads")):
                mine = getattr(cfg, attr, None)
                if mine is not None and int(mine) != self.heads(key):
                    raise CheckpointError(
                        f"{self.path}: {self.arch.name}.attention.{key} = {self.heads(key)} but the model's config has "
                        f"{attr} = {mine}; the Q/K rows cannot be put back in order"
                    )
        if self.tied_output and cfg is not None and getattr(cfg, "tie_word_embeddings", True) is False:
            report.warnings.append("the GGUF file has no output.weight: lm_head uses token_embd (as llama.cpp does), "
                                   "although the model's config does not tie embeddings")
        for module, qtype in self.embedding_types.items():
            g = self._to_gguf[module + ".weight"]
            try:
                mod = model.get_submodule(module)
            except AttributeError:
                raise CheckpointError(f"{self.path}: tensor {g!r} maps to {module!r}, which the model does not have") from None
            V, D = self.file.info(g).shape
            if not isinstance(mod, nn.Embedding) or (mod.num_embeddings, mod.embedding_dim) != (V, D):
                raise CheckpointError(
                    f"{self.path}: tensor {g!r} ({qtype} [{V}, {D}]) maps to {module!r}, a {type(mod).__name__} "
                    f"{tuple(getattr(mod, 'weight', torch.empty(0)).shape)}; expected an nn.Embedding({V}, {D})"
                )
            parent, _, child = module.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child,
                    GGUFEmbedding(V, D, qtype, dtype, mod.padding_idx, device="meta"))
            report.quantized_embeddings[module] = qtype


def _file_type_name(ftype: Any) -> str | None:
    """``general.file_type`` 15 -> ``gguf:q4_k_m`` (AutoRound's format string), if the gguf package knows it."""
    if ftype is None:
        return None
    try:
        import gguf

        return "gguf:" + gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
    except (ImportError, ValueError):
        return f"gguf:file_type={ftype}"
