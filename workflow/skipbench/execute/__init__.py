"""Stage 5, execute: sandboxed execution of samples against every test split.

The stage itself is `stage.py`; the sandbox (`sandbox.py`, its profile, seccomp filter,
memory cgroup and uid slots), the trusted side of its conversation (`harness.py`) and the
ground truth it judges against (`groundtruth.py`, `compare.py`) are its parts. The driver
that runs inside the sandbox (skipbench.sandbox_driver) and LiveCodeBench's runtime
(skipbench.lcb_runtime) stay at top level: skipbench.benchmarks.livecodebench, which the prompt stage
imports too, builds LiveCodeBench's sandbox jobs from them.
"""

from skipbench.execute.stage import EXECUTE_SCHEMA, execute_one, read_samples, run_execute, solution_of

__all__ = ["EXECUTE_SCHEMA", "execute_one", "read_samples", "run_execute", "solution_of"]
