"""Speed, measured and predicted: the engine's tokens/s per variant (`throughput.py`), the
distinct experts each decode step loads (`traffic.py`), the roofline's predictions per
hardware profile (`roofline.py`, `specs.py`, `costmodel.py`, `cpu_moe.py`), tensor and
expert parallel splits (`parallel.py`) and whole-model serving against published
measurements (`serving.py`, `published.py`).
"""

from skipbench import lazy_exports

API = {
    "run_throughput": "throughput", "THROUGHPUT_SCHEMA": "throughput",
    "write_traffic": "traffic", "TRAFFIC_SCHEMA": "traffic",
    "run_roofline": "roofline", "PREDICTION_SCHEMA": "roofline", "VALIDATION_SCHEMA": "roofline",
    "ModelShape": "specs", "load_profile": "specs", "PUBLISHED_SCHEMA": "published",
}  # fmt: skip
__all__ = list(API)
__getattr__ = lazy_exports(__name__, API)
