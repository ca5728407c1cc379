"""The wire underneath: proxies from the environment, refused ports, bad hosts."""

import logging
import socket
import time

import pytest

from helpers import ForwardProxy, arun, bound, run_py, uniq

LOGGER = "openrouter_direct"


# --------------------------------------------------------------------- proxy
@pytest.fixture
def forward_proxy():
    with ForwardProxy() as proxy:
        yield proxy


def test_http_proxy_env_is_used(od, server, forward_proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % forward_proxy.port)
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p, num_retries=0)) == "echo: " + p
    assert forward_proxy.seen == [("POST", server.base_url + "/chat/completions")]
    assert forward_proxy.agents == [["openrouter_direct/0.1"]]  # once, not from two sources
    assert server.attempts_for(p) == 1


def test_no_proxy_bypasses_the_proxy(od, server, forward_proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % forward_proxy.port)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p, num_retries=0)) == "echo: " + p
    assert forward_proxy.seen == []
    assert server.attempts_for(p) == 1


PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "no_proxy", "NO_PROXY")


@pytest.mark.parametrize("env, via_proxy", [
    # libcurl's rules, which the call now applies itself (env.c, ord_env_proxy)
    ({"HTTP_PROXY": "{proxy}"}, False),               # upper case ignored for http://
    ({"all_proxy": "{proxy}"}, True),
    ({"ALL_PROXY": "{proxy}"}, True),
    ({"http_proxy": "", "all_proxy": "{proxy}"}, True),  # empty counts as unset
    ({"http_proxy": "{proxy}", "all_proxy": "http://127.0.0.1:9"}, True),  # scheme's own first
    ({"https_proxy": "{proxy}"}, False),              # another scheme's
    ({"all_proxy": "{proxy}", "NO_PROXY": "127.0.0.1"}, False),
    ({"all_proxy": "{proxy}", "no_proxy": "example.com"}, True),
    ({"all_proxy": "{proxy}", "no_proxy": "example.com", "NO_PROXY": "127.0.0.1"}, True),
    ({"all_proxy": "{proxy}", "no_proxy": "*"}, False),
])
def test_proxy_variables_follow_libcurls_rules(od, server, forward_proxy, monkeypatch, env,
                                               via_proxy):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(proxy=forward_proxy.url))
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p, num_retries=0)) == "echo: " + p
    assert len(forward_proxy.seen) == (1 if via_proxy else 0)
    assert server.attempts_for(p) == 1


def test_proxy_env_change_applies_to_the_next_call(od, server, forward_proxy, monkeypatch):
    """The proxy is read per call, as libcurl read it per transfer."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    p1, p2, p3 = uniq(), uniq(), uniq()
    assert arun(od.run_openrouter_async("fake/echo", p1)) == "echo: " + p1
    monkeypatch.setenv("http_proxy", forward_proxy.url)
    assert arun(od.run_openrouter_async("fake/echo", p2)) == "echo: " + p2
    monkeypatch.delenv("http_proxy")
    assert arun(od.run_openrouter_async("fake/echo", p3)) == "echo: " + p3
    assert len(forward_proxy.seen) == 1


def test_proxy_env_read_at_first_call_in_fresh_process(server, forward_proxy):
    code = r'''
import openrouter_direct as od
print(od.run_openrouter("fake/echo", "via-proxy-fresh", num_retries=0))
'''
    proc = run_py(code, timeout=30,
                  env={"http_proxy": "http://127.0.0.1:%d" % forward_proxy.port})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "echo: via-proxy-fresh"
    assert len(forward_proxy.seen) == 1


def test_dead_proxy_fails_the_call(od, server, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % port)
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p, num_retries=0)) == ""
    assert server.attempts_for(p) == 0


# ------------------------------------------------------------------- refused
def test_connection_refused_fails_fast(od):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    assert arun(od.run_openrouter_async("fake/echo", uniq(), num_retries=0,
                                        api_base="http://127.0.0.1:%d/api/v1" % port)) == ""
    assert time.monotonic() - t0 < bound(1.0)


def test_unresolvable_host_fails_without_hanging(od):
    t0 = time.monotonic()
    out = arun(od.run_openrouter_async("fake/echo", uniq(), num_retries=0, timeout=5,
                                       api_base="http://no-such-host.invalid/api/v1"))
    assert out == ""
    assert time.monotonic() - t0 < bound(6)


# ---------------------------------------------------------------------- URLs
def test_more_urls_in_flight_than_the_engine_keeps_parsed_each_go_where_sent(od, server,
                                                                             concurrency_cap):
    """The engine hands libcurl parsed URLs and keeps a few (8), replacing one only when no
    call uses it; calls to more URLs than that at once, then again, then interleaved with a
    URL that does not parse, must each reach the path they were sent to."""
    import asyncio

    concurrency_cap(64)
    bases = [server.base_url.replace("/api/v1", "/u%d/api/v1" % i) for i in range(20)]

    async def one(base, tag):
        p = uniq(tag)
        out = await od.run_openrouter_async("fake/slow-150", p, api_base=base, num_retries=0)
        return p, base, out

    async def rounds():
        done = []
        for r in range(2):
            done += await asyncio.gather(*(one(b, "r%d" % r) for b in bases))
        mixed = [b if i % 3 else "http://[::1" for i, b in enumerate(bases)]
        done += await asyncio.gather(*(one(b, "mixed") for b in mixed))
        return done

    results = arun(rounds(), timeout=60)
    assert len(results) == 60
    for p, base, out in results:
        if base == "http://[::1":
            assert out == ""
            continue
        assert out == "echo: " + p
        [req] = server.requests_for(p)
        assert "http://127.0.0.1:%d%s" % (server.port, req["path"]) == base + "/chat/completions"
