"""LiveCodeBench code generation: its released problems, its prompts, code extraction and
comparison rules, following its evaluator (nvidia-livecodebench 26.3, which ships
LiveCodeBench's lcb_runner as `livecodebench`; files cited below are in it).

Data: the released format of `livecodebench/code_generation_lite` (one JSON object per
line: question_title, question_content, platform, question_id, contest_id, contest_date,
starter_code, difficulty, public_test_cases, private_test_cases, metadata), from a local
file or folder (`path`), or downloaded from the Hugging Face hub at a `revision` when one is
reachable. Private tests are JSON, or JSON pickled, zlib-compressed and base64-encoded
(benchmarks/code_generation.py:83-91): they are unpickled here by an unpickler that admits
no class or function at all (the release pickles a plain string), with a size cap.

Selection as LiveCodeBench's: a contest-date window (`released_after`, `released_before`,
inclusive dates, so only problems after a model's training cutoff count:
benchmarks/utils.py filter_dataset_by_date) and `difficulty` (easy | medium | hard).
Every test (public + private) of a problem is one split, "base": a sample passes when all
pass (benchmarks/code_generation.py get_evaluation_sample).
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import zlib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from skipbench.io import JsonlError, jsonl_objects

DIFFICULTIES = ("easy", "medium", "hard")
HUB_REPO = "livecodebench/code_generation_lite"
TIMEOUT_S = 6.0  # lcb_runner/runner/parser.py --evaluation_timeout: per test (signal.alarm)
MAX_PRIVATE_BYTES = 1 << 30  # one problem's decompressed private tests
INT_MAX_STR_DIGITS = 50000  # compute_code_generation_metrics.py:26 sys.set_int_max_str_digits(50000)


@dataclass(frozen=True)
class LcbProblem:
    title: str
    statement: str  # question_content
    platform: str  # leetcode | atcoder | codeforces
    contest_date: str  # ISO date
    difficulty: str  # easy | medium | hard
    starter_code: str  # "" for stdin problems
    fn_name: str | None  # call-based problems: the method to call; None: stdin/stdout
    tests: tuple[tuple[str, str], ...]  # (input, output) texts, public then private


def hub_files(release: str) -> list[str]:
    """The files of a release tag: release_vN holds test.jsonl .. testN.jsonl (cumulative)."""
    if not release.startswith("release_v") or not release[len("release_v"):].isdigit():
        raise ValueError(f"livecodebench release {release!r}: expected release_v<N>")
    n = int(release[len("release_v"):])
    return ["test.jsonl"] + [f"test{i}.jsonl" for i in range(2, n + 1)]


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused: {module}.{name} (only plain data is accepted)")


def decode_private(text: str) -> list[dict]:
    """private_test_cases: JSON, or base64(zlib(pickle(JSON string))) as released."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    raw = base64.b64decode(text.encode("ascii"), validate=True)
    inflater = zlib.decompressobj()
    data = inflater.decompress(raw, MAX_PRIVATE_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"private tests exceed {MAX_PRIVATE_BYTES} bytes decompressed")
    value = _NoGlobals(io.BytesIO(data)).load()
    if not isinstance(value, str):
        raise ValueError(f"private tests unpickle to {type(value).__name__}, not a JSON string")
    return json.loads(value)


def _tests(cases: Any) -> list[tuple[str, str]]:
    if not isinstance(cases, list):
        raise ValueError("test cases are not a list")
    out = []
    for c in cases:
        if not (isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)):
            raise ValueError("a test case lacks string input/output")
        out.append((c["input"], c["output"]))
    return out


def parse_problem(row: dict) -> tuple[str, LcbProblem]:
    """(question_id, problem) of one released row; ValueError naming what is wrong."""
    meta = row.get("metadata") or "{}"
    meta = json.loads(meta) if isinstance(meta, str) else meta
    fn_name = meta.get("func_name") if isinstance(meta, dict) else None
    public = _tests(json.loads(row["public_test_cases"]))
    private = _tests(decode_private(row["private_test_cases"]))
    difficulty = str(row["difficulty"]).lower()
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty {row['difficulty']!r} is not one of {list(DIFFICULTIES)}")
    contest = date.fromisoformat(str(row["contest_date"])[:10]).isoformat()
    if fn_name is not None and not str(fn_name).isidentifier():
        raise ValueError(f"func_name {fn_name!r} is not an identifier")
    return str(row["question_id"]), LcbProblem(
        title=str(row.get("question_title", "")), statement=str(row["question_content"]),
        platform=str(row.get("platform", "")), contest_date=contest, difficulty=difficulty,
        starter_code=str(row.get("starter_code") or ""), fn_name=fn_name, tests=tuple(public + private))  # fmt: skip


def read_rows(paths: list[Path]) -> list[tuple[str, dict]]:
    """(where, row) for every line of the files: where = file:line for messages."""
    rows = []
    for path in paths:
        for where, row in jsonl_objects(path):
            if isinstance(row, JsonlError):
                raise row
            rows.append((where, row))
    return rows


def _date(cfg: dict, key: str) -> str | None:
    if not cfg.get(key):
        return None
    try:
        return date.fromisoformat(str(cfg[key])).isoformat()
    except ValueError:
        raise ValueError(f"{key}: {cfg[key]!r} is not a date (YYYY-MM-DD)") from None


def select(problems: list[tuple[str, LcbProblem]], cfg: dict) -> list[tuple[str, LcbProblem]]:
    """The config's window (released_after/released_before, inclusive) and difficulty filter."""
    after, before = _date(cfg, "released_after"), _date(cfg, "released_before")
    wanted = set(cfg.get("difficulty") or DIFFICULTIES)
    return [(qid, p) for qid, p in problems
            if (after is None or p.contest_date >= after) and (before is None or p.contest_date <= before)
            and p.difficulty in wanted]  # fmt: skip


# --- prompts (lcb_runner/prompts/code_generation.py) ---------------------------------------

# PromptConstants (prompts/code_generation.py:32-47)
SYSTEM_MESSAGE = ("You are an expert Python programmer. You will be given a question (problem specification) "
                  "and will generate a correct Python program that matches the specification and passes all tests.")  # fmt: skip
WITH_STARTER = ("You will use the following starter code to write the solution to the problem and enclose "
                "your code within delimiters.")  # fmt: skip
WITHOUT_STARTER = ("Read the inputs from stdin solve the problem and write the answer to stdout (do not directly "
                   "test on the sample inputs). Enclose your code within delimiters as follows. Ensure that when "
                   "the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.")  # fmt: skip


def question_text(p: LcbProblem) -> str:
    """get_generic_question_template_answer (prompts/code_generation.py:50-61)."""
    text = f"### Question:\n{p.statement}\n\n"
    if p.starter_code:
        text += f"### Format: {WITH_STARTER}\n```python\n{p.starter_code}\n```\n\n"
    else:
        text += f"### Format: {WITHOUT_STARTER}\n```python\n# YOUR CODE HERE\n```\n\n"
    return text + "### Answer: (use the provided format with backticks)\n\n"


def lcb_prompt(task, prompter) -> str:
    """chat: LiveCodeBench's chat messages for DeepSeek-V3 and OpenAI-style chat models
    (format_prompt_generation, LMStyle.DeepSeekAPI, prompts/code_generation.py:203-219) in the
    model's chat template. completion (base models): the same question text, the answer's
    code fence opened (skipbench's; LiveCodeBench's base-model prompt needs few-shot files
    its package does not ship)."""
    text = question_text(task.lcb)
    if prompter.protocol == "chat":
        return prompter.chat_template([{"role": "system", "content": SYSTEM_MESSAGE},
                                       {"role": "user", "content": text}])  # fmt: skip
    return text + "```python\n"


def lcb_stop(prompter) -> list[str]:
    """chat: LiveCodeBench's default stop "###" (runner/parser.py --stop); completion: the
    answer's closing fence."""
    return ["###"] if prompter.protocol == "chat" else ["\n```"]


def extract_code(completion: str, protocol: str) -> str:
    """extract_code (utils/extraction_utils.py:23-40): chat models (DeepSeekAPI style): the
    lines between the last two ``` lines, "" if there are fewer; completion: the text."""
    if protocol != "chat":
        return completion.strip()
    lines = completion.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    if len(fences) < 2:
        return ""
    return "\n".join(lines[fences[-2] + 1 : fences[-1]])


# --- execution ------------------------------------------------------------------------------


def _lcb_int(digits: str) -> int:
    """A JSON integer under LiveCodeBench's digit limit, not this process's (4300 by
    default); Decimal's conversion is exact and has no limit of its own."""
    if len(digits.lstrip("-")) > INT_MAX_STR_DIGITS:
        raise ValueError(f"integer of {len(digits)} digits exceeds the limit ({INT_MAX_STR_DIGITS} digits)")
    return int(Decimal(digits))


def _json(text: str) -> Any:
    return json.loads(text, parse_int=_lcb_int)


def call_arguments(text: str) -> list:
    """A call-based test input: one JSON value per line (grade_call_based, testing_util.py:227-229)."""
    return [_json(line) for line in text.split("\n")]


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]  # get_stripped_lines, testing_util.py:204-208


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(x) for x in line.split()]  # convert_line_to_decimals, testing_util.py:196-201
    except Exception:  # noqa: BLE001 - not numbers: no match
        return None


def stdio_match(output: Any, expected: str) -> bool:
    """grade_stdio's rule (testing_util.py:352-405): as many stripped lines, each equal as
    text or as a list of Decimals. Never raises (the output is untrusted)."""
    try:
        if not isinstance(output, str):
            return False
        got, want = _stripped_lines(output), _stripped_lines(expected)
        if len(got) != len(want):
            return False
        for a, b in zip(got, want):
            if a == b:
                continue
            da, db = _decimals(a), _decimals(b)
            if da is None or db is None or da != db:
                return False
        return True
    except Exception:  # noqa: BLE001 - e.g. a signalling NaN compared: LCB's run_test reports an error
        return False


def call_match(output: Any, expected: str) -> bool:
    """grade_call_based's rule (testing_util.py:244-250): tuples as lists, then ==.
    Never raises (the output is untrusted; it is plain data decoded on this side)."""
    try:
        if isinstance(output, tuple):
            output = list(output)
        return bool(output == _json(expected))
    except Exception:  # noqa: BLE001 - deep or odd values: no match
        return False
