"""llama.cpp's quantized tensor types as data: block size, bytes per block, bits, format name.

GGUF files store each quantized weight as rows of fixed-size blocks (``ggml-common.h``):
a block of ``block`` consecutive input channels takes ``type_size`` bytes.  quantlinear keeps
those bytes as they are (:class:`quantlinear.formats.GGUFWeights`); kernels decode them, or
repack them once at load time.  The packing-format name of a GGUF type ``Q4_K`` is
``gguf_q4_k``; its scheme has ``data_type="gguf"``, the type's bits and ``group_size = block``.

Byte layouts of one block (little-endian, fp16 = IEEE half):

=======  =====  ====  ===========================================================
type     block  size  fields, in order
=======  =====  ====  ===========================================================
Q4_0     32     18    d fp16, qs[16] (nibbles: low = elements 0..15, high = 16..31); w = (q - 8) * d
Q4_1     32     20    d fp16, m fp16, qs[16]; w = q * d + m
Q5_0     32     22    d fp16, qh[4] (bit j = high bit of element j), qs[16]; w = (q - 16) * d
Q5_1     32     24    d fp16, m fp16, qh[4], qs[16]; w = q * d + m
Q8_0     32     34    d fp16, qs[32] int8; w = q * d
Q2_K     256    84    scales[16] (low nibble scale, high nibble min, per 16), qs[64], d fp16, dmin fp16
Q3_K     256    110   hmask[32], qs[64], scales[12] (16 six-bit scales), d fp16
Q4_K     256    144   d fp16, dmin fp16, scales[12] (8 six-bit scales + 8 six-bit mins), qs[128]
Q5_K     256    176   d fp16, dmin fp16, scales[12], qh[32], qs[128]
Q6_K     256    210   ql[128], qh[64], scales[16] int8, d fp16
=======  =====  ====  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGUFType:
    name: str  #: llama.cpp's name, e.g. "Q4_K" (gguf.GGMLQuantizationType member name)
    ggml_type: int  #: the numeric ggml_type stored in the file
    block: int  #: elements per block (along in_features)
    type_size: int  #: bytes per block
    bits: int  #: bits of the element codes (Scheme.bits)
    sym: bool  #: True where the block has no min / zero term

    @property
    def format(self) -> str:
        """quantlinear's packing-format name for this type."""
        return "gguf_" + self.name.lower()

    def row_bytes(self, in_features: int) -> int:
        return in_features // self.block * self.type_size


GGUF_TYPES: dict[str, GGUFType] = {
    t.name: t
    for t in (
        GGUFType("Q4_0", 2, 32, 18, 4, True),
        GGUFType("Q4_1", 3, 32, 20, 4, False),
        GGUFType("Q5_0", 6, 32, 22, 5, True),
        GGUFType("Q5_1", 7, 32, 24, 5, False),
        GGUFType("Q8_0", 8, 32, 34, 8, True),
        GGUFType("Q2_K", 10, 256, 84, 2, False),
        GGUFType("Q3_K", 11, 256, 110, 3, True),
        GGUFType("Q4_K", 12, 256, 144, 4, False),
        GGUFType("Q5_K", 13, 256, 176, 5, False),
        GGUFType("Q6_K", 14, 256, 210, 6, True),
    )
}

#: packing-format name -> type
GGUF_FORMATS: dict[str, GGUFType] = {t.format: t for t in GGUF_TYPES.values()}
