"""The governor: under a rate limit no call is lost, rate-limit answers spend no retries, one
cooldown per endpoint holds new attempts, the limit adapts, and the cost guard stops spending.

Every test runs against the fake server's shared token bucket (``server.rate_limit``), which
logs each chat attempt with its arrival time and status, so the assertions are about what the
server saw.
"""

import asyncio
import json
import logging
import os
import subprocess
import sys

import pytest

from helpers import REPO, arun, bounded, first_call_error, uniq

LOGGER = "openrouter_direct"


def endpoint(od, server):
    """This test's endpoint: each test has a key of its own, and a second key to the same URL is
    listed as "<url> #2" and so on, in the order they were first used."""
    url = server.base_url + "/chat/completions"
    mine = [v for k, v in od.stats()["endpoints"].items() if k == url or k.startswith(url + " #")]
    return mine[-1]


def statuses(server):
    return [code for _, code in server.rate_log]


async def gather(od, n, tag, **kw):
    return await asyncio.gather(*(od.run_openrouter_async("m/x", "%s-%d" % (tag, i), **kw)
                                  for i in range(n)))


def test_rate_limited_calls_all_succeed_without_spending_retries(od, server, concurrency_cap):
    concurrency_cap(64)
    server.rate_limit(rate=60, burst=5, retry_after=0.2)
    before = od.stats()
    tag = uniq()
    out = arun(gather(od, 40, tag, num_retries=0), timeout=60)
    assert out == ["echo: %s-%d" % (tag, i) for i in range(40)]
    seen = statuses(server)
    assert seen.count(200) == 40 and seen.count(429) > 0
    after = od.stats()
    assert after["retries"] == before["retries"]            # a 429 is a wait, not a retry
    assert after["failed"] == before["failed"]
    assert after["rate_limited"] - before["rate_limited"] == seen.count(429)
    ep = endpoint(od, server)
    assert ep["rate_limited"] >= seen.count(429) and ep["waited_calls"] >= 1
    assert ep["cooldown_s"] > 0


def test_a_rate_limit_is_met_by_pacing_starts(od, server, concurrency_cap):
    # Replies come back at once, so the calls on the wire say nothing about the rate: only
    # pacing the starts keeps a 40/s bucket from turning most attempts away.
    concurrency_cap(64)
    server.rate_limit(rate=40, burst=4, retry_after=0.1)
    tag = uniq()
    out = arun(gather(od, 160, tag, num_retries=0), timeout=120)
    assert out == ["echo: %s-%d" % (tag, i) for i in range(160)]
    seen = statuses(server)
    assert seen.count(200) == 160
    assert seen.count(429) < 0.15 * 160, seen.count(429)
    ep = endpoint(od, server)
    assert 0 < ep["rate"] < 8 * 40, ep["rate"]


def test_cooldown_holds_every_new_attempt_until_retry_after_passes(od, server, concurrency_cap):
    concurrency_cap(64)
    # 3 tokens, refilled at 5/s: of 6 calls sent at once, 3 are turned away with Retry-After: 1.
    server.rate_limit(rate=5, burst=3, retry_after=1.0)
    out = arun(gather(od, 6, uniq()), timeout=60)
    assert all(out)
    log = server.rate_log
    t0 = min(t for t, code in log if code == 429)
    # Attempts already on their way when the 429 came may land just after it; after that,
    # nothing until the cooldown has passed.
    later = [t - t0 for t, _ in log if t - t0 > 0.3]
    assert later and min(later) >= 1.0, later


def test_rate_limit_wait_budget_ends_the_call_as_rate_limited(od, server, caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER)
    od.configure(rate_limit_wait=0.6)
    server.rate_limit(rate=0.001, burst=0, retry_after=0.2)
    assert arun(od.run_openrouter_async("m/x", uniq(), num_retries=0)) == ""
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 1 and "[rate_limited]" in lines[0], lines
    assert "waiting" in lines[0] and "OPENROUTER_RATE_LIMIT_WAIT=0.6" in lines[0]
    assert "429" in lines[0]
    # More than num_retries + 1 attempts: the waits did not spend retries.
    assert statuses(server).count(429) >= 2
    with pytest.raises(od.RateLimitError) as info:
        arun(od.run_openrouter_async("m/x", uniq(), raise_on_error=True))
    assert info.value.reason == "rate_limited" and info.value.status_code == 429


@pytest.mark.parametrize("shape", ["402", "503", "429-bare"])
def test_every_rate_limit_shape_is_waited_out(od, server, shape, concurrency_cap):
    concurrency_cap(64)
    server.rate_limit(rate=40, burst=3, retry_after=0.1, shape=shape)
    out = arun(gather(od, 12, uniq(), num_retries=0), timeout=60)
    assert all(out)
    assert statuses(server).count(int(shape[:3])) > 0


def test_a_402_out_of_credits_is_not_a_rate_limit(od, server):
    server.script(status=402, times=None)
    assert arun(od.run_openrouter_async("m/x", uniq())) == ""
    assert len(server.chat_requests()) == 1


def test_limit_adapts_to_an_in_flight_cap(od, server, concurrency_cap):
    concurrency_cap(64)
    server.latency_ms = 30
    try:
        server.rate_limit(rate=1e6, burst=1e6, retry_after=0.05, max_in_flight=4)
        out = arun(gather(od, 120, uniq(), num_retries=0), timeout=60)
    finally:
        server.latency_ms = 0
    assert all(out)
    seen = statuses(server)
    # Without adaptation (see the next test) most attempts beyond 4 would be turned away.
    assert seen.count(429) < 0.5 * seen.count(200), (seen.count(429), seen.count(200))
    assert endpoint(od, server)["limit"] <= 8


def test_adaptive_off_behaves_as_today(od, server, concurrency_cap, adaptive_off):
    concurrency_cap(64)
    server.latency_ms = 30
    try:
        server.rate_limit(rate=1e6, burst=1e6, retry_after=0.05, max_in_flight=4)
        before = od.stats()
        out = arun(gather(od, 40, uniq(), num_retries=1), timeout=60)
    finally:
        server.latency_ms = 0
    assert out.count("") > 0                      # 429s spent the one retry
    after = od.stats()
    assert after["retries"] > before["retries"]
    assert endpoint(od, server)["limit"] == 64   # fixed at the cap


def test_cost_guard_refuses_new_calls_once_spent(od, server, caplog):
    caplog.set_level(logging.ERROR, logger=LOGGER)
    assert arun(od.run_openrouter_async("m/x", uniq()))
    one = server.usage_sent["cost"]
    spent = od.stats()["cost"]
    assert one > 0
    # Half a call of room left: the second call goes (nothing is spent yet), the third not.
    od.configure(max_cost=spent + 0.5 * one)
    try:
        assert arun(od.run_openrouter_async("m/x", uniq()))
        assert od.stats()["cost"] == pytest.approx(spent + server.usage_sent["cost"] - one,
                                                   rel=1e-9)
        assert arun(od.run_openrouter_async("m/x", uniq())) == ""
        assert bounded(od.run_openrouter, "m/x", uniq()) == ""
        assert len(server.chat_requests()) == 2
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 1 and "OPENROUTER_MAX_COST" in lines[0], lines
        with pytest.raises(od.BudgetExceededError) as info:
            arun(od.run_openrouter_async("m/x", uniq(), raise_on_error=True))
        assert isinstance(info.value, od.OpenRouterError) and info.value.reason == "budget"
        assert od.stats()["failed_by_reason"]["budget"] >= 3
        od.configure(max_cost=0)   # no guard: calls go again
        assert arun(od.run_openrouter_async("m/x", uniq()))
    finally:
        od.configure(max_cost=0)


def test_configure_checks_its_arguments(od):
    with pytest.raises(TypeError):
        od.configure(max_cost="1")
    with pytest.raises(ValueError):
        od.configure(max_cost=-1)
    with pytest.raises(ValueError):
        od.configure(rate_limit_wait=float("nan"))
    with pytest.raises(TypeError):
        od.configure(adaptive=1)
    got = od.configure(rate_limit_wait=30)
    assert got["rate_limit_wait"] == 30 and got["adaptive"] is True and got["max_cost"] == 0


@pytest.mark.parametrize("var,value", [("OPENROUTER_RATE_LIMIT_WAIT", "soon"),
                                       ("OPENROUTER_MAX_COST", "-2"),
                                       ("OPENROUTER_ADAPTIVE", "maybe")])
def test_bad_governor_variables_fail_the_first_call_clearly(server, var, value):
    said = first_call_error(var, value)
    assert said.startswith("ValueError:") and var in said, said


def test_debug_log_shows_limit_changes(od, server, caplog, concurrency_cap):
    concurrency_cap(64)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server.rate_limit(rate=40, burst=3, retry_after=0.1)
    assert all(arun(gather(od, 12, uniq()), timeout=60))
    lines = [r.getMessage() for r in caplog.records if "governor" in r.getMessage()]
    assert any("rate limited" in line and "limit 8 ->" in line for line in lines), lines


_WORKER = """
import asyncio, json, sys
import openrouter_direct as od
async def main(n, tag):
    return await asyncio.gather(*(od.run_openrouter_async("m/x", "%s-%d" % (tag, i),
                                                          num_retries=0) for i in range(n)))
n, tag = int(sys.argv[1]), sys.argv[2]
out = asyncio.run(main(n, tag))
ok = sum(1 for i, text in enumerate(out) if text == "echo: %s-%d" % (tag, i))
print(json.dumps({"ok": ok, "stats": od.stats()}))
"""


def test_no_call_lost_across_processes_sharing_one_limit(server):
    server.rate_limit(rate=80, burst=10, retry_after=0.5)
    env = dict(os.environ, OPENROUTER_MAX_CONCURRENT_CALLS="256")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, "40", uniq("proc%d" % k)], env=env,
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(3)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["ok"] for r in results] == [40, 40, 40]
    assert all(r["stats"]["failed"] == 0 and r["stats"]["retries"] == 0 for r in results)
    seen = statuses(server)
    assert seen.count(200) == 120 and seen.count(429) > 0


def test_adaptive_env_off_keeps_the_fixed_cap(server):
    code = ("import openrouter_direct as od\n"
            "assert od.run_openrouter('m/x', 'fixed-cap') == 'echo: fixed-cap'\n"
            "ep = list(od.stats()['endpoints'].values())[0]\n"
            "print(od.configure()['adaptive'], ep['limit'])\n")
    env = dict(os.environ, OPENROUTER_ADAPTIVE="0", OPENROUTER_MAX_CONCURRENT_CALLS="37")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split() == ["False", "37"], out.stdout + out.stderr
