"""Reading safetensors checkpoints (single file or sharded with an index), never pickles.

Every failure (missing file, truncated or corrupt header, a shard the index names but that
does not exist, a tensor listed in the index but absent from its shard) becomes a
:class:`~quantlinear.errors.CheckpointError` naming the file and tensor.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from .errors import CheckpointError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def _check_safetensors_file(f: Path) -> None:
    """Validate the header against the file size before handing it to safetensors."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{f}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{f}: corrupt safetensors header (header length {n} exceeds file size {size})")
            header = json.loads(fh.read(n))
    except CheckpointError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not a readable safetensors file: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{f}: corrupt safetensors header")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{f}: corrupt safetensors header entry for tensor {name!r}") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{f}: truncated safetensors file: tensors need {8 + n + end} bytes, file has {size}")


class Checkpoint:
    """The tensors of a checkpoint directory or file, by name, read lazily."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: checkpoint path does not exist")
        self.directory = self.path if self.path.is_dir() else self.path.parent
        self.files = self._find_files()
        self._index: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        for f in self.files:
            _check_safetensors_file(f)
            for name in self._open(f).keys():
                if name in self._index:
                    raise CheckpointError(f"{f}: tensor {name!r} also appears in {self._index[name]}")
                self._index[name] = f
        self._check_index_file()

    def _find_files(self) -> list[Path]:
        if self.path.is_file():
            if self.path.suffix != ".safetensors":
                raise CheckpointError(f"{self.path}: only .safetensors files are loaded (never pickles)")
            return [self.path]
        idx = self.path / "model.safetensors.index.json"
        if idx.exists():
            try:
                weight_map = json.loads(idx.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{idx}: invalid index file: {e}") from None
            files = sorted({self.path / v for v in weight_map.values()})
            for f in files:
                if not f.exists():
                    raise CheckpointError(f"{idx}: shard {f.name} listed in the index does not exist")
            self._weight_map = weight_map
            return files
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            pickles = [p.name for p in self.path.iterdir() if p.suffix in _PICKLE_SUFFIXES]
            hint = f" (found {pickles}: pickled checkpoints are never loaded; convert them to safetensors)" if pickles else ""
            raise CheckpointError(f"{self.path}: no .safetensors files{hint}")
        return files

    def _check_index_file(self) -> None:
        wm = getattr(self, "_weight_map", None)
        if wm is None:
            return
        for name, fname in wm.items():
            actual = self._index.get(name)
            if actual is None:
                raise CheckpointError(f"index lists tensor {name!r} in {fname}, but no shard contains it")

    def _open(self, f: Path):
        h = self._handles.get(f)
        if h is None:
            try:
                h = safe_open(str(f), framework="pt", device="cpu")
            except Exception as e:
                raise CheckpointError(f"{f}: cannot open safetensors file: {e}") from None
            self._handles[f] = h
        return h

    def keys(self) -> list[str]:
        return list(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def file_of(self, name: str) -> Path:
        return self._index[name]

    def get(self, name: str) -> torch.Tensor:
        try:
            f = self._index[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name!r} is not in the checkpoint") from None
        try:
            return self._open(f).get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{f}: cannot read tensor {name!r}: {e}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self._index[name]).get_slice(name).get_shape())

    def nbytes(self, name: str) -> int:
        """Size of one stored tensor, read from the header (no data is loaded)."""
        sl = self._open(self._index[name]).get_slice(name)
        n = 1
        for d in sl.get_shape():
            n *= d
        return n * _DTYPE_BYTES.get(sl.get_dtype(), 1)

    def items_by_file(self) -> Iterator[tuple[Path, list[str]]]:
        by: dict[Path, list[str]] = {}
        for n, f in self._index.items():
            by.setdefault(f, []).append(n)
        for f in self.files:
            yield f, by.get(f, [])

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


class RenamedCheckpoint:
    """A checkpoint seen through a key mapping, for models whose module tree is named differently.

    ``mapping`` is a callable ``old -> new`` or an ordered mapping of regex patterns to
    replacements applied with ``re.sub`` in order (as Transformers' ``key_mapping``).  A
    replacement of ``None`` (or a callable returning None) drops the matching tensors: the
    stages of a multi-stage checkpoint that the model does not hold (an omni model's talker
    when loading its thinker).  Two checkpoint tensors that map to one name are an error.  :meth:`original` gives a renamed
    key's checkpoint name (per-layer config entries are written in the checkpoint's names).
    """

    def __init__(self, base: Checkpoint, mapping) -> None:
        import re

        self.base = base
        if callable(mapping):
            fn = mapping
        else:
            rules = [(re.compile(p), r) for p, r in dict(mapping).items()]

            def fn(name: str) -> str | None:
                for pat, rep in rules:
                    if rep is None:
                        if pat.search(name):
                            return None
                        continue
                    name = pat.sub(rep, name)
                return name

        self._to_new: dict[str, str] = {}
        self._to_old: dict[str, str] = {}
        self.dropped: list[str] = []
        for old in base.keys():
            new = fn(old)
            if new is None:
                self.dropped.append(old)
                continue
            if new in self._to_old:
                raise CheckpointError(f"key mapping sends both {self._to_old[new]!r} and {old!r} to {new!r}")
            self._to_new[old], self._to_old[new] = new, old
        self.path, self.directory, self.files = base.path, base.directory, base.files

    def original(self, name: str) -> str:
        return self._to_old.get(name, name)

    def keys(self) -> list[str]:
        return list(self._to_old)

    def __contains__(self, name: str) -> bool:
        return name in self._to_old

    def get(self, name: str) -> torch.Tensor:
        return self.base.get(self.original(name))

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(self.original(name))

    def nbytes(self, name: str) -> int:
        return self.base.nbytes(self.original(name))

    def items_by_file(self) -> Iterator[tuple[Path, list[str]]]:
        for f, names in self.base.items_by_file():
            yield f, [self._to_new[n] for n in names if n in self._to_new]

    @property
    def total_bytes(self) -> int:
        return self.base.total_bytes - sum(self.base.nbytes(n) for n in self.dropped)
