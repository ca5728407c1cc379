"""Replies of every shape, served byte for byte, come back as cJSON reads them.

The engine reads the usual reply with its own reader (``ord_read_usual`` in reader.c) and leaves
every other reply to cJSON. Whichever reads it, the caller must get what the reply says: here a
server answers each call with a body given as raw bytes, and the expected text and token counts
come from Python's json module, told to read as cJSON does (the first of duplicate keys wins,
raw control characters are taken in strings, bytes after the object are ignored, and a text
ends at its first NUL). fuzz/response_fuzzer.c checks the two readers against each other on
every input it makes; this checks the whole path from the socket to the returned str.
"""

import http.server
import json
import math
import threading

import pytest

from helpers import ThreadedServer, arun, uniq


class _RawHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        prompt = json.loads(raw)["messages"][-1]["content"]
        with self.server.lock:
            body = self.server.bodies.get(prompt, b"")
            self.server.hits[prompt] = self.server.hits.get(prompt, 0) + 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class RawReplyServer(ThreadedServer):
    """Answers a call whose last message is ``prompt`` with ``bodies[prompt]``, status 200."""

    def __init__(self):
        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RawHandler)
        self._srv.daemon_threads = True
        self._srv.bodies, self._srv.hits, self._srv.lock = {}, {}, threading.Lock()
        super().__init__()
        self.base_url = "http://127.0.0.1:%d/api/v1" % self.port

    def serve(self, body):
        prompt = uniq("raw")
        with self._srv.lock:
            self._srv.bodies[prompt] = body
        return prompt


@pytest.fixture(scope="module")
def raw_server():
    with RawReplyServer() as srv:
        yield srv


def _first_wins(pairs):
    out = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v):
    """sane_long in response.c: a count outside [0, 1e15] counts as 0."""
    return int(v) if _number(v) and 0 <= v <= 1e15 else 0


def cjson_reading(body):
    """(content, prompt_tokens, completion_tokens, cost) as cJSON reads a 200 reply; content is
    None when the reply is not a chat completion."""
    text = body.decode("utf-8")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    root, _ = json.JSONDecoder(strict=False, object_pairs_hook=_first_wins).raw_decode(text, start)
    if root.get("error") is not None:
        return None, 0, 0, 0.0
    try:
        message = root["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None, 0, 0, 0.0
    if not isinstance(message, dict):
        return None, 0, 0, 0.0
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        content = "".join(p["text"] for p in content
                          if isinstance(p, dict) and isinstance(p.get("text"), str))
    elif not isinstance(content, str):
        return None, 0, 0, 0.0
    usage = root.get("usage")
    pt = ct = 0
    cost = 0.0
    if isinstance(usage, dict):
        pt, ct = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
        c = usage.get("cost")
        cost = float(c) if _number(c) and math.isfinite(c) else 0.0
    return content.split("\x00")[0], pt, ct, cost


def _usual(content, **usage):
    reply = {"id": "gen-1", "provider": "P", "model": "m", "object": "chat.completion",
             "created": 1700000000,
             "choices": [{"logprobs": None, "finish_reason": "stop", "index": 0,
                          "message": {"role": "assistant", "content": content,
                                      "refusal": None}}],
             "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14,
                       "cost": 0.000416, "prompt_tokens_details": {"cached_tokens": 0}}}
    reply["usage"].update(usage)
    return reply


DEEP = {"x": 1}
for _ in range(80):
    DEEP = {"d": [DEEP]}

REPLIES = {
    "usual": json.dumps(_usual('{"score": 2}')).encode(),
    "usual_compact": json.dumps(_usual("ok"), separators=(",", ":")).encode(),
    "escapes_ascii": json.dumps(_usual("\b\f\n\r\t \"/\\ \u00e9\u20ac\U0001f600 \u2028 end")).encode(),
    "utf8_raw": json.dumps(_usual("caf\u00e9 \u4e2d\u6587 \U0001f600"), ensure_ascii=False).encode(),
    "escaped_slash": b'{"choices":[{"message":{"content":"a\\/b"}}]}',
    "upper_hex": b'{"choices":[{"message":{"content":"\\u00C9\\uD83D\\uDE00"}}]}',
    "null_content": json.dumps(_usual(None)).encode(),
    "no_content": b'{"choices":[{"message":{"role":"assistant"}}],"usage":{"prompt_tokens":5}}',
    "no_usage": b'{"choices":[{"message":{"content":"bare"}}]}',
    "usage_not_object": b'{"choices":[{"message":{"content":"u"}}],"usage":[1,2]}',
    "numbers": (b'{"choices":[{"message":{"content":"n"}}],"usage":{"prompt_tokens":12e2,'
                b'"completion_tokens":-0,"cost":1.5E-7,"total_tokens":0.5}}'),
    "fraction_tokens": (b'{"choices":[{"message":{"content":"f"}}],"usage":{"prompt_tokens":7.9,'
                        b'"completion_tokens":123456789012345678,"cost":1e400}}'),
    "negative_tokens": json.dumps(_usual("neg", prompt_tokens=-5, completion_tokens=1e300)).encode(),
    "string_numbers": json.dumps(_usual("s", prompt_tokens="12", cost="free")).encode(),
    "first_wins": (b'{"choices":[{"message":{"content":"first","content":"second"},'
                   b'"message":{"content":"later"}}],"usage":{"cost":"x","cost":2,'
                   b'"prompt_tokens":4,"prompt_tokens":8},"usage":{"prompt_tokens":9},"choices":[]}'),
    "error_null": b'{"error":null,"choices":[{"message":{"content":"fine"}}]}',
    "whitespace": b'\r\n\t {\n "choices" : [ { "message" : { "content" : "ws" } } ] }\n\n',
    "trailing_bytes": json.dumps(_usual("then bytes")).encode() + b" trailing",
    "raw_controls": b'{"choices":[{"message":{"content":"tab\there \x01 \x7f"}}]}',
    "nul_escape": json.dumps(_usual("before\x00after")).encode(),
    "escaped_key": b'{"choices":[{"message":{"cont\\u0065nt":"key had an escape"}}]}',
    "deep_sibling": json.dumps({**_usual("deep"), "extra": DEEP}).encode(),
    "parts": json.dumps(_usual([{"type": "text", "text": "one "}, {"type": "image"},
                                {"type": "text", "text": "two"}])).encode(),
    "more_choices": json.dumps({"choices": [{"message": {"content": "a"}},
                                            {"message": {"content": "b"}}]}).encode(),
    "big_escaped": json.dumps(_usual("line \"%d\"\n" * 5000 % tuple(range(5000)))).encode(),
}

NOT_COMPLETIONS = {
    "empty_choices": b'{"choices":[]}',
    "message_string": b'{"choices":[{"message":"hi"}]}',
    "content_number": b'{"choices":[{"message":{"content":5}}]}',
    "error_object": b'{"error":{"code":400,"message":"bad"},"choices":[{"message":{"content":"x"}}]}',
    "lone_surrogate": b'{"choices":[{"message":{"content":"\\ud800 alone"}}]}',
    "bad_escape": b'{"choices":[{"message":{"content":"\\q"}}]}',
    "truncated": json.dumps(_usual("cut")).encode()[:-3],
    "trailing_comma": b'{"choices":[{"message":{"content":"x"}}],}',
    "not_an_object": b'[{"choices":[{"message":{"content":"x"}}]}]',
}


def _call(od, raw_server, body, monkeypatch):
    monkeypatch.setenv("OPENAI_API_BASE", raw_server.base_url)
    prompt = raw_server.serve(body)
    before = od.stats()
    out = arun(od.run_openrouter_async("openai/gpt-4o-mini", prompt, num_retries=0))
    after = od.stats()
    return out, tuple(after[k] - before[k] for k in ("prompt_tokens", "completion_tokens", "cost"))


@pytest.mark.parametrize("name", sorted(REPLIES))
def test_reply_comes_back_as_cjson_reads_it(od, raw_server, monkeypatch, name):
    body = REPLIES[name]
    content, pt, ct, cost = cjson_reading(body)
    assert content is not None, "a case of REPLIES must be a chat completion"
    out, (dpt, dct, dcost) = _call(od, raw_server, body, monkeypatch)
    assert type(out) is str and out == content
    assert (dpt, dct) == (pt, ct)
    assert dcost == pytest.approx(cost, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", sorted(NOT_COMPLETIONS))
def test_reply_that_is_not_a_completion_fails(od, raw_server, monkeypatch, name):
    body = NOT_COMPLETIONS[name]
    before = od.stats()["failed"]
    out, usage = _call(od, raw_server, body, monkeypatch)
    assert out == ""
    assert od.stats()["failed"] == before + 1
    assert usage == (0, 0, 0)
