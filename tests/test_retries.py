"""Which failures are retried, how often, and how long the engine waits."""

import logging
import time

import pytest

from helpers import arun, bound, bounded, run_py, uniq
from openrouter_direct._server import FakeOpenRouter


def engine_attempts(caplog, model):
    """The attempts the engine reports in the one failure line of a call to model."""
    lines = [r.getMessage() for r in caplog.records
             if r.name == "openrouter_direct" and r.levelno == logging.ERROR
             and "(%s)" % model in r.getMessage()]
    assert len(lines) == 1, lines
    return int(lines[0].split(" failed after ")[1].split(" attempt")[0])

RETRYABLE_MODES = ["503", "502", "500", "429", "408", "reset", "reset-midbody",
                   "truncated", "error200"]


@pytest.fixture(autouse=True)
def fixed_cap_for_429(request, od):
    """A 429 counts against num_retries only with the governor off (OPENROUTER_ADAPTIVE=0);
    with it on, a 429 is a wait (tests/test_governor.py). The 429 cases here pin the former."""
    spec = getattr(request.node, "callspec", None)
    if spec is not None and "429" in [str(v) for v in spec.params.values()]:
        od.configure(adaptive=False)
        yield
        od.configure(adaptive=True)
    else:
        yield


@pytest.mark.parametrize("mode", RETRYABLE_MODES)
@pytest.mark.parametrize("failures_before_success", [0, 1, 2])
def test_transient_failures_are_retried_until_success(od, server, mode,
                                                      failures_before_success):
    prompt = uniq()
    model = "fake/flaky-%d-%s" % (failures_before_success, mode)
    out = arun(od.run_openrouter_async(model, prompt, num_retries=3))
    assert out == "echo: " + prompt
    assert server.attempts_for(prompt) == failures_before_success + 1


@pytest.mark.parametrize("failures_before_success", [0, 1])
def test_stalled_attempt_times_out_and_is_retried(od, server, failures_before_success):
    prompt = uniq()
    model = "fake/flaky-%d-stall" % failures_before_success
    out = arun(od.run_openrouter_async(model, prompt, num_retries=2, timeout=0.4))
    assert out == "echo: " + prompt
    assert server.attempts_for(prompt) == failures_before_success + 1


def test_sync_call_retries_transient_failures(od, server):
    prompt = uniq()
    out = bounded(od.run_openrouter, "fake/flaky-2-503", prompt, num_retries=3)
    assert out == "echo: " + prompt
    assert server.attempts_for(prompt) == 3


@pytest.mark.parametrize("mode", RETRYABLE_MODES)
def test_num_retries_two_means_exactly_three_attempts(od, mode, caplog):
    # libcurl itself resends a request when a *reused* keep-alive connection dies before any
    # byte of the reply (Curl_retry_request, up to 5 times per transfer): on the session's
    # server, where earlier tests left idle connections, a reset could be seen up to six times
    # per engine attempt. A server of its own has none: the first attempt opens a connection,
    # a reset closes it, and so does each retry's, so the server sees exactly the engine's 3.
    caplog.set_level(logging.ERROR, logger="openrouter_direct")
    prompt, model = uniq(), "fake/flaky-99-%s" % mode
    before = od.stats()["retries"]
    with FakeOpenRouter() as srv:
        out = arun(od.run_openrouter_async(model, prompt, num_retries=2, api_base=srv.base_url))
        assert out == ""
        assert engine_attempts(caplog, model) == 3  # the engine's own count
        assert od.stats()["retries"] - before == 2
        assert srv.attempts_for(prompt) == 3


@pytest.mark.parametrize("mode", RETRYABLE_MODES)
def test_strict_mode_counts_three_attempts_for_num_retries_two(od, server, mode):
    with pytest.raises(od.OpenRouterError) as info:
        arun(od.run_openrouter_async("fake/flaky-99-%s" % mode, uniq(), num_retries=2,
                                     raise_on_error=True))
    assert info.value.attempts == 3


def test_num_retries_zero_means_one_attempt(od, server):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/status-503", prompt, num_retries=0)) == ""
    assert server.attempts_for(prompt) == 1


def test_default_is_five_retries(od, server):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/status-503", prompt)) == ""
    assert server.attempts_for(prompt) == 6


def test_sync_default_is_five_retries(od, server):
    prompt = uniq()
    assert bounded(od.run_openrouter, "fake/status-502", prompt) == ""
    assert server.attempts_for(prompt) == 6


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 520, 529])
def test_retryable_status_is_retried(od, server, status):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/status-%d" % status, prompt,
                                        num_retries=1)) == ""
    assert server.attempts_for(prompt) == 2


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
def test_client_error_status_is_tried_once(od, server, status):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/status-%d" % status, prompt,
                                        num_retries=5)) == ""
    assert server.attempts_for(prompt) == 1


def test_connection_refused_is_retried(od, server, caplog):
    import socket
    caplog.set_level(logging.DEBUG, logger="openrouter_direct")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    model = "fake/refused-" + uniq()
    before = od.stats()
    t0 = time.monotonic()
    out = arun(od.run_openrouter_async(model, uniq(), num_retries=2,
                                       api_base="http://127.0.0.1:%d/api/v1" % port))
    assert out == ""
    assert time.monotonic() - t0 < bound(3)
    assert engine_attempts(caplog, model) == 3
    # one DEBUG line per attempt, none of which got an HTTP status
    per_attempt = [r.getMessage() for r in caplog.records
                   if r.levelno == logging.DEBUG and "model=%s " % model in r.getMessage()]
    assert len(per_attempt) == 3, per_attempt
    assert all("status=Couldn't connect to server" in m for m in per_attempt), per_attempt
    after = od.stats()
    assert after["retries"] - before["retries"] == 2
    assert (after["failed_by_reason"].get("connection", 0)
            - before["failed_by_reason"].get("connection", 0)) == 1


def test_retry_resends_identical_body(od, server):
    prompt = uniq()
    arun(od.run_openrouter_async("fake/flaky-2-500", prompt, num_retries=2, seed=3))
    raws = [r["raw"] for r in server.requests_for(prompt)]
    assert len(raws) == 3 and len(set(raws)) == 1


def test_retry_after_seconds_header_is_honoured(od, server, adaptive_off):
    prompt = uniq()
    t0 = time.monotonic()
    assert arun(od.run_openrouter_async("fake/retry-after-1", prompt, num_retries=1)) == ""
    elapsed = time.monotonic() - t0
    reqs = server.requests_for(prompt)
    assert len(reqs) == 2
    assert reqs[1]["t"] - reqs[0]["t"] >= 0.9
    assert elapsed < bound(5)


def test_retry_after_ms_header_is_honoured(od, server, adaptive_off):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/retry-after-ms-400", prompt,
                                        num_retries=1)) == ""
    reqs = server.requests_for(prompt)
    assert len(reqs) == 2
    gap = reqs[1]["t"] - reqs[0]["t"]
    assert 0.35 <= gap < bound(3)


def test_retry_after_zero_retries_at_once(od, server, adaptive_off):
    prompt = uniq()
    t0 = time.monotonic()
    out = arun(od.run_openrouter_async("fake/flaky-3-429", prompt, num_retries=3))
    assert out == "echo: " + prompt
    assert time.monotonic() - t0 < bound(2)


def test_no_wait_after_the_last_attempt_even_with_long_retry_after(od, server, adaptive_off):
    prompt = uniq()
    t0 = time.monotonic()
    assert arun(od.run_openrouter_async("fake/retry-after-120", prompt, num_retries=0)) == ""
    assert time.monotonic() - t0 < bound(1.0)
    assert server.attempts_for(prompt) == 1


def test_backoff_grows_from_base_delay_and_is_capped(server):
    """Delays from the environment (read per call) with nothing else set: a fresh interpreter."""
    code = r'''
import openrouter_direct as od, sys
out = od.run_openrouter("fake/status-503", "BACKOFF-A", num_retries=3)
assert out == "", out
out = od.run_openrouter("fake/status-503", "BACKOFF-B", num_retries=3)
'''
    proc = run_py(code, timeout=60, env={"OPENROUTER_RETRY_BASE_DELAY": "0.2",
                                          "OPENROUTER_RETRY_MAX_DELAY": "0.3"})
    assert proc.returncode == 0, proc.stderr
    for tag in ("BACKOFF-A", "BACKOFF-B"):
        ts = [r["t"] for r in server.requests_for(tag)]
        assert len(ts) == 4
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        # nominal 0.2, 0.3 (0.4 capped), 0.3 (0.8 capped); jitter takes up to 25 % off each
        # (openai-python's 1 - 0.25 * random()); the upper end allows for a loaded machine
        assert gaps[0] >= 0.2 * 0.75 - 0.01, gaps
        assert sum(gaps) >= 0.8 * 0.75 - 0.03, gaps
        assert max(gaps) <= bound(0.3 + 0.25), gaps


def test_small_retry_delay_env_keeps_retries_fast(od, server):
    prompt = uniq()
    t0 = time.monotonic()
    assert arun(od.run_openrouter_async("fake/status-503", prompt, num_retries=5)) == ""
    assert server.attempts_for(prompt) == 6
    assert time.monotonic() - t0 < bound(1.5)


def test_retry_after_http_date_is_honoured(od, server, adaptive_off):
    from email.utils import formatdate
    prompt = uniq()
    when = formatdate(time.time() + 2, usegmt=True)  # whole seconds: waits 1..2 s
    out = arun(od.run_openrouter_async("fake/retry-after-" + when, prompt, num_retries=1))
    assert out == ""
    reqs = server.requests_for(prompt)
    assert len(reqs) == 2
    assert 0.5 <= reqs[1]["t"] - reqs[0]["t"] < bound(3.5)
