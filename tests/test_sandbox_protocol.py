"""The trusted side of the sandbox protocol, without a sandbox: scripted relay messages
(what a candidate that reached the result channel could send) and raw bytes into the
reader. Every deviation is a protocol_error, nothing raises past the harness, and a split
passes only when every test was judged here."""

import json
import os
import selectors
import threading
import time

import pytest

from skipbench.execute import harness
from skipbench.execute.harness import Outcome, _Conversation
from skipbench.execute.sandbox import MAX_HEADER, ProtocolError, SandboxRun, Usage, make_profile

PROFILE = make_profile({"sandbox": "none", "importable": []})


class Scripted:
    """Stands in for SandboxRun: hands out (message, payload) pairs, then end of output."""

    profile = PROFILE

    def __init__(self, script):
        self.script = list(script)

    def next_message(self, deadline, header_slack=0.0):
        if not self.script:
            return None
        msg = self.script.pop(0)
        if isinstance(msg, tuple):
            return msg
        return (msg, json.dumps(msg.pop("_value")).encode() if "_value" in msg else None)


def converse(script, n=2, mode="run", judge=lambda i, v: v is True):
    job = {"inputs": [[]] * n, "time_limits": [1.0] * n, "mode": mode}
    res = Outcome(status="pass", tests_total=n if mode == "run" else 1)
    try:
        _Conversation(Scripted(script), job, 5.0, judge, res).converse()
    except ProtocolError as e:
        harness._fail(res, "protocol_error", str(e), False)
    if res.status == "pass" and not res.tests_passed == res.tests_run == res.tests_total:
        res.status = "protocol_error"
    return res


def value(i, v=True):
    return [{"i": i, "returned": True, "t": 0.0, "n": 0, "_value": v}]


HONEST = [{"ready": True}, {"loaded": True}, *value(0), *value(1), {"done": True, "peak_kb": 1}]


def test_honest_conversation_passes():
    assert converse(HONEST).status == "pass"


@pytest.mark.parametrize("script", [
    # captured in run mode: main counted these as finished tests without judging them
    [{"ready": True}, {"loaded": True}, ({"captured": True, "n": 2}, b"[]"), ({"captured": True, "n": 2}, b"[]")],
    [{"ready": True}, {"ready": True}, {"loaded": True}, *value(0), *value(1)],  # ready twice
    [{"ready": True}, {"loaded": True}, {"loaded": True}, *value(0), *value(1)],  # loaded twice
    [{"loaded": True}, *value(0), *value(1)],  # no ready
    [{"ready": True}, *value(0), *value(1)],  # no loaded
    [{"ready": True}, {"loaded": True}, {"done": True, "peak_kb": 1}],  # done before the tests
    [{"ready": True}, {"loaded": True}, *value(1), *value(0)],  # out of order
    [{"ready": True}, {"loaded": True}, *value(0), *value(0)],  # one test twice
    [{"ready": True}, {"loaded": True}, {"i": 0, "n": 0, "_value": True}, *value(1)],  # value without returned
    [{"ready": True}, {"loaded": True}, {"i": 0, "returned": True, "t": 0.0}, *value(1)],  # returned without value
    [{"ready": True}, {"loaded": True}, {"i": 0, "returned": True, "t": 0.0, "n": 0, "_value": True, "out": True},
     *value(1)],  # extra key
    [{"ready": True}, {"loaded": True}, *value(0), *value(1), {"captured": True, "n": 0}],  # after the tests
    [{"ready": True}, {"loaded": True}, {"i": True, "returned": True, "t": 0.0}, *value(1)],  # bool index
    [{"ready": True}, {"loaded": True}, *value(0), ({"i": 1, "returned": True, "t": 0.0, "n": 3}, b"[[[")],
], ids=["captured_in_run_mode", "ready_twice", "loaded_twice", "no_ready", "no_loaded", "early_done",
        "out_of_order", "repeated_test", "value_without_returned", "returned_without_value", "extra_key",
        "captured_after_tests",
        "bool_index", "bad_payload"])  # fmt: skip
def test_forged_conversations_never_pass(script):
    res = converse(script)
    assert res.status == "protocol_error"


def test_capture_mode_accepts_captured_only_there():
    script = [{"ready": True}, {"loaded": True}, ({"captured": True, "n": 4}, b"[[]]"), {"done": True, "peak_kb": 1}]
    assert converse(script, mode="capture", judge=None).status == "pass"
    assert converse([{"ready": True}, {"loaded": True}, *value(0)], mode="capture", judge=None).status == "protocol_error"


def reader(chunks: list[bytes], hold_s: float = 0.0) -> SandboxRun:
    """A SandboxRun reading `chunks` from a pipe (no process) that stays open `hold_s` after them."""
    run = SandboxRun(PROFILE, {}, None, 1)
    r, w = os.pipe()

    def feed():
        try:
            for c in chunks:
                os.write(w, c)
            time.sleep(hold_s)
        except OSError:
            pass  # the reader gave up and closed its end
        os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    run._sel = selectors.DefaultSelector()
    run._sel.register(os.fdopen(r, "rb", buffering=0), selectors.EVENT_READ, "out")
    run._t0, run.stderr = time.perf_counter(), b""
    return run


@pytest.mark.parametrize("raw", [
    b"[" * 200000 + b"]" * 200000 + b"\n",  # RecursionError in json.loads
    b'{"done": true, "peak_kb": 1' + b"0" * 5000 + b"}\n",  # int past the digit limit
    b"\xff\xfe\n",  # not UTF-8
    b'{"ready": true}',  # torn: no newline before the end
    b'{"i": 0, "n": -1}\n',
    b'{"i": 0, "n": 99999999999999}\n',
    b'{"i": 0, "n": 10}\nshort',
    b"x" * (MAX_HEADER + 10),  # one endless header line
], ids=["deep", "bigint", "utf8", "torn", "negative_n", "huge_n", "short_payload", "endless"])  # fmt: skip
def test_reader_turns_any_bytes_into_protocol_error(raw):
    run = reader([raw])
    with pytest.raises(ProtocolError):
        for _ in range(3):
            if run.next_message(time.perf_counter() + 5.0) is None:
                raise ProtocolError("ended")
    assert isinstance(run.usage, Usage)


def test_huge_bookkeeping_numbers_are_ignored():
    """main divided peak_kb by 1024 as it came: a 300-digit integer raised OverflowError."""
    run = reader([b'{"done": true, "peak_kb": 1%s}\n' % (b"0" * 300)])
    msg, _ = run.next_message(time.perf_counter() + 5.0)
    assert msg["done"] is True and run.usage.peak_mb != run.usage.peak_mb


def test_reader_is_linear_in_a_long_line():
    """11 MiB arriving in 64 KiB pieces: each byte is searched once (main rescanned the
    whole buffer per chunk and copied it on every append)."""
    data = b'{"i": 0, "n": %d}\n' % (11 << 20) + b"7" * (11 << 20)
    run = reader([data[k : k + (1 << 16)] for k in range(0, len(data), 1 << 16)])
    t0 = time.thread_time()
    msg, payload = run.next_message(time.perf_counter() + 30.0)
    assert len(payload) == 11 << 20 and time.thread_time() - t0 < 1.0


def test_values_that_do_not_decode_are_protocol_errors():
    conversation = _Conversation(Scripted([]), {}, 1.0, None, Outcome(status="pass", tests_total=0))
    for payload in (b"[" * 100000, b'{"fraction": [1, 0]}', b'{"set": [[1]]}', b'{"bigint": 5}', b'{"complex": ["x", 1]}',
                    b'{"np": ["object_", 1]}', b'{"np": ["int64", "12"]}', b'{"dict": [[1]]}', b'{"tuple": [], "set": []}'):
        with pytest.raises(ProtocolError):
            conversation._value(payload)


def test_a_stalled_payload_is_waited_for_within_the_split_only():
    """A value's header, then nothing: the wait ends with the split's budget (0.5 s + slack
    + grace here). a415ab4 waited a flat TRANSFER_S (60 s) for any payload, outside the
    budget, so a candidate could compute after its header for a minute."""
    run = reader([b'{"ready": true}\n{"loaded": true}\n{"i": 0, "returned": true, "t": 0.0, "n": 10}\n'], hold_s=20.0)
    res = Outcome(status="pass", tests_total=1)
    t0 = time.perf_counter()
    _Conversation(run, {"inputs": [[]], "time_limits": [100.0], "mode": "run"}, 0.5, lambda i, v: True, res).converse()
    assert res.status == "timeout" and time.perf_counter() - t0 < harness.SLACK_S + harness.GRACE_S + 1.5
