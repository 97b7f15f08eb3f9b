"""Runs INSIDE the sandbox: a LiveCodeBench candidate program as a function the driver calls.

Its source is the head of every LiveCodeBench program sent to the sandbox (see
skipbench.execute.lcb_job.sandbox_program), followed by `_SB_CODE = <candidate source>` and
`_SB_FN_NAME = <method name or None>`. It follows LiveCodeBench's evaluator
(lcb_runner/evaluation/testing_util.py; as shipped in nvidia-livecodebench 26.3):

- stdin problems (grade_stdio, testing_util.py:292-407): a trailing `if __name__ ==
  '__main__':` block is unwrapped (clean_if_name, :91-104), the imports hoisted and every
  other statement wrapped in `wrapped_function()` after LCB's import prelude (make_function,
  :107-136), compiled before any test. Each test calls it as call_method (:139-163) does
  with its stacked `@patch`es, entered bottom-up: `read`, `readlines` and `readline` of the
  ORIGINAL stdin object answer from the test input (the whole text, its "\n"-split lines,
  the next of those lines without newline), then `sys.stdin` becomes a plain
  `StringIO(input)` and `builtins.open` a `mock_open(read_data=input)`. So `sys.stdin`
  behaves as a file, while names bound at compile time (`from sys import stdin`, the
  prelude's `from sys import *`, its `open` from `from builtins import *`) keep the
  original objects. stdout is captured (Capturing, :77-88, whose close() takes one
  argument); SystemExit ends the program normally.
- call-based problems (grade_call_based, :211-289): the prelude, then the program; a
  `class Solution` is instantiated (compile_code, :174-193); the result's top-level tuple
  becomes a list.
- ints convert to and from decimal text up to 50000 digits, as LCB's evaluator sets
  (compute_code_generation_metrics.py:26, inherited by its test process).
Only the captured text or the return value leaves: the trusted side compares.
Compiled once per process, lazily, so compile time counts against the first test.
"""

import ast as _sb_ast
import builtins as _sb_builtins
import io as _sb_io
import sys as _sb_sys

# LiveCodeBench's import prelude (testing_util.py:45), the names its programs may rely on.
_SB_PRELUDE = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\n"
    "from statistics import *\nfrom itertools import *\nfrom functools import *\nfrom operator import *\n"
    "from io import *\nfrom sys import *\nfrom json import *\nfrom builtins import *\nfrom typing import *\n"
    "import string\nimport re\nimport datetime\nimport collections\nimport heapq\nimport bisect\nimport copy\n"
    "import math\nimport random\nimport statistics\nimport itertools\nimport functools\nimport operator\n"
    "import io\nimport sys\nimport json\nsys.setrecursionlimit(50000)\n"
)
_SB_COMPILED = []
_sb_sys.set_int_max_str_digits(50000)  # compute_code_generation_metrics.py:26


def _sb_unwrap_main(code):
    try:
        tree = _sb_ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, _sb_ast.If) and _sb_ast.unparse(last.test).strip() == "__name__ == '__main__'":
            code = _sb_ast.unparse(tree.body[:-1]) + "\n" + _sb_ast.unparse(last.body)
    except Exception:  # noqa: BLE001 - as LCB: the code stays as it was
        pass
    return code


def _sb_as_function(code):
    try:
        tree = _sb_ast.parse(code)
        imports = [s for s in tree.body if isinstance(s, (_sb_ast.Import, _sb_ast.ImportFrom))]
        rest = [s for s in tree.body if not isinstance(s, (_sb_ast.Import, _sb_ast.ImportFrom))]
        fn = _sb_ast.FunctionDef(name="wrapped_function", args=_sb_ast.arguments(
            posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]), body=rest,
            decorator_list=[], lineno=-1)  # fmt: skip
        return _SB_PRELUDE + "\n" + _sb_ast.unparse(imports) + "\n" + _sb_ast.unparse(fn)
    except Exception:  # noqa: BLE001 - as LCB: the code stays as it was
        return code


def _sb_compiled():
    if not _SB_COMPILED:
        namespace = {"__name__": "tmp_sol", "__builtins__": _sb_builtins}
        if _SB_FN_NAME is None:  # noqa: F821 - defined after this source
            exec(_sb_as_function(_sb_unwrap_main(_SB_CODE)), namespace)  # noqa: F821
            _SB_COMPILED.append(namespace["wrapped_function"])
        else:
            exec(_SB_PRELUDE + "\n\n" + _SB_CODE, namespace)  # noqa: F821
            owner = namespace["Solution"]() if "class Solution" in _SB_CODE else None  # noqa: F821
            _SB_COMPILED.append(getattr(owner, _SB_FN_NAME) if owner is not None else namespace[_SB_FN_NAME])  # noqa: F821
    return _SB_COMPILED[0]


def _sb_open_for(text):
    """builtins.open as mock_open(read_data=text) (one per test, as the patch makes one per
    call); unittest.mock is imported on first use only: ~60 ms a sandbox otherwise."""
    made = []

    def open_(*args, **kwargs):
        if not made:
            from unittest.mock import mock_open

            made.append(mock_open(read_data=text))
        return made[0](*args, **kwargs)

    return open_


def __lcb_stdio__(stdin_text):
    """Run the program on one test's input; return what it printed."""
    program = _sb_compiled()
    lines = iter(stdin_text.split("\n"))
    original = _sb_sys.stdin  # the process's own (/dev/null), as in LCB's test process
    patched = {"read": lambda *a: stdin_text, "readlines": lambda *a: stdin_text.split("\n"),
               "readline": lambda *a: next(lines)}  # fmt: skip
    shadowed = {name: vars(original)[name] for name in patched if name in vars(original)}
    out = _sb_io.StringIO()
    out.close = lambda x: 1  # Capturing's: a close() call without argument raises
    saved = _sb_sys.stdout, _sb_builtins.open
    for name, fn in patched.items():
        setattr(original, name, fn)
    _sb_sys.stdin, _sb_sys.stdout = _sb_io.StringIO(stdin_text), out
    _sb_builtins.open = _sb_open_for(stdin_text)
    try:
        program()
    except SystemExit:
        pass
    finally:
        _sb_sys.stdin, (_sb_sys.stdout, _sb_builtins.open) = original, saved
        for name in patched:
            if name in shadowed:
                setattr(original, name, shadowed[name])
            else:
                delattr(original, name)
    return out.getvalue()


def __lcb_call__(*args):
    """Call the problem's method on one test's arguments."""
    result = _sb_compiled()(*args)
    return list(result) if isinstance(result, tuple) else result
