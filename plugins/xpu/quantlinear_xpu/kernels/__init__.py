"""XPU kernels, one per file."""
