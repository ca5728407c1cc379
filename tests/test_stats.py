"""od.stats(): process-wide cumulative counters (tests compare before/after)."""

import asyncio
import math


from helpers import arun, await_until, bound, run_py, uniq, wait_until

COUNTERS = ("calls", "succeeded", "failed", "cancelled", "retries", "prompt_tokens",
            "completion_tokens")


def delta(before, after, key):
    return after[key] - before[key]


def dict_delta(before, after, key):
    b, a = before[key], after[key]
    return {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b) if a.get(k, 0) != b.get(k, 0)}


def test_stats_has_documented_keys_and_types(od):
    s = od.stats()
    for k in COUNTERS + ("in_flight", "queued"):
        assert isinstance(s[k], int) and s[k] >= 0, k
    assert isinstance(s["cost"], float)
    assert isinstance(s["failed_by_reason"], dict)
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in s["failed_by_reason"].items())
    assert isinstance(s["http_status"], dict)
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in s["http_status"].items())
    assert set(s["latency_ms"]) >= {"p50", "p95", "p99"}


def test_fresh_process_has_zero_counters_and_no_latency(server):
    code = r'''
import openrouter_direct as od
s = od.stats()
assert all(s[k] == 0 for k in ("calls", "succeeded", "failed", "cancelled", "retries",
                                "in_flight", "queued", "prompt_tokens", "completion_tokens")), s
assert s["cost"] == 0 and s["failed_by_reason"] == {} and s["http_status"] == {}, s
assert s["latency_ms"] == {"p50": None, "p95": None, "p99": None}, s
assert od.run_openrouter("fake/echo", "stats-fresh") == "echo: stats-fresh"
s = od.stats()
assert s["calls"] == 1 and s["succeeded"] == 1 and s["http_status"] == {200: 1}, s
assert all(isinstance(s["latency_ms"][p], float) for p in ("p50", "p95", "p99")), s
print("ok")
'''
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_successes_count_calls_tokens_and_cost(od, server):
    before = od.stats()
    prompts = [uniq() + " three more words" for _ in range(7)]

    async def main():
        return await asyncio.gather(*(od.run_openrouter_async("fake/echo", p) for p in prompts))

    assert arun(main()) == ["echo: " + p for p in prompts]
    after = od.stats()
    assert delta(before, after, "calls") == 7
    assert delta(before, after, "succeeded") == 7
    assert delta(before, after, "failed") == 0
    assert delta(before, after, "prompt_tokens") == server.usage_sent["prompt_tokens"]
    assert delta(before, after, "completion_tokens") == server.usage_sent["completion_tokens"]
    assert math.isclose(delta(before, after, "cost"), server.usage_sent["cost"],
                        rel_tol=1e-6, abs_tol=1e-12)
    assert dict_delta(before, after, "http_status") == {200: 7}


def test_failures_count_by_reason_and_status(od):
    before = od.stats()
    arun(od.run_openrouter_async("fake/status-503", uniq(), num_retries=2))
    arun(od.run_openrouter_async("fake/status-400", uniq(), num_retries=2))
    arun(od.run_openrouter_async("fake/garbage", uniq(), num_retries=0))
    arun(od.run_openrouter_async("fake/stall", uniq(), num_retries=0, timeout=0.2))
    after = od.stats()
    assert delta(before, after, "calls") == 4
    assert delta(before, after, "failed") == 4
    assert delta(before, after, "succeeded") == 0
    assert delta(before, after, "retries") == 2
    reasons = dict_delta(before, after, "failed_by_reason")
    assert reasons == {"http_status": 2, "invalid_response": 1, "timeout": 1}
    statuses = dict_delta(before, after, "http_status")
    assert statuses.get(503, 0) >= 1 and statuses.get(400, 0) == 1


def test_retries_counted_for_eventually_successful_call(od):
    before = od.stats()
    p = uniq()
    assert arun(od.run_openrouter_async("fake/flaky-2-502", p)) == "echo: " + p
    after = od.stats()
    assert delta(before, after, "retries") == 2
    assert delta(before, after, "succeeded") == 1
    assert delta(before, after, "failed") == 0
    assert delta(before, after, "calls") == 1


def test_provider_error_counted_by_reason(od):
    before = od.stats()
    arun(od.run_openrouter_async("fake/error200-502", uniq(), num_retries=0))
    after = od.stats()
    assert dict_delta(before, after, "failed_by_reason") == {"provider_error": 1}


def test_cancelled_calls_are_counted_and_not_failed(od, server):
    before = od.stats()

    async def main():
        t = asyncio.ensure_future(od.run_openrouter_async("fake/stall", uniq()))
        await await_until(lambda: server.in_progress == 1, 5)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)

    arun(main())
    assert wait_until(lambda: od.stats()["in_flight"] == 0, 1.0)
    after = od.stats()
    assert delta(before, after, "cancelled") == 1
    assert delta(before, after, "failed") == 0


def test_in_flight_and_queued_reflect_the_cap(od, server, concurrency_cap):
    concurrency_cap(2)

    async def main():
        tasks = [asyncio.ensure_future(od.run_openrouter_async("fake/slow-1500", uniq()))
                 for _ in range(5)]
        ok = await await_until(lambda: od.stats()["in_flight"] == 2
                               and od.stats()["queued"] == 3, 3)
        snapshot = od.stats()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return ok, snapshot

    ok, snap = arun(main(), 20)
    assert ok, snap
    assert wait_until(lambda: od.stats()["in_flight"] == 0 and od.stats()["queued"] == 0, 1.0)


def test_latency_percentiles_are_ordered_and_plausible(server):
    code = r'''
import asyncio, openrouter_direct as od
async def main():
    await asyncio.gather(*(od.run_openrouter_async("fake/echo", "lat-%d" % i) for i in range(40)))
    await asyncio.gather(*(od.run_openrouter_async("fake/slow-300", "lat-s%d" % i) for i in range(3)))
asyncio.run(main())
lat = od.stats()["latency_ms"]
print(lat["p50"], lat["p95"], lat["p99"])
'''
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    p50, p95, p99 = map(float, proc.stdout.split())
    assert 0 <= p50 <= p95 <= p99
    assert p50 < bound(150)  # most calls are instant echoes
    assert p99 >= 250     # the three 300 ms calls are the top 7 %


def test_stats_returns_a_snapshot_not_a_live_view(od):
    s = od.stats()
    calls = s["calls"]
    arun(od.run_openrouter_async("fake/echo", uniq()))
    assert s["calls"] == calls
    assert od.stats()["calls"] == calls + 1
