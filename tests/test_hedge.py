"""Hedged requests: a call whose attempt runs past the recent p99 of its endpoint and model gets a
second attempt; the first reply wins, the other transfer is aborted (the server sees the client
go), and the caller gets exactly one reply. The budget bounds how many, the governor's rate
limits stop them, ``hedge=False`` and ``OPENROUTER_HEDGE=off`` turn them off, and strict mode and
cancellation behave as they do without hedging.

Each test has its own key, hence its own endpoint and a cold latency estimate: ``warm`` makes the
calls the estimate needs (128 successes) before a slow attempt is worth hedging. Slow attempts are
the fake server's scripted ones: a rule with ``times=1`` answers the call's first attempt only,
so the hedge (the same body again) gets the next rule, or a plain quick reply. A hedge that runs
past the delay too gets a second one, so a slow reply is scripted for as many attempts as may
ask, and attempts are counted as 1 + hedges sent. SLOW_MS is well past any delay the warm-up
can teach, even on a loaded machine or under a sanitizer (the delay is at least 100 ms).
"""

import asyncio
import json

import pytest

from helpers import arun, await_until, bound, first_call_error, run_py, uniq, wait_until

WARM = 140  # successes before the estimate is trusted: 128
SLOW_MS = 1000


def warm(od, tag=None):
    tag = tag or uniq("warm")
    out = arun(gather(od, ["%s-%d" % (tag, i) for i in range(WARM)]))
    assert out == ["echo: %s-%d" % (tag, i) for i in range(WARM)]


async def gather(od, prompts, **kw):
    return await asyncio.gather(*(od.run_openrouter_async("m/x", p, **kw) for p in prompts))


def hedge_stats(od):
    return od.stats()["hedge"]


def delta(after, before, key):
    return after[key] - before[key]


def one_reply_per_call(before, after):
    """Every call finished exactly once: a call that got two replies would count twice."""
    calls = after["calls"] - before["calls"]
    done = sum(after[k] - before[k] for k in ("succeeded", "failed", "cancelled"))
    return calls == done


def settled(od, server):
    """Nothing of ours left on the wire, on either side."""
    return wait_until(lambda: od.stats()["in_flight"] == 0 and server.in_progress == 0)


def test_a_stalled_first_attempt_is_hedged_and_the_hedge_wins(od, server):
    warm(od)
    prompt = uniq("stalled")
    server.script(fault="stall", match=prompt)       # the first attempt never answers
    before, hb = od.stats(), hedge_stats(od)
    out = od.run_openrouter("m/x", prompt, timeout=120, num_retries=0)
    assert out == "echo: " + prompt
    after, ha = od.stats(), hedge_stats(od)
    sent = delta(ha, hb, "sent")
    assert sent >= 1 and delta(ha, hb, "won") == 1
    assert server.attempts_for(prompt) == 1 + sent
    assert after["retries"] == before["retries"]     # a hedge is not a retry
    assert one_reply_per_call(before, after)
    # the stalled transfer was aborted: its connection closed, and the server saw it
    assert wait_until(lambda: server.abandoned == 1)
    assert settled(od, server)
    assert ha["time_saved_s"] >= hb["time_saved_s"]


def test_the_first_attempt_wins_when_it_answers_first(od, server):
    warm(od)
    prompt = uniq("slowish")
    server.script(reply="first", match=prompt, delay_ms=SLOW_MS)    # the first attempt
    # its hedge, and the second hedge a hedge gets when it too runs past the delay
    server.script(fault="stall", match=prompt, times=2)
    before, hb = od.stats(), hedge_stats(od)
    assert od.run_openrouter("m/x", prompt, timeout=120) == "first"
    after, ha = od.stats(), hedge_stats(od)
    sent = delta(ha, hb, "sent")
    assert sent >= 1 and delta(ha, hb, "won") == 0 and delta(ha, hb, "aborted") == sent
    assert server.attempts_for(prompt) == 1 + sent
    assert one_reply_per_call(before, after)
    assert wait_until(lambda: server.abandoned == sent)             # the hedges were aborted
    assert settled(od, server)


def test_hedge_false_sends_one_attempt(od, server):
    warm(od)
    slow, control = uniq("nohedge"), uniq("control")
    server.script(reply="slow", match=slow, delay_ms=SLOW_MS)
    server.script(reply="slow", match=control, delay_ms=SLOW_MS)
    # hedging allowed: a second attempt, which wins (its reply is quick). First: a slow success
    # would teach the estimate that 400 ms is normal.
    assert od.run_openrouter("m/x", control) == "echo: " + control
    assert server.attempts_for(control) >= 2
    hb = hedge_stats(od)
    assert od.run_openrouter("m/x", slow, hedge=False) == "slow"
    assert server.attempts_for(slow) == 1 and delta(hedge_stats(od), hb, "sent") == 0
    # the kwarg is ours: never sent to the server
    assert all("hedge" not in r["body"] for r in server.requests_for(slow))


def test_configure_hedge_off_sends_one_attempt(od, server, hedge_off):
    warm(od)
    prompt = uniq("off")
    server.script(reply="slow", match=prompt, delay_ms=SLOW_MS)
    hb = hedge_stats(od)
    assert od.run_openrouter("m/x", prompt) == "slow"
    assert server.attempts_for(prompt) == 1 and delta(hedge_stats(od), hb, "sent") == 0


_ENV_OFF = """
import json, sys
import openrouter_direct as od
for i in range(140):
    assert od.run_openrouter("m/x", "warm-%d" % i)
out = od.run_openrouter("m/x", sys.argv[1])
print(json.dumps({"out": out, "hedge": od.stats()["hedge"], "settings": od.configure()}))
"""


def test_hedge_env_off_sends_one_attempt(server):
    prompt = uniq("envoff")
    server.script(reply="slow", match=prompt, delay_ms=SLOW_MS)
    done = run_py(_ENV_OFF.replace("sys.argv[1]", repr(prompt)),
                  env={"OPENROUTER_HEDGE": "off"})
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["out"] == "slow" and got["hedge"]["sent"] == 0
    assert got["settings"]["hedge"] == "off"
    assert server.attempts_for(prompt) == 1     # only the slow call's own attempt


@pytest.mark.parametrize("var,value", [("OPENROUTER_HEDGE", "p100"), ("OPENROUTER_HEDGE", "fast"),
                                       ("OPENROUTER_HEDGE_BUDGET", "2"),
                                       ("OPENROUTER_HEDGE_BUDGET", "lots")])
def test_bad_hedge_variables_fail_the_first_call_clearly(server, var, value):
    said = first_call_error(var, value)
    assert said.startswith("ValueError:") and var in said, said


def test_configure_checks_and_reports_the_hedge_settings(od):
    got = od.configure(hedge="p95", hedge_budget=0.1)
    assert got["hedge"] == "p95" and got["hedge_budget"] == pytest.approx(0.1)
    assert od.configure(hedge=False)["hedge"] == "off"
    for bad in ("p100", "p10", "often", True, 99):
        with pytest.raises(ValueError):
            od.configure(hedge=bad)
    with pytest.raises(ValueError):
        od.configure(hedge_budget=1.5)
    with pytest.raises(TypeError):
        od.configure(hedge_budget="0.1")


def test_the_budget_caps_hedges_under_a_storm_of_slow_replies(od, server, concurrency_cap,
                                                              adaptive_off):
    # adaptive_off: every call of the storm on the wire at once, and room for every hedge
    concurrency_cap(256)
    budget, storm = 0.02, 100
    od.configure(hedge_budget=budget)
    warm(od)
    tag = uniq("storm")
    # every attempt of the storm is slow, hedges too: without a budget, all 100 would be hedged
    # 100 ms in, long before the first slow reply could move the estimate
    server.script(reply="slow", match=tag, delay_ms=SLOW_MS, times=None)
    hb, before = hedge_stats(od), od.stats()
    out = arun(gather(od, ["%s-%d" % (tag, i) for i in range(storm)]))
    assert out == ["slow"] * storm
    sent = delta(hedge_stats(od), hb, "sent")
    # each call's first attempt adds `budget` to the bucket, a hedge takes 1, and the bucket holds
    # at most a burst of max(2, 200 * budget) = 4 (what earlier calls of the process left in it)
    assert 1 <= sent <= 4 + budget * (WARM + storm), sent
    assert server.attempts_for(tag) == storm + sent
    assert one_reply_per_call(before, od.stats())
    assert settled(od, server)


def test_hedges_wait_for_a_slot_under_the_cap(od, server, concurrency_cap, adaptive_off):
    # adaptive_off: the cap alone bounds the calls on the wire, so that raising it makes room at
    # once (the governor's limit would grow back only with successes)
    concurrency_cap(2)
    warm(od)
    server.reset()                                       # max_concurrent from here on
    tag = uniq("capped")
    server.script(fault="stall", match=tag, times=2)     # both calls' first attempts

    async def scenario():
        task = asyncio.ensure_future(gather(od, ["%s-%d" % (tag, i) for i in range(2)]))
        # both slots are held by the stalled attempts: their hedges wait for one
        assert await await_until(lambda: od.stats()["queued"] >= 1)
        assert server.attempts_for(tag) == 2 and od.stats()["hedge"]["sent"] == sent_before
        od.configure(max_concurrent_calls=4)             # room: the hedges go, and win
        return await task

    sent_before = hedge_stats(od)["sent"]
    out = arun(scenario())
    assert out == ["echo: %s-%d" % (tag, i) for i in range(2)]
    assert server.max_concurrent <= 4 and server.attempts_for(tag) == 4
    assert wait_until(lambda: server.abandoned == 2)


def test_no_hedge_while_the_governor_is_rate_limiting(od, server, concurrency_cap):
    concurrency_cap(64)
    warm(od)
    server.rate_limit(rate=20, burst=2, retry_after=0.2)
    out = arun(gather(od, ["%s-%d" % (uniq("rl"), i) for i in range(12)]), timeout=60)
    assert all(out)
    url = server.base_url + "/chat/completions"
    ep = [v for k, v in od.stats()["endpoints"].items() if k.startswith(url)][-1]
    assert ep["rate_limited"] > 0
    server.rate_limit(None)
    prompt = uniq("limited")
    server.script(reply="slow", match=prompt, delay_ms=SLOW_MS)
    hb = hedge_stats(od)
    assert od.run_openrouter("m/x", prompt) == "slow"
    assert server.attempts_for(prompt) == 1 and delta(hedge_stats(od), hb, "sent") == 0


def test_strict_mode_a_failed_hedge_is_not_the_calls_failure(od, server):
    warm(od)
    prompt = uniq("strict-hedge-fails")
    server.script(reply="first", match=prompt, delay_ms=SLOW_MS)  # the call's own attempt
    server.script(status=400, match=prompt, times=2)              # its hedges
    hb, before = hedge_stats(od), od.stats()
    assert od.run_openrouter("m/x", prompt, raise_on_error=True) == "first"
    ha = hedge_stats(od)
    sent = delta(ha, hb, "sent")
    assert sent >= 1 and delta(ha, hb, "failed") == sent
    assert one_reply_per_call(before, od.stats())


def test_strict_mode_the_hedge_stands_in_for_a_failed_first_attempt(od, server):
    warm(od)
    prompt = uniq("stand-in")
    server.script(status=400, match=prompt, delay_ms=SLOW_MS)    # the call's own attempt fails
    # while its hedges still run (a second one goes when the first runs past the delay)
    server.script(reply="hedged", match=prompt, delay_ms=SLOW_MS + 300, times=2)
    hb, before = hedge_stats(od), od.stats()
    out = od.run_openrouter("m/x", prompt, raise_on_error=True, num_retries=0)
    assert out == "hedged"
    after, ha = od.stats(), hedge_stats(od)
    assert delta(ha, hb, "won") == 1
    assert server.attempts_for(prompt) == 1 + delta(ha, hb, "sent")
    assert after["retries"] == before["retries"]
    assert one_reply_per_call(before, after)


def test_strict_mode_both_attempts_failing_is_one_failure(od, server):
    warm(od)
    prompt = uniq("both-fail")
    server.script(status=400, match=prompt, delay_ms=SLOW_MS, times=3)
    before, hb = od.stats(), hedge_stats(od)
    with pytest.raises(od.APIStatusError) as info:
        od.run_openrouter("m/x", prompt, raise_on_error=True, num_retries=3)
    assert info.value.status_code == 400
    after, ha = od.stats(), hedge_stats(od)
    # a 400 is not retried: the hedges stood in, failed, and that was the call's end
    sent = delta(ha, hb, "sent")
    assert sent >= 1 and delta(ha, hb, "failed") == sent
    assert server.attempts_for(prompt) == 1 + sent and after["retries"] == before["retries"]
    assert after["failed"] - before["failed"] == 1
    assert one_reply_per_call(before, after)


def test_cancelling_a_hedged_call_aborts_both_attempts(od, server):
    warm(od)
    prompt = uniq("cancel")
    server.script(fault="stall", match=prompt, times=2)          # the attempt and its hedge
    before = od.stats()

    async def scenario():
        task = asyncio.ensure_future(od.run_openrouter_async("m/x", prompt))
        assert await await_until(lambda: server.attempts_for(prompt) == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    arun(scenario())
    assert wait_until(lambda: server.abandoned == 2)             # both transfers closed
    assert settled(od, server)
    after = od.stats()
    assert after["cancelled"] - before["cancelled"] == 1
    assert one_reply_per_call(before, after)


def test_a_step_with_stalls_gets_every_reply_once(od, server, concurrency_cap):
    """The bench's step in small: random stalls of a share of attempts, every call right, one
    reply each, the stalls hedged rather than waited out, nothing left on the wire."""
    concurrency_cap(32)
    od.configure(hedge_budget=0.3)
    warm(od)
    n, tag = 200, uniq("step")
    server.latency_ms, server.latency_jitter = 20.0, 0.5
    server.stall_rate, server.stall_s = 0.04, 600.0
    try:
        before, hb = od.stats(), hedge_stats(od)
        # num_retries: should an attempt and both its hedges stall (p = 0.04 ** 3), the attempt's
        # timeout and a retry still bring the reply
        out = arun(gather(od, ["%s-%d" % (tag, i) for i in range(n)], num_retries=2),
                   timeout=bound(120))
        stalls = server.stalls
    finally:
        server.latency_ms = server.latency_jitter = 0.0
        server.stall_rate = server.stall_s = 0.0
    assert out == ["echo: %s-%d" % (tag, i) for i in range(n)]
    after, ha = od.stats(), hedge_stats(od)
    assert one_reply_per_call(before, after) and after["failed"] == before["failed"]
    assert stalls > 0 and delta(ha, hb, "won") >= 1
    # a stalled attempt only ends when we abort it: every one of them was
    assert wait_until(lambda: server.abandoned == stalls)
    assert settled(od, server)
