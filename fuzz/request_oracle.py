"""The Python half of fuzz/request_fuzzer.c: turns fuzz bytes into the arguments of one call,
and judges the request body the C request builder made from them.

Input layout: byte 0 holds flags, the rest is split on 0x1e into fields.

    0 model                       5 the API key (env, or api_key= with flag 16)
    1 user_prompt (None: flag 1)  6 OPENROUTER_TITLE        7 OPENROUTER_REFERER
    2 system_prompt (None: 2)     8 extra_headers= as JSON (flag 32)
    3 messages= as JSON (flag 4)  9 base URL (env, or api_base= with flag 64)
    4 kwargs as JSON (flag 8)    10 fallbacks= as JSON (flag 128)

Text fields are decoded as UTF-8 with surrogateescape, so invalid bytes become lone
surrogates and exercise the "not valid Unicode" paths; environment values stay bytes.
"""

import json
import math
import os

# Defects these harnesses found (fixed in f2b77c2, see docs/RELIABILITY.md); listed in
# ORD_FUZZ_TOLERATE (comma-separated) they are not counted, so that a run against an older
# build can look past them:
#   nul_keys  an object key holding NUL is cut at the NUL (json.dumps writes "\u0000")
#   numbers   a float or an int near 2**53 may be sent rounded: cJSON prints 15 significant
#             digits whenever they read back within DBL_EPSILON relative, not exactly
#             (2**53 is sent as 9.00719925474099e+15, 0.1 + 0.2 as 0.3)
#   surrogate_headers
#             an extra_headers key that is not valid Unicode leaves a UnicodeEncodeError
#             pending (overridden() in headers.c): SystemError instead of TypeError, or a
#             refused request returned with an exception still set
TOLERATE = set(filter(None, os.environ.get("ORD_FUZZ_TOLERATE", "").split(",")))

INTERPRETED = {"num_retries", "max_retries", "timeout", "api_key", "api_base", "base_url",
               "extra_headers", "drop_params", "fallbacks", "raise_on_error", "hedge"}
ENV_NAMES = ("OPENAI_API_KEY", "OPENROUTER_TITLE", "OPENROUTER_REFERER", "OPENAI_API_BASE")
# The exceptions a call may raise for arguments it cannot send (TypeError is the documented
# one; a str that is not valid Unicode and an int too large for a C long raise their own).
ALLOWED_ERRORS = (TypeError, UnicodeError, OverflowError)


class Skip(Exception):
    """The input does not decode into a call: nothing to test."""


def _text(raw):
    return raw.decode("utf-8", "surrogateescape")


def _json(raw):
    try:
        return json.loads(raw.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise Skip() from exc


def decode(data):
    """bytes -> (model, user_prompt, system_prompt, messages, kwargs, key)."""
    if not data:
        raise Skip()
    flags = data[0]
    fields = data[1:].split(b"\x1e")
    fields += [b""] * (11 - len(fields))
    model = _text(fields[0])
    user = None if flags & 1 else _text(fields[1])
    system = None if flags & 2 else _text(fields[2])
    messages = None
    if flags & 4:
        messages = _json(fields[3])
        if not isinstance(messages, list):
            messages = [{"role": "user", "content": messages}]
    elif user is None:
        user = ""
    kwargs = {}
    if flags & 8:
        obj = _json(fields[4])
        kwargs = obj if isinstance(obj, dict) else {"metadata": obj}
        kwargs.pop("messages", None)  # a named parameter: never among **kwargs
    key = fields[5].replace(b"\0", b"")
    env = {"OPENAI_API_KEY": key, "OPENROUTER_TITLE": fields[6], "OPENROUTER_REFERER": fields[7],
           "OPENAI_API_BASE": fields[9]}
    if flags & 16:
        kwargs["api_key"] = _text(key)
        env["OPENAI_API_KEY"] = b""
    if flags & 32:
        kwargs["extra_headers"] = _json(fields[8])
        if "surrogate_headers" in TOLERATE and not _encodable(kwargs["extra_headers"]):
            raise Skip()
    if flags & 64:
        kwargs["api_base"] = _text(fields[9])
        env["OPENAI_API_BASE"] = b""
    if flags & 128:
        kwargs["fallbacks"] = _json(fields[10])
    for name in ENV_NAMES:
        value = env[name].replace(b"\0", b"")
        if value:
            os.environb[name.encode()] = value
        else:
            os.environb.pop(name.encode(), None)
    return model, user, system, messages, kwargs, key


def _encodable(obj):
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _has_nul_key(obj):
    if isinstance(obj, dict):
        return any("\0" in k for k in obj) or any(_has_nul_key(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_nul_key(v) for v in obj)
    return False


def _normal(obj):
    """What json.loads(json.dumps(obj)) gives (tuples as lists, keys as str)."""
    return json.loads(json.dumps(obj))


def _same(a, b):
    """Equal as JSON values; with "numbers" tolerated, numbers equal to 15 digits."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if "numbers" in TOLERATE and isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-14, abs_tol=0.0)
    return a == b and type(a) is type(b) or (a == b and {type(a), type(b)} <= {int, float})


def check(body, model, user, system, messages, kwargs):
    """Returns a complaint about the body the builder made, or None."""
    try:
        doc = json.loads(body.decode("utf-8", "surrogatepass"))
    except (ValueError, UnicodeDecodeError) as exc:
        return "body is not JSON (%s): %r" % (exc, body[:200])
    if not isinstance(doc, dict):
        return "body is not a JSON object"
    if "nul_keys" in TOLERATE and (_has_nul_key(messages) or _has_nul_key(kwargs)):
        return None
    sent_kwargs = {k: v for k, v in kwargs.items() if k not in INTERPRETED}
    if "messages" not in sent_kwargs:
        if messages is not None:
            want = _normal(messages)
        else:
            want = ([{"role": "system", "content": system}] if system is not None else []) + \
                [{"role": "user", "content": user}]
        if not _same(doc.get("messages"), want):
            return "messages differ: sent %r, asked %r" % (doc.get("messages"), want)
    for k, v in sent_kwargs.items():
        if v is None:
            if k in doc:
                return "kwarg %r=None was sent" % k
        elif k not in doc or not _same(doc[k], _normal(v)):
            return "kwarg %r: sent %r, asked %r" % (k, doc.get(k), v)
    for k in INTERPRETED:
        if k in doc:
            return "interpreted kwarg %r reached the body" % k
    if "model" not in sent_kwargs and not isinstance(doc.get("model"), str):
        return "model is not a string"
    return None
