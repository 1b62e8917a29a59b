"""Reading llama.cpp ``.gguf`` files into quantlinear models (AutoRound's ``gguf:*`` exports).

``quantlinear.load_quantized(model, "model-Q4_K_M.gguf")`` goes through :class:`GGUFCheckpoint`,
an adapter with the reading interface of a safetensors checkpoint, so selection, progress,
reports and errors are those of every other checkpoint.  Modules:

* :mod:`.reader`: the file, memory-mapped by ``gguf.GGUFReader`` and checked (corrupt,
  truncated, unknown types -> :class:`~quantlinear.errors.CheckpointError` naming file and tensor);
* :mod:`.names`: llama.cpp tensor names -> Transformers names, supported architectures, the
  Q/K row permutation of the llama converter;
* :mod:`.checkpoint`: the adapter and :class:`GGUFQuantConfig` (per-layer types);
* :mod:`.embedding`: :class:`GGUFEmbedding`, the token embedding kept in its blocks.

Importing this package does not import ``gguf``; opening a file does.
"""

from .checkpoint import GGUFCheckpoint, GGUFQuantConfig, gguf_path
from .embedding import GGUFEmbedding
from .names import ARCHITECTURES

__all__ = ["ARCHITECTURES", "GGUFCheckpoint", "GGUFEmbedding", "GGUFQuantConfig", "gguf_path"]
