"""A small LiveCodeBench release written by the tests: stdin/stdout and call-based problems
in code_generation_lite's released format, private tests encoded as released
(base64(zlib(pickle(JSON string)))), and candidate solutions of known verdicts."""

from __future__ import annotations

import base64
import json
import pickle
import zlib
from pathlib import Path


def encode_private(tests: list[dict]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("ascii")


def _stdin(inp: str, out: str) -> dict:
    return {"input": inp, "output": out, "testtype": "stdin"}


def _call(args: list, out) -> dict:
    return {"input": "\n".join(json.dumps(a) for a in args), "output": json.dumps(out), "testtype": "functional"}


PROBLEMS = [
    dict(question_title="A+B", question_id="abc001_a", contest_id="abc001", platform="atcoder",
         contest_date="2024-09-01T00:00:00", difficulty="easy", starter_code="", metadata="{}",
         question_content="Read two integers A and B and print A+B.",
         public=[_stdin("1 2\n", "3\n")], private=[_stdin("10 -4\n", "6\n"), _stdin("0 0\n", "0")]),
    dict(question_title="Halves", question_id="abc002_b", contest_id="abc002", platform="atcoder",
         contest_date="2024-11-15T00:00:00", difficulty="medium", starter_code="", metadata="{}",
         question_content="Read N, then N integers; print each halved, one per line.",
         public=[_stdin("2\n3 4\n", "1.5\n2.0\n")], private=[_stdin("1\n5\n", "2.50\n")]),
    dict(question_title="Two Sum", question_id="3001", contest_id="weekly-contest-400", platform="leetcode",
         contest_date="2024-10-05T00:00:00", difficulty="easy",
         starter_code="class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
         metadata=json.dumps({"func_name": "twoSum"}),
         question_content="Return indices of the two numbers adding up to target.",
         public=[_call([[2, 7, 11, 15], 9], [0, 1])],
         private=[_call([[3, 2, 4], 6], [1, 2]), _call([[3, 3], 6], [0, 1])]),
    dict(question_title="Old", question_id="abc000_z", contest_id="abc000", platform="atcoder",
         contest_date="2023-05-01T00:00:00", difficulty="hard", starter_code="", metadata="{}",
         question_content="An old problem, before any window of interest.",
         public=[_stdin("\n", "0\n")], private=[]),
]

# (question_id, program, expected verdict) — verdicts as LiveCodeBench's evaluator gives them.
SOLUTIONS = [
    ("abc001_a", "a, b = map(int, input().split())\nprint(a + b)\n", True),
    ("abc001_a", "import sys\na, b = map(int, sys.stdin.readline().split())\nprint(a + b)\n", True),
    ("abc001_a", "import sys\ndef main():\n    a, b = map(int, sys.stdin.read().split())\n    print(a + b)\n\n"
                 "if __name__ == '__main__':\n    main()\n", True),
    # LiveCodeBench's quirk: its prelude's `from io import *` shadows the patched open(), so
    # open(0) reads the evaluating process's own (empty) stdin, and the program fails.
    ("abc001_a", "a, b = map(int, open(0).read().split())\nprint(a + b)\n", False),
    ("abc001_a", "a, b = map(int, input().split())\nprint(a + b)\nexit(0)\n", True),
    ("abc001_a", "a, b = map(int, input().split())\nprint(a - b)\n", False),
    ("abc001_a", "a, b = map(int, input().split())\nprint(a + b, '')\nprint()\n", True),  # trailing blanks stripped
    ("abc001_a", "a, b = map(int, input().split())\nprint(a + b)\nprint(0)\n", False),  # an extra line
    ("abc001_a", "raise ValueError('boom')\n", False),
    ("abc001_a", "import sys\nx = sys.stdin.buffer.read()\nprint(sum(map(int, x.split())))\n", False),  # no buffer in LCB
    ("abc002_b", "n = int(input())\nfor x in map(int, input().split()):\n    print(x / 2)\n", True),
    ("abc002_b", "n = int(input())\nfor x in map(int, input().split()):\n    print(x // 2)\n", False),
    ("abc002_b", "n = int(input())\nprint(*[x / 2 for x in map(int, input().split())])\n", False),  # one line
    ("3001", "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
             "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
             "                return [seen[target - x], i]\n            seen[x] = i\n", True),
    ("3001", "class Solution:\n    def twoSum(self, nums, target):\n"
             "        return next((i, j) for i in range(len(nums)) for j in range(i + 1, len(nums))"
             " if nums[i] + nums[j] == target)\n", True),  # a tuple counts as a list
    ("3001", "class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n", False),
    ("3001", "class Solution:\n    def twoSum(self, nums, target):\n        while True:\n            pass\n", False),
]


def write_release(folder: Path, name: str = "test.jsonl") -> Path:
    """The fixture problems as one release file; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w") as f:
        for p in PROBLEMS:
            row = {k: v for k, v in p.items() if k not in ("public", "private")}
            row["public_test_cases"] = json.dumps(p["public"])
            row["private_test_cases"] = encode_private(p["private"])
            f.write(json.dumps(row) + "\n")
    return path
