"""quantlinear CPU plugin: int4/int8 packed matmuls from PyTorch's CPU backend and a general
dequantize-and-matmul kernel.  Registered through the entry point ``quantlinear.plugins: cpu``."""

__version__ = "0.1.0"
