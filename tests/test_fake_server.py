"""The fake server itself, checked with the standard library only (no package calls),
so a failure elsewhere can be told apart from a broken test server."""

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from helpers import bound, wait_until

from openrouter_direct._server import FakeOpenRouter, big_content


def chat(conn, model, prompt="hi", headers=None):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})
    conn.request("POST", "/api/v1/chat/completions", body,
                 {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    return resp, resp.read()


def raw_request(body, extra=b""):
    return (b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def read_all(sock, timeout=5):
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def conn(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    yield c
    c.close()


def test_success_reply_is_a_realistic_chat_completion(server, conn):
    resp, raw = chat(conn, "openai/gpt-4o-mini", "hello")
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(raw)
    reply = json.loads(raw)
    assert reply["object"] == "chat.completion" and reply["model"] == "openai/gpt-4o-mini"
    choice = reply["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["native_finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "echo: hello",
                                 "refusal": None, "reasoning": None}
    u = reply["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert isinstance(u["cost"], float) and u["cost"] > 0


def test_keep_alive_serves_many_requests_on_one_connection(server, conn):
    for i in range(20):
        resp, raw = chat(conn, "fake/echo", "n%d" % i)
        assert json.loads(raw)["choices"][0]["message"]["content"] == "echo: n%d" % i
    assert server.connections_opened == 1
    assert len({r["conn"] for r in server.requests}) == 1


@pytest.mark.parametrize("code", [400, 401, 404, 429, 500, 503])
def test_status_mode(conn, code):
    resp, raw = chat(conn, "fake/status-%d" % code)
    assert resp.status == code
    assert json.loads(raw) == {"error": {"code": code, "message": "fake status %d" % code}}


def test_retry_after_modes_send_their_headers(conn):
    resp, _ = chat(conn, "fake/retry-after-3")
    assert resp.status == 429 and resp.getheader("Retry-After") == "3"
    resp, _ = chat(conn, "fake/retry-after-ms-250")
    assert resp.status == 429 and resp.getheader("retry-after-ms") == "250"


def test_content_modes(conn):
    content = lambda raw: json.loads(raw)["choices"][0]["message"]["content"]  # noqa: E731
    assert content(chat(conn, "fake/null")[1]) is None
    assert content(chat(conn, "fake/list")[1]) == [
        {"type": "text", "text": "part one "}, {"type": "text", "text": "part two"}]
    _, raw = chat(conn, "fake/whitespace", "ws")
    assert raw.startswith(b"\n\n   \n") and content(raw) == "echo: ws"
    _, raw = chat(conn, "fake/big-3000000")
    assert content(raw) == big_content(3000000)
    _, raw = chat(conn, "fake/headers", headers={"X-Probe": "42"})
    assert json.loads(content(raw))["x-probe"] == "42"
    _, raw = chat(conn, "fake/body", "b")
    assert json.loads(content(raw))["messages"][0]["content"] == "b"


def test_broken_reply_modes(server, conn):
    resp, raw = chat(conn, "fake/garbage")
    assert resp.status == 200 and raw == b"not json at all"
    resp, raw = chat(conn, "fake/truncated")
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(raw)
    with pytest.raises(ValueError):
        json.loads(raw)
    resp, raw = chat(conn, "fake/error200-502")
    assert resp.status == 200 and json.loads(raw)["error"]["code"] == 502
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises(ConnectionError):
        chat(c, "fake/reset")
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    with pytest.raises(http.client.IncompleteRead):
        chat(c, "fake/reset-midbody")


def test_slow_mode_does_not_block_other_connections(server):
    s1 = socket.create_connection(("127.0.0.1", server.port))
    s1.sendall(raw_request(json.dumps({"model": "fake/slow-500", "messages": []}).encode(),
                           b"Connection: close\r\n"))
    assert wait_until(lambda: server.in_progress == 1)  # the slow one is being served
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    t0 = time.monotonic()
    resp, _ = chat(c, "fake/echo")
    assert resp.status == 200 and time.monotonic() - t0 < bound(0.3)
    assert b"200 OK" in read_all(s1)
    assert server.max_concurrent == 2


def test_flaky_mode_counts_attempts_per_body(server):
    statuses = []
    for _ in range(4):
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        statuses.append(chat(c, "fake/flaky-2-503", "flaky-body")[0].status)
    assert statuses == [503, 503, 200, 200]
    assert server.attempts_for("flaky-body") == 4
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    assert chat(c, "fake/flaky-2-503", "other-body")[0].status == 503


def test_stall_mode_holds_until_client_closes(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(raw_request(json.dumps({"model": "fake/stall", "messages": []}).encode()))
    s.settimeout(0.3)
    with pytest.raises(socket.timeout):
        s.recv(10)
    assert server.in_progress == 1
    s.close()
    assert wait_until(lambda: server.in_progress == 0)


def test_pipelined_requests_are_answered_in_order(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    one = json.dumps({"model": "fake/echo", "messages": [{"role": "user", "content": "one"}]})
    two = json.dumps({"model": "fake/slow-50", "messages": [{"role": "user", "content": "two"}]})
    s.sendall(raw_request(one.encode()) + raw_request(two.encode())
              + raw_request(one.encode(), b"Connection: close\r\n"))
    data = read_all(s)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"echo: one") < data.index(b"echo: two") < data.rindex(b"echo: one")


def test_chunked_body_and_expect_continue(server):
    body = json.dumps({"model": "fake/echo", "messages": [{"role": "user", "content": "ch"}]})
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
              b"Connection: close\r\n\r\n" + b"%x\r\n" % len(body) + body.encode()
              + b"\r\n0\r\n\r\n")
    assert b"echo: ch" in read_all(s)
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(5)
    s.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nExpect: 100-continue\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(body.encode())
    assert b"echo: ch" in read_all(s)


@pytest.mark.parametrize("junk", [b"GARBAGE\r\n\r\n", b"\x00\xff\xfe junk\r\n\r\n",
                                  b"POST / HTTP/1.1\r\nBad Header\r\n\r\n",
                                  b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"])
def test_malformed_requests_get_400_and_server_survives(server, conn, junk):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(junk)
    assert read_all(s).startswith(b"HTTP/1.1 400 ")
    half = socket.create_connection(("127.0.0.1", server.port))
    half.sendall(b"POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
    half.close()
    assert chat(conn, "fake/echo")[0].status == 200


def test_key_route_and_404(server):
    url = server.base_url
    req = urllib.request.Request(url + "/key", headers={"Authorization": "Bearer abc"})
    assert json.loads(urllib.request.urlopen(req, timeout=5).read()) == {
        "data": {"label": "test", "limit": None, "usage": 0}}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url + "/key", timeout=5)
    assert info.value.code == 401 and json.loads(info.value.read())["error"]["code"] == 401
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url + "/models/nope", timeout=5)
    assert info.value.code == 404 and "error" in json.loads(info.value.read())


def test_unknown_fake_model_is_a_400(conn):
    assert chat(conn, "fake/no-such-mode")[0].status == 400


def test_latency_is_added_to_successes_only():
    with FakeOpenRouter(latency_ms=200) as srv:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        t0 = time.monotonic()
        assert chat(c, "fake/echo")[0].status == 200
        assert time.monotonic() - t0 >= 0.19
        t0 = time.monotonic()
        assert chat(c, "fake/status-500")[0].status == 500
        assert time.monotonic() - t0 < bound(0.15)


def test_stop_closes_open_connections_and_joins_the_thread():
    srv = FakeOpenRouter().start()
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(raw_request(json.dumps({"model": "fake/stall", "messages": []}).encode()))
    assert wait_until(lambda: srv.in_progress == 1)
    thread = srv._thread
    t0 = time.monotonic()
    srv.stop()
    assert time.monotonic() - t0 < bound(2)
    assert not thread.is_alive()
    assert read_all(s, 2) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1)


def test_many_concurrent_connections_with_one_thread(server):
    import asyncio

    async def one(i):
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        body = json.dumps({"model": "fake/slow-200",
                           "messages": [{"role": "user", "content": "m%d" % i}]}).encode()
        w.write(raw_request(body, b"Connection: close\r\n"))
        data = await r.read()
        w.close()
        return b"echo: m%d\"" % i in data

    async def main():
        return await asyncio.gather(*(one(i) for i in range(1000)))

    assert all(asyncio.run(asyncio.wait_for(main(), 30)))
    assert server.max_concurrent >= 500
