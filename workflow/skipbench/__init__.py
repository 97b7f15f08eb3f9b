"""skipbench: throughput vs code-synthesis quality of expert skipping in MoE models.

The folders are the pipeline (README "Layout"): model/ (stages 1-3: checkpoint, FP8
conversion, kernels) -> skip/ (the skip rules) -> benchmarks/ (tasks, prompts, samples
files) -> infer/ (stage 4: calibration, generation, engines, traces) -> execute/ (stage 5:
the sandbox) -> score/ (stage 6) -> speed/ (throughput measured and predicted) -> report/
(stage 7). A stage imports only stages before it. The modules at this level are plumbing:
config checks and types, I/O, logs, progress, provenance, the CLI.
"""

import importlib

__version__ = "0.1.0"


def lazy_exports(package: str, api: dict[str, str]):
    """A stage package's module `__getattr__` (PEP 562): `from skipbench.infer import
    run_infer` imports infer/stage.py only then. Importing one module of a stage (a check
    at planning, the sandbox's side) thus never imports the whole stage (torch, vLLM), and a
    rule's code hash (provenance.py) covers just the modules its script imports."""

    def __getattr__(name: str):
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{api[name]}"), name)

    return __getattr__
