"""Test data that may not ship with the project: HumanEval+ lies in `../shared/data/` beside
the checkout (CI has it; a fresh clone elsewhere does not, and its licence note asks us not to
copy it into the repository). Tests that need it carry the `needs_shared_data` marker: without
the file they skip, and conftest.py says so in one line of pytest's summary."""

from pathlib import Path

import pytest

HUMANEVAL_PLUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "HumanEvalPlus-v0.1.10.jsonl.gz"
needs_shared_data = pytest.mark.needs_shared_data
