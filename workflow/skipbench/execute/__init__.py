"""Stage 5, execute: sandboxed execution of samples against every test split.

The stage itself is `stage.py`; the sandbox (`sandbox.py`, its profile, seccomp filter,
memory cgroup and uid slots), the trusted side of its conversation (`harness.py`) and the
ground truth it judges against (`groundtruth.py`, `compare.py`) are its parts. Two files run
inside the sandbox and are read as text: the driver (`sandbox_driver.py`, which also holds
the value codec both sides share) and LiveCodeBench's runtime (`lcb_runtime.py`), which
`lcb_job.py` wraps around a LiveCodeBench candidate.
"""

from skipbench.execute.stage import EXECUTE_SCHEMA, execute_one, read_samples, run_execute, solution_of

__all__ = ["EXECUTE_SCHEMA", "execute_one", "read_samples", "run_execute", "solution_of"]
