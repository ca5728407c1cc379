"""od.metrics(prefix): the change since the last read, as one flat dict of numbers (wandb.log)."""

import asyncio
import json

import pytest

from helpers import arun, bounded, run_py, uniq


def test_metrics_are_flat_numbers_with_the_prefix(od, server):
    od.metrics(prefix="judge/")
    arun(od.run_openrouter_async("fake/echo", uniq()))
    m = od.metrics(prefix="judge/")
    assert m and all(k.startswith("judge/") for k in m)
    assert all(type(v) in (int, float) for v in m.values()), m
    for k in ("calls", "succeeded", "failed", "cancelled", "retries", "rate_limited", "cost",
              "prompt_tokens", "completion_tokens", "tokens", "in_flight", "queued",
              "interval_s", "latency_p50_ms", "latency_p95_ms"):
        assert "judge/" + k in m, k
    assert all(k.startswith("openrouter/") for k in od.metrics())   # the default prefix


def test_metrics_count_only_the_interval(server):
    """In a fresh process, so that no other test's calls fall in the intervals."""
    code = r'''
import asyncio, json
import openrouter_direct as od
od.configure(adaptive=False)   # the 429 below spends its two retries, as the fixed cap has it

async def calls(model, n, **kw):
    return await asyncio.gather(*(od.run_openrouter_async(model, "p%d" % i, **kw)
                                  for i in range(n)))

first = od.metrics(prefix="judge/")
asyncio.run(calls("fake/echo", 5))
asyncio.run(calls("fake/status-400", 2, num_retries=0))
asyncio.run(calls("fake/status-429", 1, num_retries=2))
a = od.metrics(prefix="judge/")
asyncio.run(calls("fake/echo", 3))
b = od.metrics(prefix="judge/")
c = od.metrics(prefix="judge/")
print(json.dumps([first, a, b, c, od.stats()["cost"]]))
'''
    proc = run_py(code, env={"OPENAI_API_BASE": server.base_url})
    assert proc.returncode == 0, proc.stderr
    first, a, b, c, cost = json.loads(proc.stdout)
    assert first["judge/calls"] == 0 and "judge/latency_p50_ms" not in first
    assert (a["judge/calls"], a["judge/succeeded"], a["judge/failed"]) == (8, 5, 3)
    assert a["judge/failed/http_status"] == 3
    assert a["judge/retries"] == 2 and a["judge/rate_limited"] == 3
    assert a["judge/tokens"] == a["judge/prompt_tokens"] + a["judge/completion_tokens"] > 0
    assert (b["judge/calls"], b["judge/succeeded"], b["judge/failed"]) == (3, 3, 0)
    assert b["judge/failed/http_status"] == 0 and b["judge/rate_limited"] == 0
    assert a["judge/cost"] > 0 and b["judge/cost"] > 0
    assert a["judge/cost"] + b["judge/cost"] == pytest.approx(cost)
    assert c["judge/calls"] == 0 and c["judge/cost"] == 0
    assert "judge/latency_p50_ms" not in c and c["judge/interval_s"] >= 0


def test_latency_quantiles_cover_only_the_interval(od, server):
    od.metrics()
    for _ in range(4):
        bounded(od.run_openrouter, "fake/echo", uniq())
    fast = od.metrics()
    bounded(od.run_openrouter, "fake/slow-300", uniq())
    bounded(od.run_openrouter, "fake/slow-300", uniq())
    slow = od.metrics()
    assert fast["openrouter/latency_p95_ms"] < 250
    assert 300 * 0.97 <= slow["openrouter/latency_p50_ms"] < 2000
    assert slow["openrouter/latency_p50_ms"] <= slow["openrouter/latency_p95_ms"]
    # the cumulative p50 of stats() still mixes both intervals
    assert od.stats()["latency_ms"]["p50"] < slow["openrouter/latency_p50_ms"]


def test_metrics_counts_cancelled_calls(od, server):
    async def go():
        t = asyncio.ensure_future(od.run_openrouter_async("fake/stall", uniq()))
        from helpers import await_until
        assert await await_until(lambda: od.stats()["in_flight"] >= 1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert await await_until(lambda: od.stats()["in_flight"] == 0)
    od.metrics()
    arun(go())
    assert od.metrics()["openrouter/cancelled"] == 1


def test_metrics_prefix_must_be_a_str(od):
    with pytest.raises(TypeError):
        od.metrics(prefix=3)
