"""The fake server's scripted replies, JSON replies, random faults, key checks and latency spread,
checked with the standard library only (as in test_fake_server.py)."""

import http.client
import json
import statistics
import time
import urllib.error
import urllib.request

import pytest

from openrouter_direct._server import FakeOpenRouter, judge_json

from helpers import bound


def chat(conn, model, prompt="hi", headers=None, **extra):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], **extra})
    conn.request("POST", "/api/v1/chat/completions", body,
                 {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    return resp, resp.read()


def content(raw):
    return json.loads(raw)["choices"][0]["message"]["content"]


@pytest.fixture
def conn(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    yield c
    c.close()


def test_scripted_reply_answers_the_next_call_once(server, conn):
    rule = server.script(reply="scripted!")
    assert content(chat(conn, "openai/gpt-4o", "a")[1]) == "scripted!"
    assert content(chat(conn, "openai/gpt-4o", "b")[1]) == "echo: b"
    assert rule.hits == 1 and rule.remaining == 0


def test_scripted_reply_can_be_json_and_rules_go_in_order(server, conn):
    server.script(reply={"score": 2})
    server.script(reply=["x", 1])
    _, raw = chat(conn, "m/x")
    assert json.loads(content(raw)) == {"score": 2}
    assert json.loads(content(chat(conn, "m/x")[1])) == ["x", 1]
    reply = json.loads(raw)
    assert reply["usage"]["completion_tokens"] > 0 and reply["model"] == "m/x"


def test_match_looks_in_every_message_and_model_must_be_exact(server, conn):
    server.script(reply="judged", match="rubric 7", times=None)
    server.script(reply="for gpt", model="openai/gpt-4.1")
    assert content(chat(conn, "x/y", "this is rubric 7 text")[1]) == "judged"
    assert content(chat(conn, "x/y", "rubric 8")[1]) == "echo: rubric 8"
    assert content(chat(conn, "openai/gpt-4.1-mini", "q")[1]) == "echo: q"
    assert content(chat(conn, "openai/gpt-4.1", "q")[1]) == "for gpt"
    body = json.dumps({"model": "x/y", "messages": [
        {"role": "system", "content": "grade rubric 7"}, {"role": "user", "content": "r"}]})
    conn.request("POST", "/api/v1/chat/completions", body)
    assert content(conn.getresponse().read()) == "judged"


def test_match_can_be_a_callable_on_the_body(server, conn):
    server.script(reply="low temp", match=lambda body: body.get("temperature") == 0)
    assert content(chat(conn, "x/y", "a", temperature=0.7)[1]) == "echo: a"
    assert content(chat(conn, "x/y", "b", temperature=0)[1]) == "low temp"


def test_times_counts_attempts_and_none_means_until_cleared(server, conn):
    rule = server.script(status=503, times=2)
    assert [chat(conn, "x/y")[0].status for _ in range(3)] == [503, 503, 200]
    assert rule.hits == 2
    forever = server.script(status=402, message="Insufficient credits", times=None)
    for _ in range(3):
        resp, raw = chat(conn, "x/y")
        assert resp.status == 402
        assert json.loads(raw) == {"error": {"code": 402, "message": "Insufficient credits"}}
    assert forever.remaining is None and forever.hits == 3
    server.clear_script()
    assert chat(conn, "x/y")[0].status == 200


def test_scripted_status_carries_headers(server, conn):
    server.script(status=429, headers={"Retry-After": "7"})
    resp, raw = chat(conn, "x/y")
    assert resp.status == 429 and resp.getheader("Retry-After") == "7"
    assert json.loads(raw)["error"]["message"] == "scripted status 429"


def test_scripted_fault_uses_the_fake_modes(server, conn):
    server.script(fault="error200-502")
    server.script(fault="garbage")
    resp, raw = chat(conn, "x/y")
    assert resp.status == 200 and json.loads(raw)["error"]["code"] == 502
    assert chat(conn, "x/y")[1] == b"not json at all"
    server.script(fault="reset")
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises(ConnectionError):
        chat(c, "x/y")


def test_scripted_rule_wins_over_the_model_mode(server, conn):
    server.script(reply="not a 500", model="fake/status-500")
    assert chat(conn, "fake/status-500")[0].status == 200
    assert chat(conn, "fake/status-500")[0].status == 500


def test_scripted_delay(server, conn):
    server.script(reply="late", delay_ms=200)
    t0 = time.monotonic()
    assert content(chat(conn, "x/y")[1]) == "late"
    assert time.monotonic() - t0 >= 0.19


def test_reset_forgets_rules(server, conn):
    server.script(reply="gone", times=None)
    server.reset()
    assert content(chat(conn, "x/y", "z")[1]) == "echo: z"


@pytest.mark.parametrize("kwargs", [{}, {"reply": "a", "status": 500}, {"status": 200},
                                    {"status": 600}, {"fault": "no-such-mode"},
                                    {"reply": "a", "times": 0}])
def test_script_rejects_unclear_rules(server, kwargs):
    with pytest.raises(ValueError):
        server.script(**kwargs)


def test_json_mode_and_json_object_response_format(server, conn):
    _, raw = chat(conn, "fake/json", "grade this")
    obj = json.loads(content(raw))
    assert obj == json.loads(judge_json("grade this"))
    assert obj["score"] in (0, 1, 2) and obj["echo"] == "grade this"
    _, raw = chat(conn, "openai/gpt-4o-mini", "grade", response_format={"type": "json_object"})
    assert json.loads(content(raw))["echo"] == "grade"
    # fake/echo stays an echo whatever the format asked for
    _, raw = chat(conn, "fake/echo", "e", response_format={"type": "json_object"})
    assert content(raw) == "echo: e"


def test_unknown_fake_model_reads_like_openrouters_invalid_model(conn):
    resp, raw = chat(conn, "fake/no-such-model")
    assert resp.status == 400
    assert "fake/no-such-model is not a valid model ID" in json.loads(raw)["error"]["message"]


def test_fault_rate_fails_that_share_of_non_fake_models_with_retryable_errors():
    with FakeOpenRouter(fault_rate=0.5, seed=7) as srv:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        outcomes = []
        for i in range(200):
            resp, raw = chat(c, "x/y", "p%d" % i)
            body = json.loads(raw)
            outcomes.append("ok" if resp.status == 200 and "choices" in body else
                            body["error"]["code"])
        faults = [o for o in outcomes if o != "ok"]
        assert 60 <= len(faults) <= 140, outcomes
        assert set(faults) <= {503, 502, 429} and len(set(faults)) == 3
        assert srv.faults_injected == len(faults)
        assert all(chat(c, "fake/echo", "f")[0].status == 200 for _ in range(20))


def test_api_keys_limit_who_gets_in(server, conn):
    server.api_keys = {"good"}
    try:
        resp, raw = chat(conn, "x/y", headers={"Authorization": "Bearer bad"})
        assert resp.status == 401 and json.loads(raw)["error"]["message"] == "User not found."
        assert chat(conn, "x/y", headers={"Authorization": "Bearer good"})[0].status == 200
        req = urllib.request.Request(server.base_url + "/key",
                                     headers={"Authorization": "Bearer bad"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 401
    finally:
        server.api_keys = None


def test_key_data_is_what_get_key_describes(server):
    server.key_data = {"label": "sk-or-v1-abc...", "limit": 10.0, "usage": 2.5,
                       "limit_remaining": 7.5}
    try:
        req = urllib.request.Request(server.base_url + "/key",
                                     headers={"Authorization": "Bearer any"})
        data = json.loads(urllib.request.urlopen(req, timeout=5).read())["data"]
        assert data["limit"] == 10.0 and data["limit_remaining"] == 7.5
    finally:
        server.key_data = {"label": "test", "limit": None, "usage": 0}


def test_latency_jitter_spreads_around_the_median():
    with FakeOpenRouter(latency_ms=10, latency_jitter=0.6, seed=3) as srv:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        times = []
        for i in range(30):
            t0 = time.monotonic()
            chat(c, "x/y", "p%d" % i)
            times.append((time.monotonic() - t0) * 1000)
        assert 5 <= statistics.median(times) <= bound(30), times
        assert max(times) > 1.5 * min(times), times
