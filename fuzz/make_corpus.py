"""Writes the seed corpora under fuzz/corpus/ and the crash regressions under fuzz/regressions/
(the files are in the repository; run this again only to change them):
``python fuzz/make_corpus.py``.

response/: byte 0 picks the HTTP status (see response_fuzzer.c: 0 -> 200, 7 -> 401, 12 -> 429,
14 -> 502), the rest is a body as OpenRouter or a proxy in front of it sends it.
request/: the layout described in request_oracle.py.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "sk-or-v1-7f3a9c2e5b8d1f4a6c0e9b2d7a5f3c1e"  # the key response_fuzzer.c uses

STATUS = {200: 0, 201: 4, 400: 6, 401: 7, 402: 8, 403: 9, 404: 10, 408: 11, 429: 12, 500: 13,
          502: 14, 503: 15}


def completion(content, **extra):
    reply = {
        "id": "gen-1732736400-abc", "provider": "OpenAI", "model": "openai/gpt-4.1",
        "object": "chat.completion", "created": 1732736400,
        "choices": [{"logprobs": None, "finish_reason": "stop", "native_finish_reason": "stop",
                     "index": 0, "message": {"role": "assistant", "content": content,
                                             "refusal": None, "reasoning": None}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128,
                  "cost": 0.000288, "prompt_tokens_details": {"cached_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
    }
    reply.update(extra)
    return json.dumps(reply).encode()


def error(code, message, **meta):
    err = {"code": code, "message": message}
    if meta:
        err["metadata"] = meta
    return json.dumps({"error": err}).encode()


RESPONSES = {
    "ok_text": (200, completion('{"score": 2}')),
    "ok_null": (200, completion(None)),
    "ok_parts": (200, completion([{"type": "text", "text": "part one "},
                                  {"type": "text", "text": "part two"}])),
    "ok_escapes": (200, completion("line\nbreak \"quoted\" \\ \u00e9\u4e2d \ud83d\ude00 \u0000 end")),
    "ok_whitespace": (200, b"\n\n   \n" + completion("after whitespace")),
    "ok_no_usage": (200, json.dumps({"choices": [{"message": {"content": "bare"}}]}).encode()),
    "ok_odd_usage": (200, completion("x", usage={"prompt_tokens": 1e15, "completion_tokens": -5,
                                                 "cost": "free"})),
    "ok_201": (201, completion("created")),
    # read_usual's ground (reader.c): what it must read exactly as cJSON does, and where it
    # must leave the reply to cJSON
    "ok_escapes_no_nul": (200, completion("\b\f\n\r\t \"/\\ \u00e9\u20ac\U0001f600 \u2028")),
    "ok_numbers": (200, b'{"choices":[{"message":{"content":"n"}}],"usage":{"prompt_tokens":12e2,'
                        b'"completion_tokens":-0,"cost":1.5E-7,"total_tokens":0.5}}'),
    "ok_first_wins": (200, b'{"choices":[{"message":{"content":"first","content":"second"},'
                           b'"message":{"content":"later"}}],"usage":{"cost":"x","cost":2},'
                           b'"usage":{"prompt_tokens":9},"choices":[]}'),
    "ok_raw_controls": (200, b'{"choices":[{"message":{"content":"tab\there \x01 \x7f"}}]}'),
    "ok_trailing_bytes": (200, completion("then garbage") + b" xyz"),
    "error200_502": (200, error(502, "provider failed", provider_name="FakeProvider")),
    "error200_string_code": (200, b'{"error": {"code": "429", "message": "slow down"}}'),
    "error200_string": (200, b'{"error": "something broke"}'),
    "error200_no_message": (200, b'{"error": {"code": 400}}'),
    "error200_null": (200, b'{"error": null, "choices": [{"message": {"content": "fine"}}]}'),
    "status_401": (401, error(401, "No auth credentials found")),
    "status_402": (402, error(402, "Insufficient credits")),
    "status_429": (429, error(429, "Rate limit exceeded", provider_name="OpenAI")),
    "status_502_html": (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "status_503_empty": (503, b""),
    "status_401_echoes_key": (401, error(401, "invalid key: Bearer " + KEY)),
    "truncated": (200, completion("cut in half")[:90]),
    "garbage": (200, b"not json at all"),
    "empty": (200, b""),
    "no_choices": (200, b'{"choices": []}'),
    "choices_not_list": (200, b'{"choices": {"message": {"content": "x"}}}'),
    "message_not_object": (200, b'{"choices": [{"message": "hello"}]}'),
    "content_number": (200, b'{"choices": [{"message": {"content": 42}}]}'),
    "content_parts_odd": (200, b'{"choices": [{"message": {"content": [1, {"text": 2}, '
                               b'{"text": "ok"}, null, {"type": "image"}]}}]}'),
    "nested_deep": (200, b'{"choices": [{"message": {"content": "deep"}}], "x": '
                         + b"[" * 900 + b"]" * 900 + b"}"),
    "duplicate_keys": (200, b'{"choices": [{"message": {"content": "a", "content": "b"}}]}'),
}

REQUESTS = {
    # flags, fields
    "prompt_only": (2, ["openai/gpt-4.1", "Score this answer", "", "", "", "sk-or-test", "", "",
                        "", "http://127.0.0.1:8089/api/v1"]),
    "system_and_user": (0, ["openrouter/openai/gpt-4.1-mini", "user text\nwith lines",
                            "You are a judge.", "", "", "sk-or-test", "DR-Tulu Training",
                            "http://localhost:3000", "", ""]),
    "messages_kwargs": (4 | 8, ["gpt-4.1", "", "", json.dumps([
        {"role": "system", "content": "s"}, {"role": "user", "content": [
            {"type": "text", "text": "a\u0000b \u00e9"}]}]),
        json.dumps({"temperature": 1, "max_tokens": 8192, "seed": 3, "stop": ["\n\n"],
                    "response_format": {"type": "json_object"}, "top_p": None,
                    "provider": {"order": ["openai"], "allow_fallbacks": False},
                    "logit_bias": {"50256": -100}, "num_retries": 2, "timeout": 30}),
        "sk-or-test", "", "", "", "https://openrouter.ai/api/v1"]),
    "extra_headers_fallbacks": (2 | 32 | 128, ["openai/gpt-4o-mini", "hi", "", "", "", "k" * 40,
                                               "", "", json.dumps({"X-Trace": "1"}), "",
                                               json.dumps(["openrouter/anthropic/claude-3.5",
                                                           "gpt-4.1-mini"])]),
    "crlf_title": (2, ["m", "hi", "", "", "", "sk-or-test", "Title\r\nX-Injected: 1", "", "", ""]),
    "key_kwarg_crlf": (2 | 16, ["m", "hi", "", "", "", "sk\nX-Evil: 1", "", "", "", ""]),
    "no_key": (2, ["m", "hi", "", "", "", "", "", "", "", ""]),
    "numbers": (2 | 8, ["m", "hi", "", "", json.dumps({
        "b": 2 ** 53 + 1, "c": -2 ** 63, "d": 10 ** 30, "e": 1e308, "f": 5e-324, "g": 0.1,
        "h": -0.0, "i": [True, False, None], "j": 12345}), "sk-or-test", "", "", "", ""]),
    "deep_kwargs": (2 | 8, ["m", "hi", "", "", "[" * 70 + "]" * 70, "sk-or-test", "", "", "", ""]),
    "model_none_kwarg": (2 | 8, ["m", "hi", "", "", json.dumps({"model": None, "temperature": None}),
                                "sk-or-test", "", "", "", ""]),
}


# Inputs that crashed a harness (fuzz/regressions/<target>/), one per defect found (all fixed
# in f2b77c2); fuzz/run replays them first, so that none comes back.
RESPONSE_REGRESSIONS = {
    # UBSan float-cast-overflow: (long)1e300 in take_usage (response.c), as the seed corpus
    # had it; the same cast takes the code of an error object
    "usage_tokens_1e300": (200, completion("x", usage={"prompt_tokens": 1e300})),
    "error_code_1e300": (200, b'{"error": {"code": 1e300, "message": "m"}}'),
    # a piece of the key survives: the message is cut to 1 KB before ord_redact looks for it
    "key_cut_at_1k": (401, error(401, "x" * 985 + " bad key " + KEY)),
    # ... and the 120-byte excerpt of a body that is not JSON is cut the same way
    "key_cut_in_excerpt": (502, b"<html>" + b"y" * 85 + KEY.encode() + b"</html>"),
}
REQUEST_REGRESSIONS = {
    # cJSON prints 15 significant digits when they read back within DBL_EPSILON: 2**53 is
    # sent as 9.00719925474099e+15 and 0.1 + 0.2 as 0.3
    "int_2_pow_53": (2 | 8, ["m", "hi", "", "", '{"seed": 9007199254740992}', "sk-or-test",
                             "", "", "", ""]),
    "float_0_30000000000000004": (2 | 8, ["m", "hi", "", "", '{"top_p": 0.30000000000000004}',
                                          "sk-or-test", "", "", "", ""]),
    # an extra_headers key that is not valid Unicode: SystemError, not TypeError, since
    # overridden() leaves its UnicodeEncodeError pending; with a header refused for CR/LF
    # the refused request comes back with that exception still set
    "surrogate_header_key": (2 | 32, ["m", "hi", "", "", "", "sk-or-test", "", "",
                                      '{"X-\\ud800": "1"}', ""]),
    "surrogate_header_key_crlf_title": (2 | 32, ["m", "hi", "", "", "", "sk-or-test", "a\nb", "",
                                                 '{"X-\\ud800": "1"}', ""]),
    # a kwarg name with a NUL is cut at the NUL too ("\0tries" is sent as "")
    "nul_in_kwarg_name": (2 | 8, ["m", "hi", "", "", '{"\\u0000tries": 1}', "sk-or-test", "", "",
                                  "", ""]),
    # an object key with a NUL is cut at the NUL
    "nul_in_key": (4, ["m", "", "", '[{"role": "user", "content": "x", "a\u0000b": 1}]', "",
                       "sk-or-test", "", "", "", ""]),
}


# Kept as found by the fuzzer (fuzz/regressions/response/key_cut_after_redaction_shrinks, not
# written here): a body holding the key twice, the second one starting inside the window that
# set_message_excerpt reads (excerpt + key length) but ending past it. Redacting the first key
# shortens the text by 38 bytes, so the unredacted head of the second lands inside the
# 120-byte excerpt.


def write(kind, target, name, data):
    path = os.path.join(HERE, kind, target, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def request_bytes(flags, fields):
    return bytes([flags]) + b"\x1e".join(x.encode("utf-8", "surrogatepass") for x in fields)


def main():
    for name, (status, body) in RESPONSE_REGRESSIONS.items():
        write("regressions", "response", name, bytes([STATUS[status]]) + body)
    for name, (flags, fields) in REQUEST_REGRESSIONS.items():
        write("regressions", "request", name, request_bytes(flags, fields))
    for name, (status, body) in RESPONSES.items():
        write("corpus", "response", name, bytes([STATUS[status]]) + body)
    for name, (flags, fields) in REQUESTS.items():
        write("corpus", "request", name, request_bytes(flags, fields))


if __name__ == "__main__":
    main()
