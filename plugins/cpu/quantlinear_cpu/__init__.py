"""quantlinear CPU plugin: an fp32-compute weight-only GEMM of its own (``cpu.native_f32``, a
small C kernel built on first use), int4/int8 packed matmuls from PyTorch's CPU backend, a
general dequantize-and-matmul kernel, and the CPU benchmark runner (``bench``).  Registered
through the entry point ``quantlinear.plugins: cpu``."""

__version__ = "0.1.0"
