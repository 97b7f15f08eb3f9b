"""The tagged value codec between the sandbox and the trusted side. Standard library only:
its source runs inside the sandbox ahead of the driver's (see execute/sandbox.py).

Lists and str/int/float/bool/None map to JSON; tuple, set, frozenset, dict, complex, bytes,
Fraction, Decimal, numpy scalars and ints past 1000 digits become {"<tag>": body}.

`encode` runs in the runner (candidate objects in, plain JSON out), inside the test's
timed region, since it may call the value's own methods. `decode` rebuilds trusted
trees (inputs, the ground-truth cache). `loads` parses untrusted bytes from a sandbox in
one pass with a budget: at most `max_nodes` values (counted on the bytes before
parsing, so peak memory is bounded by the budget, not by what the bytes expand to), no
hash-colliding set or dict keys past `MAX_SAME_HASH`, no gcd on our side, and nothing
in it costs more than linear time in the bytes.
"""

import json
import sys

_SCALARS = (bool, int, float, str, type(None))
_CONTAINERS = {"tuple": tuple, "set": set, "frozenset": frozenset}
_BIG = 10**1000
# numpy scalar types that cross as themselves: EvalPlus compares the candidate's numpy
# scalar as it is (np.float64 == big int is numpy's comparison; type(out) == type(exp)).
NUMPY_SCALARS = ("bool bool_ int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 "
                 "complex64 complex128").split()  # fmt: skip
MAX_SAME_HASH = 16  # distinct set/dict keys sharing one hash: beyond this it is an attack
_HASH_MOD = (1 << 61) - 1  # hash values reduced mod this hash to themselves: the counter cannot collide


class Unserialisable(Exception):
    pass


class ValueBudget(ValueError):
    """An untrusted value exceeds what the trusted side agrees to decode."""


def encode(x, depth=0):
    if depth > 100:
        raise Unserialisable("nesting")
    t = type(x)
    if t is int and not -_BIG < x < _BIG:
        return {"bigint": format(x, "x")}  # decimal str() of huge ints is capped in 3.11+
    if t in _SCALARS:
        return x
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    if t is complex:
        return {"complex": [x.real, x.imag]}
    if t is bytes:
        return {"bytes": x.hex()}
    for tag, base in _CONTAINERS.items():
        if t is base:
            return {tag: [encode(v, depth + 1) for v in x]}
    # Exact numeric types of the stdlib and numpy: only their numbers cross; the trusted
    # side rebuilds genuine objects, so a patched class here cannot act there.
    mod = sys.modules.get(t.__module__)
    if t.__module__ == "fractions" and t is getattr(mod, "Fraction", None):
        return {"fraction": [encode(int(x.numerator)), encode(int(x.denominator))]}
    if t.__module__ in ("decimal", "_decimal", "_pydecimal") and t.__name__ == "Decimal":
        return {"decimal": str(x)}
    np = sys.modules.get("numpy")
    if np is not None and t.__name__ in NUMPY_SCALARS and getattr(np, t.__name__, None) is t:
        v = x.item()
        return {"np": [t.__name__, [v.real, v.imag] if type(v) is complex else encode(v)]}
    # Subclasses of built-ins (namedtuple, defaultdict...) compare equal to their base
    # value in EvalPlus; rebuild them as the base type, then recheck.
    for base in (bool, int, float, str, list, tuple, dict, set, frozenset, complex, bytes):
        if isinstance(x, base):
            plain = base.__new__(base, x) if base in (int, float, str, complex, bytes, tuple, frozenset) else base(x)
            if type(plain) is base:
                return encode(plain, depth)
    raise Unserialisable(t.__name__)


def hashes_spread(keys):
    """False when more than MAX_SAME_HASH keys share a hash (building the set would be quadratic)."""
    seen = {}
    for k in keys:
        h = hash(k) % _HASH_MOD
        seen[h] = seen.get(h, 0) + 1
        if seen[h] > MAX_SAME_HASH:
            return False
    return True


def _fraction(n, d):
    """A Fraction from the runner's own (already normalised) terms, without our gcd: math.gcd
    on multi-megabit terms holds the GIL for hours. An unnormalised forgery keeps its value,
    so it can only fail exact comparison against the candidate itself."""
    import fractions

    if type(n) is not int or type(d) is not int or d <= 0:
        raise ValueError("bad fraction")
    f = object.__new__(fractions.Fraction)
    f._numerator, f._denominator = n, d
    return f


def _untag(tag, body):
    """A tagged value from its decoded body."""
    if tag == "dict" and type(body) is list:
        pairs = [(k, v) for k, v in body]
        if not hashes_spread(k for k, _ in pairs):
            raise ValueBudget("colliding keys")
        return dict(pairs)
    if tag == "complex" and type(body) is list and len(body) == 2:
        return complex(float(body[0]), float(body[1]))
    if tag == "bigint" and type(body) is str:
        return int(body, 16)  # linear, unlike decimal parsing
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "fraction" and type(body) is list and len(body) == 2:
        return _fraction(*body)
    if tag == "decimal" and type(body) is str:
        import decimal

        return decimal.Decimal(body)
    if tag == "np" and type(body) is list and len(body) == 2 and body[0] in NUMPY_SCALARS:
        import numpy as np

        v = body[1]
        if type(v) is list and len(v) == 2 and type(v[0]) is type(v[1]) is float:
            v = complex(*v)
        elif type(v) not in (bool, int, float):  # numpy would parse a string, at its own cost
            raise ValueError("bad numpy scalar")
        return getattr(np, body[0])(v)
    if tag in _CONTAINERS and type(body) is list:
        if tag != "tuple" and not hashes_spread(body):
            raise ValueBudget("colliding elements")
        return _CONTAINERS[tag](body)
    raise ValueError("bad encoded value")


def decode(v):
    """A trusted tree of the encoding (parsed JSON) as Python values."""
    t = type(v)
    if t in _SCALARS:
        return v
    if t is list:
        return [decode(x) for x in v]
    if t is dict and len(v) == 1:
        ((tag, body),) = v.items()
        return _untag(tag, decode(body))
    raise ValueError("bad encoded value")


def _hook(pairs):
    if len(pairs) != 1:
        raise ValueError("bad encoded value")
    return _untag(*pairs[0])


def max_nodes(max_bytes):
    """The decode budget for a byte cap: ~70 bytes of objects per node, so a value at the
    cap peaks at a few times the cap, however the bytes are nested."""
    return max_bytes // 16


def loads(data, max_nodes):
    """An untrusted payload as Python values, bounded (see the module's docstring).
    Raises ValueBudget past the budget, ValueError or RecursionError on bad bytes."""
    # Every value but the first follows a comma or opens a container; an object holds a
    # key and a value. Brackets inside strings overcount: the bound stays conservative.
    nodes = 1 + data.count(b",") + data.count(b"[") + 2 * data.count(b"{")
    if nodes > max_nodes:
        raise ValueBudget(f"{nodes} values")
    return json.loads(data, object_pairs_hook=_hook)
