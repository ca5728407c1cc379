"""The wire underneath: proxies from the environment, refused ports, bad hosts."""

import logging
import socket
import time

import pytest

from helpers import ForwardProxy, arun, run_py, uniq

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
    assert server.attempts_for(p) == 1


def test_no_proxy_bypasses_the_proxy(od, server, forward_proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:%d" % forward_proxy.port)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p, num_retries=0)) == "echo: " + p
    assert forward_proxy.seen == []
    assert server.attempts_for(p) == 1


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
    assert time.monotonic() - t0 < 1.0


def test_unresolvable_host_fails_without_hanging(od):
    t0 = time.monotonic()
    out = arun(od.run_openrouter_async("fake/echo", uniq(), num_retries=0, timeout=5,
                                       api_base="http://no-such-host.invalid/api/v1"))
    assert out == ""
    assert time.monotonic() - t0 < 6
