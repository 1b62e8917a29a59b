"""NPU kernels, one per file."""
