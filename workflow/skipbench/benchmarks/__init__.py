"""The benchmarks: tasks in (`tasks.py`: HumanEval(+), MBPP(+), LiveCodeBench via
`livecodebench.py`), prompts for them (`prompts.py`), samples files read and checked
(`samples.py`), and calibration texts kept apart from the evaluated ones (`disjoint.py`).
"""

from skipbench import lazy_exports

API = {
    "Task": "tasks", "Benchmark": "tasks", "load_benchmark": "tasks", "load_tasks": "tasks",
    "memorised_tasks": "tasks", "prepare_generation": "prompts", "read_samples": "samples",
    "check_samples": "samples", "LcbProblem": "livecodebench",
}  # fmt: skip
__all__ = list(API)
__getattr__ = lazy_exports(__name__, API)
