"""MoE expert kernels for skipbench: a pure-PyTorch reference and (on GPUs) Triton kernels."""
