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


class PackingFormat:
    """Base class of checkpoint layouts. Subclasses are stateless singletons."""

    name: ClassVar[str]
    #: data types (``Scheme.data_type``) this layout can hold
    data_types: ClassVar[frozenset[str]] = frozenset({"int"})
    #: tensor whose presence marks a layer as stored in this family of layouts
    marker: ClassVar[str] = "qweight"

    def tensor_specs(self, spec: LayerSpec) -> dict[str, TensorSpec]:
        raise NotImplementedError

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
