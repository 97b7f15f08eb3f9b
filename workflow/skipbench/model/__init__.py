"""Stages 1-3, the model: the checkpoint (downloaded, or the embedded default trained here),
its FP8 block conversion and the expert kernels built and self-tested for it.

`checkpoint.py` (with `tinymodel.py`, the memorisation demo) writes the release, `fp8.py`
converts it, `layout.py` reads and writes its shards and index, `kernel_build.py` builds the
kernels; `adapters.py` reads each model family's routing from its config.json.
"""

from skipbench import lazy_exports

API = {
    "run_checkpoint": "checkpoint", "TRAINING_SCHEMA": "checkpoint",
    "convert_checkpoint": "fp8", "CONVERT_REPORT_SCHEMA": "fp8",
    "build_kernels": "kernel_build", "KERNEL_MANIFEST_SCHEMA": "kernel_build",
    "MANIFEST_SCHEMA": "layout",
    "Routing": "adapters", "routing_of": "adapters", "check_routing": "adapters",
}  # fmt: skip
__all__ = list(API)
__getattr__ = lazy_exports(__name__, API)
