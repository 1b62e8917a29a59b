"""quantlinear ROCm plugin: the shared Triton weight-only int kernels with AMD launch
configurations (CDNA2/3/4, RDNA3/4), and PyTorch's tinygemm int4 kernel on CDNA2+.
Registered through the entry point ``quantlinear.plugins: rocm``.

Importing this package imports neither Triton nor any ROCm library.  Nothing in it has run on
AMD hardware: see README.md ("Verification status").
"""

__version__ = "0.1.0"
