"""Stage 6, score: pass@1 with intervals and paired tests against dense (`stage.py`,
`stats.py`), scores per subset (`subsets.py`), fidelity to the dense model's next-token
distribution (`fidelity.py`) and EvalPlus's own results format (`evalplus_results.py`).
"""

from skipbench import lazy_exports

API = {
    "run_score": "stage", "VariantInputs": "stage", "SCORES_SCHEMA": "stage",
    "score_subsets": "subsets", "SUBSET_SCORES_SCHEMA": "subsets",
    "run_fidelity": "fidelity", "FIDELITY_SCHEMA": "fidelity", "write_eval_results": "evalplus_results",
}  # fmt: skip
__all__ = list(API)
__getattr__ = lazy_exports(__name__, API)
