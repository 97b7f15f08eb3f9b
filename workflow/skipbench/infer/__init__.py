"""Stage 4, infer: completions under every skip rule, and what the router did.

`calibrate.py` fits the calibrated rules on prompts outside the evaluation set (through the
transformers oracle, `oracle.py`); `stage.py` generates every variant with one engine
(`engines.py`: vLLM with the skip hook of `vllm_plugin.py` and the kernel of
`vllm_kernel.py`, or transformers) and resumes from each variant's finished batches
(`batch_cache.py`), `traces.py` records the routing, `marks.py` names each
variant's generation for reruns, `lifetime.py` ties the engine's processes to the job.
"""

from skipbench import lazy_exports

API = {
    "run_infer": "stage", "write_infer_outputs": "stage", "generate_variants": "stage",
    "GENERATE_SCHEMA": "stage", "GENERATIONS_SCHEMA": "stage", "INFER_SUMMARY_SCHEMA": "stage",
    "run_calibration": "calibrate", "calibration_tasks": "calibrate", "variant_rule": "calibrate",
    "CALIBRATION_SCHEMA": "calibrate", "TRACE_SCHEMA": "traces", "write_marks": "marks", "open_engine": "engines",
}  # fmt: skip
__all__ = list(API)
__getattr__ = lazy_exports(__name__, API)
