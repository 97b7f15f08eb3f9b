"""A small LiveCodeBench release written by the tests: stdin/stdout and call-based problems
in code_generation_lite's released format, private tests encoded as released
(base64(zlib(pickle(JSON string)))), and candidate solutions of known verdicts."""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
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


def write_release(folder: Path, name: str = "test.jsonl", problems: list[dict] = PROBLEMS) -> Path:
    """The fixture problems as one release file; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w") as f:
        for p in problems:
            row = {k: v for k, v in p.items() if k not in ("public", "private")}
            row["public_test_cases"] = json.dumps(p["public"])
            row["private_test_cases"] = encode_private(p["private"])
            f.write(json.dumps(row) + "\n")
    return path


# --- reading styles: stdin as LiveCodeBench's call_method patches it --------------------------

def _stdin_problem(qid: str, statement: str, tests: list[tuple[str, str]]) -> dict:
    return dict(question_title=qid, question_id=qid, contest_id=qid.rsplit("_", 1)[0], platform="atcoder",
                contest_date="2024-12-01T00:00:00", difficulty="easy", starter_code="", metadata="{}",
                question_content=statement, public=[_stdin(*tests[0])], private=[_stdin(*t) for t in tests[1:]])


BIG = "9" * 6000  # past Python's default 4300-digit int/str limit, under LiveCodeBench's 50000

STYLE_PROBLEMS = [
    _stdin_problem("abc101_a", "Read N, then N integers on one line; print their sum.",
                   [("3\n1 2 3\n", "6\n"), ("2\n10 -4", "6")]),  # the last input has no final newline
    _stdin_problem("abc101_b", "Read a string; print its length.", [("abc\n", "3\n"), ("hello\n", "5\n")]),
    _stdin_problem("abc101_c", "Read integers, one per line, to the end; print their sum.",
                   [("1\n2\n3\n", "6\n"), ("4\n5", "9\n")]),
    _stdin_problem("abc101_d", "Read N, then N lines (maybe empty); print each one's length.",
                   [("3\nab\n\nxyz\n", "2\n0\n3\n")]),
    _stdin_problem("abc101_f", "Read two words, one per line; print them on one line, separated by a space.",
                   [("ab\ncd\n", "ab cd\n"), ("x\ny\n", "x y\n")]),
    _stdin_problem("abc101_e", "Read A and B; print A+B.", [(f"{BIG} 1\n", "1" + "0" * 6000 + "\n"), ("1 2\n", "3\n")]),
    dict(question_title="Add", question_id="3101", contest_id="weekly-contest-401", platform="leetcode",
         contest_date="2024-12-01T00:00:00", difficulty="easy",
         starter_code="class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
         metadata=json.dumps({"func_name": "add"}), question_content="Return a + b.",
         public=[{"input": f"{BIG}\n1", "output": "1" + "0" * 6000, "testtype": "functional"}],
         private=[_call([2, 3], 5)]),
]

# (question_id, program, verdict as LiveCodeBench's evaluator gives it), written as people write them.
STYLE_SOLUTIONS = [
    ("abc101_a", "import sys\nn = int(sys.stdin.readline())\nprint(sum(map(int, sys.stdin.read().split())))\n", True),
    ("abc101_a", "import sys\ndata = sys.stdin.read().split()\nprint(sum(map(int, data[1:])))\n", True),
    ("abc101_a", "import sys\ninput = lambda: sys.stdin.readline().rstrip()\nn = int(input())\n"
                 "print(sum(map(int, input().split())))\n", True),
    # `from sys import stdin` is bound at compile time to the original stdin, whose
    # readline/readlines/read LiveCodeBench patches (no newline, "\n"-split, the whole input).
    ("abc101_a", "from sys import stdin\nn = int(stdin.readline())\nprint(sum(map(int, stdin.readline().split())))\n", True),
    ("abc101_a", "from sys import stdin\nprint(sum(map(int, stdin.read().split()[1:])))\n", True),
    ("abc101_a", "from sys import stdin\nprint(sum(int(x) for line in stdin for x in line.split()[1:]))\n", False),
    ("abc101_a", "print(sum(map(int, open(0).read().split()[1:])))\n", False),  # the prelude's real open()
    ("abc101_a", "import builtins\nprint(sum(map(int, builtins.open(0).read().split()[1:])))\n", True),  # mock_open
    ("abc101_a", "import sys\nn = int(sys.stdin.readline())\nprint(sum(map(int, sys.stdin.read().split())) + n)\n", False),
    ("abc101_b", "import sys\ninput = sys.stdin.readline\ns = input()[:-1]\nprint(len(s))\n", True),
    ("abc101_b", "import sys\ns = sys.stdin.readline()\nprint(len(s))\n", False),  # the newline counts
    ("abc101_b", "import sys\ns = sys.stdin.readline().strip()\nprint(len(s))\n", True),
    ("abc101_b", "from sys import stdin\ns = stdin.readline()\nprint(len(s))\n", True),  # LCB's patched readline
    ("abc101_c", "import sys\nprint(sum(int(line) for line in sys.stdin.readlines()))\n", True),
    ("abc101_c", "import sys\nprint(sum(int(line) for line in sys.stdin))\n", True),
    ("abc101_c", "total = 0\nwhile True:\n    try:\n        total += int(input())\n    except EOFError:\n"
                 "        break\nprint(total)\n", True),
    ("abc101_c", "import sys\ntotal = 0\nwhile True:\n    line = sys.stdin.readline()\n    if not line:\n"
                 "        break\n    total += int(line)\nprint(total)\n", True),
    ("abc101_c", "from sys import stdin\nprint(sum(int(line) for line in stdin.readlines()))\n", False),  # a last ""
    ("abc101_c", "import sys\nprint(sum(int(line) for line in sys.stdin.readlines()[:-1]))\n", False),
    ("abc101_c", "import sys\nprint(sum(int(b) for b in sys.stdin.buffer.read().split()))\n", False),  # a StringIO
    ("abc101_d", "n = int(input())\nfor _ in range(n):\n    print(len(input()))\n", True),
    ("abc101_d", "import sys\nlines = sys.stdin.read().split('\\n')\nfor s in lines[1:1 + int(lines[0])]:\n"
                 "    print(len(s))\n", True),
    ("abc101_d", "import sys\nn = int(input())\nfor s in sys.stdin.read().split():\n    print(len(s))\n", False),
    ("abc101_f", "import sys\na = sys.stdin.readline()\nb = sys.stdin.readline()\nprint(a, b)\n", False),  # newlines
    ("abc101_f", "import sys\na = sys.stdin.readline().strip()\nb = sys.stdin.readline().strip()\nprint(a, b)\n", True),
    ("abc101_f", "from sys import stdin\na = stdin.readline()\nb = stdin.readline()\nprint(a, b)\n", True),
    ("abc101_f", "a = input()\nb = input()\nprint(a + ' ' + b)\n", True),
    ("abc101_e", "a, b = map(int, input().split())\nprint(a + b)\n", True),
    ("abc101_e", "a, b = map(int, input().split())\nprint(a - b)\n", False),
    ("3101", "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b\n", True),
    ("3101", "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return int(str(a)) + b\n", True),
    ("3101", "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a * b\n", False),
]


def lcb_verdicts(cases: list[tuple[dict, str]]) -> list[bool]:
    """LiveCodeBench's own verdicts ((row as in PROBLEMS, program) each) from its evaluator's
    entry point, check_correctness (compute_code_generation_metrics.py: its digit limit, a
    process per sample whose stdin is /dev/null, run_test inside), in a process of its own."""
    samples = [({"input_output": json.dumps({"inputs": [t["input"] for t in p["public"] + p["private"]],
                                             "outputs": [t["output"] for t in p["public"] + p["private"]],
                                             "fn_name": json.loads(p["metadata"]).get("func_name")})}, code)
               for p, code in cases]  # fmt: skip
    script = (
        "import json, sys\n"
        "from livecodebench.evaluation.compute_code_generation_metrics import check_correctness\n"
        "out = [check_correctness(s, code, timeout=6, debug=False)[0] for s, code in json.load(sys.stdin)]\n"
        "print('VERDICTS ' + json.dumps([all(r is True for r in res) for res in out]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(samples), capture_output=True, text=True,
                          timeout=60 + 30 * len(cases))  # fmt: skip
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("VERDICTS ")]
    assert line, done.stderr[-2000:]
    return json.loads(line[-1][len("VERDICTS "):])
