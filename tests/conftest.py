"""Session-wide test setup that must happen before any test module imports triton."""

import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported (vLLM imports it too): without a
# GPU, its interpreter runs the kernels of kernels/ on CPU tensors (tests/test_kernels_triton.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_shared_data: needs ../shared/data beside the checkout (tests/shared_data.py)")


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may run on: its CPU affinity, cut by a cgroup v2 CPU quota
    ("<quota> <period>" or "max <period>"), not the host's count a container may report."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


@pytest.hookimpl(optionalhook=True)  # pytest-xdist may be absent (the GPU check runs plain pytest)
def pytest_xdist_auto_num_workers(config):
    """`-n auto` (make test, which caps it at 4): one worker per usable core."""
    return usable_cores()


# Modules that take minutes (engine starts, the workflow run, training), longest first.
# `make test` spreads modules over workers (pytest-xdist, --dist loadscope): started first,
# they run beside the many short modules instead of alone at the end.
LONGEST_MODULES = ("test_workflow.py", "test_checkpoint.py", "test_infer.py", "test_plans.py",
                   "test_adapters.py")


def pytest_collection_modifyitems(config, items):
    from shared_data import HUMANEVAL_PLUS

    rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise
    if HUMANEVAL_PLUS.exists():
        return
    skip = pytest.mark.skip(reason=f"HumanEval+ data not at {HUMANEVAL_PLUS.resolve()}")
    for item in items:
        if "needs_shared_data" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """One line that a newcomer's clone runs fewer tests than CI, and why."""
    from shared_data import HUMANEVAL_PLUS

    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "needs_shared_data" in r.keywords]
    if skipped:
        terminalreporter.write_line(
            f"skipbench: {len(skipped)} tests skipped without ../shared/data/{HUMANEVAL_PLUS.name} "
            "(HumanEval+; CI has it, see README 'Data' for where to put a copy)", yellow=True)


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """The micro workflow, run once per session for every workflow test module
    (tests/workflow_run.py); results/micro of it. Copy it before changing it."""
    from workflow_run import finished_run

    return finished_run(tmp_path_factory.mktemp("workflow"))
