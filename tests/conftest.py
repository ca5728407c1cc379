"""Shared fixtures: one fake OpenRouter for the session, a clean environment per test.

Every test gets OPENAI_API_BASE pointing at the fake server, a fresh random
OPENAI_API_KEY (returned by the ``api_key`` fixture so tests can check it never
leaks), near-zero retry delays, no proxy variables, and a reset server.  A
faulthandler watchdog kills the run with tracebacks if one test hangs.
"""

import faulthandler
import os
import secrets
import sys

import pytest

# The environment of the session itself, for the interpreters the tests start (run_py copies
# it): the package reads the delays per call and LOGLEVEL at import, and the cap once, when a
# process first needs it. od_env below sets them again for each test.
os.environ["OPENROUTER_RETRY_BASE_DELAY"] = "0.01"
os.environ["OPENROUTER_RETRY_MAX_DELAY"] = "0.05"
for _name in ("OPENROUTER_MAX_CONCURRENT_CALLS", "LOGLEVEL", "OPENROUTER_RAISE_ON_ERROR",
              "OPENROUTER_ADAPTIVE", "OPENROUTER_RATE_LIMIT_WAIT", "OPENROUTER_MAX_COST",
              "OPENROUTER_HEDGE", "OPENROUTER_HEDGE_BUDGET"):
    os.environ.pop(_name, None)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from openrouter_direct._server import FakeOpenRouter  # noqa: E402

CLEARED_VARS = (
    "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
    "ALL_PROXY", "all_proxy", "OPENROUTER_RAISE_ON_ERROR", "OPENROUTER_API_KEY",
    "OPENROUTER_REFERER", "OPENROUTER_TITLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE",
    "LOGLEVEL", "OPENROUTER_MAX_CONCURRENT_CALLS",
)

HANG_LIMIT_S = 100  # no single test may take longer than this


def reset_governor():
    """The governor is process-wide: each test starts from its defaults, in slow start, with no
    cooldown left over from the test before."""
    from openrouter_direct import _api
    if _api._native is not None:
        _api._native.set_governor(1, 600.0, 0.0)
        _api._native.set_hedge(0.995, 0.05)
        _api._native.reset_governor()


@pytest.fixture(scope="session")
def server():
    with FakeOpenRouter() as srv:
        yield srv


@pytest.fixture(autouse=True)
def od_env(server, monkeypatch):
    key = "test-key-" + secrets.token_hex(12)
    monkeypatch.setenv("OPENAI_API_BASE", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OPENROUTER_RETRY_BASE_DELAY", "0.01")
    monkeypatch.setenv("OPENROUTER_RETRY_MAX_DELAY", "0.05")
    monkeypatch.setenv("LITELLM_DEFAULT_TIMEOUT", "30")  # safety net for stalls
    for name in CLEARED_VARS:
        monkeypatch.delenv(name, raising=False)
    server.reset()
    reset_governor()
    faulthandler.dump_traceback_later(HANG_LIMIT_S, exit=True)
    try:
        yield key
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def api_key(od_env):
    return od_env


@pytest.fixture
def od():
    import openrouter_direct
    return openrouter_direct


@pytest.fixture
def concurrency_cap(od):
    """Set the process-wide cap for one test; the previous value comes back after."""
    previous = od.configure()["max_concurrent_calls"]
    yield lambda n: od.configure(max_concurrent_calls=n)
    od.configure(max_concurrent_calls=previous)


@pytest.fixture
def hedge_off(od):
    """OPENROUTER_HEDGE=off for one test: one attempt at a time, as before hedging."""
    od.configure(hedge="off")
    yield
    od.configure(hedge="p99.5")


@pytest.fixture
def adaptive_off(od):
    """OPENROUTER_ADAPTIVE=0 for one test: today's fixed cap, a 429 spends a retry."""
    od.configure(adaptive=False)
    yield
    od.configure(adaptive=True)
