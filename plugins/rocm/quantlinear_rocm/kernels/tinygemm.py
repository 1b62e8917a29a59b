"""``rocm.tinygemm``: PyTorch's int4 kernel ``aten._weight_int4pack_mm`` as built for ROCm (CDNA2+).

Not run on AMD hardware (see README.md): checked against a fake of the ROCm build of the ops.

The ROCm build of ``int4mm.cu`` runs only where ``isCDNA2orLater`` (gfx90a, gfx942, gfx950);
RDNA is not supported ("TODO: Support RDNA").  Its packer writes n-tiles of 16 rows for 64-lane
wavefronts into the same ``[N/8, K/(16*ikt), 32, ikt/2]`` int32 shape CUDA fills with tiles of 8
rows -- same shape, different bytes -- so the weight is packed on the layer's own device, at
``prepare`` time (never packed elsewhere and moved), and N must be a multiple of 16 (torchao's
``Int4TilePackedTo4dTensor`` likewise pads N to ``ntile_size = 16 if torch.version.hip else 8``).  bf16
activations only; groups of 32..256 (larger ones and per-channel are split exactly, as on CUDA).
"""

from __future__ import annotations

from quantlinear import LayerSpec, Verdict
from quantlinear_triton.layers import TinyGemmBase

from .. import archs
from .. import device as _device
from .common import arch_verdict


class RocmTinyGemmLinear(TinyGemmBase):
    name = "rocm.tinygemm"
    priority = 40
    device_families = frozenset({"rocm"})
    out_features_multiple = 16
    verified = _device.VERIFIED

    @classmethod
    def check(cls, spec: LayerSpec) -> Verdict:
        reason = cls.op_reason()
        v = Verdict.no(reason) if reason else arch_verdict(spec, archs.tinygemm_refusal)
        if not v:
            return v
        reason = cls.layout_reason(spec)
        return Verdict.no(reason) if reason else Verdict.yes()
