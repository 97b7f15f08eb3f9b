"""make test's worker count (tests/conftest.py): the cores this process may use."""

import os

from conftest import usable_cores


def test_cgroup_quota_caps_the_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")  # one core's worth
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text("50000 100000\n")  # half a core still gets a worker
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{100000 * (affinity + 8)} 100000\n")  # a quota above the affinity
    assert usable_cores(cpu_max) == affinity


def test_no_quota_or_no_cgroup_file_is_the_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path / "cpu.max") == affinity
    assert usable_cores(tmp_path / "absent") == affinity
    (tmp_path / "garbled").write_text("not a quota")
    assert usable_cores(tmp_path / "garbled") == affinity
