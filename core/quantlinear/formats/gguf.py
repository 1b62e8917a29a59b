"""llama.cpp's block types (Q4_0 ... Q6_K) as packing formats: one format per type, ``gguf_<type>``.

A layer stores one tensor, ``weight``: uint8 ``[N, K // block * type_size]``, row ``n`` being the
file's blocks of output channel ``n`` (the loader has already undone any row permutation of the
converter), plus an optional float ``bias [N]``.  The canonical weights are
:class:`~quantlinear.formats.GGUFWeights`: the same bytes, untouched, so a kernel can keep
llama.cpp's layout or repack it.

Scheme of a type: ``Scheme(data_type="gguf", bits=type.bits, group_size=type.block, sym=type.sym)``
(:func:`gguf_scheme`); the ten types give ten distinct schemes.

Validation (``CheckpointError`` naming layer, tensor and value): a byte count that is not a whole
number of blocks, ``K`` not a multiple of the block, and non-finite fp16 block scales (``d``, and
``m`` / ``dmin`` where the type has one).  llama.cpp itself loads such blocks unless run with
``--check-tensors``, and then propagates NaN/inf into every output that touches them; quantlinear
rejects them at load time, as ``--check-tensors`` (``ggml_validate_row_data``) does.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..errors import CheckpointError, QuantLinearError
from ..gguf_types import GGUF_TYPES, GGUFType
from ..scheme import Scheme
from ..spec import LayerSpec
from .base import GGUFWeights, PackingFormat, TensorSpec


def gguf_scheme(qtype: str) -> Scheme:
    """The Scheme of GGUF type ``qtype`` (``"Q4_K"`` -> gguf4, group 256, asym)."""
    t = GGUF_TYPES[qtype]
    return Scheme(bits=t.bits, group_size=t.block, sym=t.sym, data_type="gguf")


class GGUFFormat(PackingFormat):
    """The raw blocks of one GGUF type (instances: one per type, named ``gguf_<type>``)."""

    data_types = frozenset({"gguf"})
    marker = "weight"
    tensor_names_for_inspect = ("weight",)

    def __init__(self, gtype: GGUFType) -> None:
        self.gtype = gtype
        self.name = gtype.format  # type: ignore[misc]

    def check_shape(self, spec: LayerSpec) -> str | None:
        t, s = self.gtype, spec.scheme
        if s != gguf_scheme(t.name):
            return f"format {self.name} holds scheme {gguf_scheme(t.name).id} ({t.name}), not {s.id}"
        if spec.in_features % t.block:
            return f"in_features={spec.in_features} is not a multiple of the {t.name} block of {t.block} (format {self.name})"
        return None

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        specs = {"weight": TensorSpec((spec.out_features, self.gtype.row_bytes(spec.in_features)), torch.uint8)}
        if spec.bias:
            specs["bias"] = TensorSpec((spec.out_features,), None)
        return specs

    def infer_features(self, shapes: Mapping[str, tuple[int, ...]], bits: int) -> tuple[int, int]:
        n, row = shapes["weight"]
        return row // self.gtype.type_size * self.gtype.block, n

    def validate(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> None:
        w = tensors.get("weight")
        t = self.gtype
        if w is not None and w.dim() == 2 and w.dtype == torch.uint8 and w.shape[1] % t.type_size:
            raise CheckpointError(
                f"layer {spec.name!r}: tensor {spec.name}.weight has rows of {w.shape[1]} bytes, not a whole number "
                f"of {t.name} blocks ({t.type_size} bytes each; format {self.name})"
            )
        super().validate(tensors, spec)

    def unpack(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> GGUFWeights:
        if "weight" not in tensors:
            raise CheckpointError(f"layer {spec.name!r}: tensor 'weight' is missing (format {self.name})")
        data = tensors["weight"].contiguous()
        check_block_scales(self.gtype.name, data, f"layer {spec.name!r}: tensor {spec.name}.weight", self.name)
        return GGUFWeights(self.gtype.name, data)

    def pack(self, weights: GGUFWeights, spec: LayerSpec) -> dict[str, torch.Tensor]:
        if not isinstance(weights, GGUFWeights) or weights.qtype != self.gtype.name:
            got = getattr(weights, "qtype", type(weights).__name__)
            raise QuantLinearError(f"layer {spec.name!r}: format {self.name} stores {self.gtype.name} blocks, got {got}")
        shape = (spec.out_features, self.gtype.row_bytes(spec.in_features))
        if tuple(weights.data.shape) != shape or weights.data.dtype != torch.uint8:
            raise QuantLinearError(
                f"layer {spec.name!r}: {self.gtype.name} data must be uint8 {shape}, got {weights.data.dtype} {tuple(weights.data.shape)}"
            )
        return {"weight": weights.data.contiguous()}


def check_block_scales(qtype: str, data: torch.Tensor, where: str, fmt: str) -> None:
    """Raise CheckpointError at the first block whose fp16 scale (``d``, ``m``, ``dmin``) is NaN or inf."""
    from ..gguf_quants import block_scales

    for field, vals in block_scales(qtype, data).items():
        bad = ~torch.isfinite(vals)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            row = f"row {idx[0]}, " if len(idx) > 1 else ""
            raise CheckpointError(
                f"{where}: {qtype} block {idx[-1]} ({row}input channels from {idx[-1] * GGUF_TYPES[qtype].block}) has "
                f"{field} = {float(vals[idx])}; block scales must be finite (llama.cpp --check-tensors rejects it too; format {fmt})"
            )


GGUF_FORMATS: dict[str, GGUFFormat] = {t.format: GGUFFormat(t) for t in GGUF_TYPES.values()}

__all__ = ["GGUFFormat", "GGUF_FORMATS", "check_block_scales", "gguf_scheme"]
