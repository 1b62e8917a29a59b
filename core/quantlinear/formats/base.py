"""The packing-format contract: how a checkpoint lays a scheme's numbers out in tensors.

A format knows the tensor names, shapes and dtypes a layer has in a checkpoint, and how to
turn them into the canonical :class:`IntWeights` (and back, for writing checkpoints and
for tests).  Kernels never parse checkpoint layouts themselves: they receive canonical
weights and repack them into whatever their own native layout is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from ..errors import CheckpointError
from ..spec import LayerSpec


@dataclass(frozen=True)
class TensorSpec:
    """Expected shape and dtype of one checkpoint tensor (``dtype=None``: any float dtype)."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None
    optional: bool = False


@dataclass
class IntWeights:
    """Integer-quantized weights in one canonical, unpacked orientation (that of nn.Linear).

    ``qweight``: uint8 ``[N, K]`` codes in ``[0, 2**bits)``.
    ``zeros``:   int16 ``[N, G]`` true integer zero points (format offsets already removed).
    ``scales``:  float ``[N, G]``.
    ``g_idx``:   int32 ``[K]`` group of each input channel, or None for ``k // group_size``.
    Dequantized weight: ``W[n, k] = (qweight[n, k] - zeros[n, g(k)]) * scales[n, g(k)]``.
    """

    qweight: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor | None = None

    def group_index(self, group_size: int) -> torch.Tensor:
        k = self.qweight.shape[1]
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(k, device=self.qweight.device) // group_size

    def dequantize(self, group_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Reference dequantization in fp32 (then cast): the ground truth for every kernel."""
        gi = self.group_index(group_size)
        q = self.qweight.to(torch.float32)
        z = self.zeros.to(torch.float32).index_select(1, gi)
        s = self.scales.to(torch.float32).index_select(1, gi)
        return ((q - z) * s).to(dtype)


@dataclass
class FloatWeights:
    """Floating-point / microscaling weights (MXFP4/8, MXINT4, NVFP4, FP8) in nn.Linear orientation.

    ``codes``:  uint8 ``[N, K]`` element codes (4-bit sign-magnitude codes, or FP8 raw bytes);
                see :mod:`quantlinear.fpcodes` for ``element`` (``e2m1``, ``e0m4``, ``e4m3``, ``e5m2``).
    ``scales``: fp32 ``[N, G]`` decoded block scales, block ``g`` covering input channels
                ``[g * block_size, (g + 1) * block_size)`` (one block per row: ``block_size = K``).
    ``scale_kind`` / ``raw_scales``: how the checkpoint stores the scales (``e8m0`` uint8,
                ``e4m3`` float8, ``float`` [N] or [1]) and the stored tensor, for kernels that use it.
    ``global_scale``: fp32 ``[1]`` NVFP4 ``weight_global_scale``, or None.
    ``input_scale`` (FP8 static, as stored) / ``input_global_scale`` (NVFP4, fp32): activation parameters.
    Dequantized weight: ``W[n, k] = value(codes[n, k]) * (1 / global_scale) * scales[n, k // block_size]``
    (the ``1 / global_scale`` factor only when there is one, applied first as AutoRound does).
    """

    codes: torch.Tensor
    element: str
    scales: torch.Tensor
    block_size: int
    scale_kind: str = "float"
    raw_scales: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None
    input_global_scale: torch.Tensor | None = None
    g_idx: None = None  # no act-order for these schemes; QuantLinear.post_load reads it

    def values(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        from ..fpcodes import decode_elements

        return decode_elements(self.codes, self.element, dtype)

    def dequantize(self, group_size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Reference dequantization in fp32 (then cast); ``group_size`` is ignored (``block_size`` rules)."""
        v = self.values(torch.float32)
        if self.global_scale is not None:
            gs = self.global_scale.to(torch.float32).reshape(())
            v = v * torch.where(gs == 0, torch.zeros_like(gs), 1.0 / gs)
        K = v.shape[1]
        s = self.scales.to(torch.float32).repeat_interleave(self.block_size, dim=1)[:, :K]
        return (v * s).to(dtype)


@dataclass
class GGUFWeights:
    """llama.cpp-quantized weights kept as the file's raw blocks (see :mod:`quantlinear.gguf_types`).

    ``qtype``: the GGUF type name (``"Q4_K"``, ...).
    ``data``:  uint8 ``[N, K // block * type_size]``: row ``n`` of the weight is the
               concatenation of its blocks, exactly as in the file (rows already in
               nn.Linear order: a loader undoes any row permutation of the converter).
    Dequantized weight: llama.cpp's ``dequantize_row_<type>`` of each row.
    """

    qtype: str
    data: torch.Tensor
    g_idx: None = None  # no act-order; QuantLinear.post_load reads it

    @property
    def gguf_type(self):
        from ..gguf_types import GGUF_TYPES

        return GGUF_TYPES[self.qtype]

    def dequantize(self, group_size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Reference dequantization in fp32 (then cast), bit-identical to llama.cpp's."""
        from ..gguf_quants import dequantize_rows

        return dequantize_rows(self.qtype, self.data).to(dtype)


class PackingFormat:
    """Base class of checkpoint layouts. Subclasses are stateless singletons."""

    name: ClassVar[str]
    #: data types (``Scheme.data_type``) this layout can hold
    data_types: ClassVar[frozenset[str]] = frozenset({"int"})
    #: tensor whose presence marks a layer as stored in this family of layouts
    marker: ClassVar[str] = "qweight"
    #: tensors whose shapes ``infer_features`` reads (``quantlinear inspect``)
    tensor_names_for_inspect: ClassVar[tuple[str, ...]] = ("qweight", "qzeros", "scales", "g_idx", "weight", "weight_packed", "weight_scale")

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def adapt_tensor(self, tname: str, t: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
        """Normalize one checkpoint tensor before validation (e.g. drop writer padding); default: as is."""
        return t

    def infer_features(self, shapes: Mapping[str, tuple[int, ...]], bits: int) -> tuple[int, int]:
        """(in_features, out_features) of a layer from its checkpoint tensor shapes (for ``inspect``)."""
        raise NotImplementedError

    def check_shape(self, spec: LayerSpec) -> str | None:
        """Why this layer's dimensions cannot be stored in this format, or None."""
        return None

    def unpack(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> IntWeights:
        raise NotImplementedError

    def pack(self, weights: IntWeights, spec: LayerSpec) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- shared validation --------------------------------------------------------------
    def validate(self, tensors: Mapping[str, torch.Tensor], spec: LayerSpec) -> None:
        """Raise CheckpointError naming layer, tensor and value for any mismatch."""
        expected = self.tensor_specs(spec)
        where = spec.name or "<layer>"
        for tname, ts in expected.items():
            if tname not in tensors:
                if ts.optional:
                    continue
                raise CheckpointError(
                    f"layer {where!r}: tensor {tname!r} is missing from the checkpoint "
                    f"(format {self.name}, scheme {spec.scheme.id})"
                )
            t = tensors[tname]
            if tuple(t.shape) != ts.shape:
                raise CheckpointError(
                    f"layer {where!r}: tensor {where}.{tname} has shape {tuple(t.shape)}, expected {ts.shape} "
                    f"for format {self.name}, scheme {spec.scheme.id}, "
                    f"in_features={spec.in_features}, out_features={spec.out_features}"
                )
            if ts.dtype is None:
                if not t.dtype.is_floating_point:
                    raise CheckpointError(f"layer {where!r}: tensor {where}.{tname} has dtype {t.dtype}, expected a float dtype")
            elif t.dtype != ts.dtype:
                raise CheckpointError(
                    f"layer {where!r}: tensor {where}.{tname} has dtype {t.dtype}, expected {ts.dtype}"
                )
        extra = set(tensors) - set(expected)
        if extra:
            raise CheckpointError(f"layer {where!r}: unexpected tensors {sorted(extra)} for format {self.name}")
