"""quantlinear CUDA plugin: Triton weight-only int kernels (W2/W3/W4/W8 x fp16/bf16) and
PyTorch's tinygemm int4 kernel.  Registered through the entry point ``quantlinear.plugins: cuda``.

Importing this package imports neither Triton nor any CUDA library; kernels load them on
first use, so the plugin imports (and explains itself) where Triton or a GPU is missing.
"""

__version__ = "0.1.0"
