"""skipbench: throughput vs code-synthesis quality of expert skipping in MoE models."""

__version__ = "0.1.0"
