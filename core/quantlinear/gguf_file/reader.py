"""Opening a ``.gguf`` file with llama.cpp's own reader (``gguf.GGUFReader``, memory-mapped), checked.

``GGUFReader`` trusts the file: a truncated file or a tensor of an unknown type ends in a bare
``ValueError`` / ``IndexError`` from numpy, naming neither the file nor the tensor.  Here every
tensor entry is checked before the reader maps it (type known, rows whole blocks, data inside
the file), and any other failure of the reader becomes a :class:`CheckpointError` naming the file.
Tensors are copied out of the map one at a time (:meth:`GGUFFile.tensor`), so a load holds at
most the file's bytes once, plus the tensor being read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, QuantLinearError
from ..gguf_types import GGUF_TYPES

#: unquantized GGUF types quantlinear reads, and the torch dtype of each
FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_MAGIC = b"GGUF"


def require_gguf():
    """The ``gguf`` package (llama.cpp's reader), or a QuantLinearError saying how to get it."""
    try:
        import gguf
    except ImportError as e:
        raise QuantLinearError(
            f"reading .gguf files needs the optional package 'gguf' ({e}); install it with "
            "`pip install gguf` (or `pip install quantlinear[gguf]`)"
        ) from None
    return gguf


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file: name, GGUF type name, torch-order shape ``(N, K)`` / ``(K,)``."""

    name: str
    qtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def quantized(self) -> bool:
        return self.qtype in GGUF_TYPES


def _reader_class(gguf, path: Path, size: int):
    class CheckedReader(gguf.GGUFReader):
        """GGUFReader whose tensor table is checked entry by entry before numpy sees it."""

        def _build_tensors(self, start_offs: int, fields: list) -> None:  # noqa: D401 - GGUFReader's hook
            for field in fields:
                _check_entry(gguf, path, size, start_offs, field)
            super()._build_tensors(start_offs, fields)

    return CheckedReader


def _check_entry(gguf, path: Path, size: int, start: int, field) -> None:
    if len(field.parts) != 6:  # another gguf version's layout: leave the checks to the reader
        return
    _, name_data, _, dims, raw_type, offset = field.parts
    name = bytes(name_data).decode("utf-8", "replace")
    try:
        qt = gguf.GGMLQuantizationType(int(raw_type[0]))
    except ValueError:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown ggml type {int(raw_type[0])}") from None
    block, type_size = gguf.GGML_QUANT_SIZES[qt]
    dims = [int(d) for d in dims]
    if not dims or any(d <= 0 for d in dims):
        raise CheckpointError(f"{path}: tensor {name!r} has invalid dimensions {dims}")
    if dims[0] % block:
        raise CheckpointError(
            f"{path}: tensor {name!r} ({qt.name}) has rows of {dims[0]} elements, not a multiple of the {qt.name} block of {block}"
        )
    n = int(np.prod(dims, dtype=np.int64))
    begin = start + int(offset[0])
    end = begin + n // block * type_size
    if end > size:
        raise CheckpointError(
            f"{path}: truncated GGUF file: tensor {name!r} ({qt.name} {dims}) needs bytes [{begin}, {end}), "
            f"the file has {size} bytes"
        )


class GGUFFile:
    """A checked, memory-mapped ``.gguf`` file: metadata and tensors by their GGUF names."""

    def __init__(self, path: str | os.PathLike) -> None:
        gguf = require_gguf()
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                head = fh.read(8)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read GGUF file: {e}") from None
        if head[:4] != _MAGIC:
            raise CheckpointError(f"{self.path}: not a GGUF file (starts with {head[:4]!r}, expected {_MAGIC!r})")
        if len(head) < 8 or head[4:8] == b"\0\0\0\0":
            raise CheckpointError(f"{self.path}: truncated or corrupt GGUF header ({size} bytes)")
        self.size = size
        try:
            self._reader = _reader_class(gguf, self.path, size)(str(self.path), "r")
        except CheckpointError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError, OSError) as e:
            raise CheckpointError(f"{self.path}: not a readable GGUF file (truncated or corrupt header): {type(e).__name__}: {e}") from None
        if self._reader.byte_order != "I":
            raise CheckpointError(f"{self.path}: a GGUF file of the other byte order (big-endian); quantlinear reads little-endian files")
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.architecture = str(self.meta("general.architecture", ""))

    # -- metadata -----------------------------------------------------------------------------------
    def meta(self, key: str, default: Any = None) -> Any:
        f = self._reader.get_field(key)
        if f is None:
            return default
        try:
            return f.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: metadata {key!r} is corrupt: {e}") from None

    # -- tensors ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        t = self._tensors[name]
        return TensorInfo(name, t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())), int(t.n_bytes))

    def tensor(self, name: str) -> torch.Tensor:
        """A private copy of one tensor: uint8 ``[N, row_bytes]`` blocks, or a float tensor."""
        try:
            t = self._tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name!r} is not in the file") from None
        info = self.info(name)
        if info.quantized:
            return torch.from_numpy(np.array(t.data, dtype=np.uint8, copy=True))
        if info.qtype == "BF16":
            raw = np.array(t.data, dtype=np.uint8, copy=True).reshape(*info.shape[:-1], -1)
            return torch.from_numpy(raw).view(torch.bfloat16)
        if info.qtype in FLOAT_TYPES:
            return torch.from_numpy(np.array(t.data, copy=True)).reshape(info.shape)
        raise CheckpointError(
            f"{self.path}: tensor {name!r} has type {info.qtype}, which quantlinear does not load "
            f"(it loads {', '.join(GGUF_TYPES)} and {', '.join(FLOAT_TYPES)})"
        )
