"""Per-attempt timeouts, and cancelling the awaiting task."""

import asyncio
import time

import pytest

from helpers import arun, await_until, bound, bounded, run_py, uniq, wait_until


def test_stalled_call_times_out_and_returns_empty(od, server):
    prompt = uniq()
    t0 = time.monotonic()
    assert arun(od.run_openrouter_async("fake/stall", prompt, timeout=0.5, num_retries=0)) == ""
    elapsed = time.monotonic() - t0
    assert 0.4 <= elapsed < bound(2.0)
    assert server.attempts_for(prompt) == 1
    # the client gave up the connection: the server's handler is no longer busy
    assert wait_until(lambda: server.in_progress == 0, 2)


def test_sync_stalled_call_times_out(od, server):
    t0 = time.monotonic()
    assert bounded(od.run_openrouter, "fake/stall", uniq(), timeout=0.5, num_retries=0) == ""
    assert time.monotonic() - t0 < bound(2.0)


def test_timeout_bounds_each_attempt_not_the_whole_call(od, server):
    prompt = uniq()
    t0 = time.monotonic()
    assert arun(od.run_openrouter_async("fake/stall", prompt, timeout=0.3, num_retries=2)) == ""
    assert server.attempts_for(prompt) == 3
    assert 0.85 <= time.monotonic() - t0 < bound(4.0)


def test_slow_reply_within_timeout_succeeds(od):
    prompt = uniq()
    assert arun(od.run_openrouter_async("fake/slow-300", prompt, timeout=5)) == "echo: " + prompt


def test_slow_reply_beyond_timeout_fails(od, server):
    prompt = uniq()
    t0 = time.monotonic()
    assert arun(od.run_openrouter_async("fake/slow-3000", prompt, timeout=0.3,
                                        num_retries=0)) == ""
    assert time.monotonic() - t0 < bound(1.5)


def test_default_timeout_comes_from_litellm_default_timeout_env(server):
    code = r'''
import time, openrouter_direct as od
t0 = time.monotonic()
out = od.run_openrouter("fake/stall", "ENV-TIMEOUT", num_retries=0)
print(repr(out), round(time.monotonic() - t0, 3))
'''
    proc = run_py(code, timeout=30, env={"LITELLM_DEFAULT_TIMEOUT": "0.5"})
    assert proc.returncode == 0, proc.stderr
    out, elapsed = proc.stdout.split()
    assert out == "''"
    assert 0.4 <= float(elapsed) < bound(3.0)


def test_cancelling_a_stalled_call_ends_it_promptly(od, server):
    prompt = uniq()

    async def main():
        task = asyncio.ensure_future(od.run_openrouter_async("fake/stall", prompt))
        assert await await_until(lambda: server.attempts_for(prompt) == 1, 5)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    assert arun(main(), 15) < bound(0.5)
    # the transfer was aborted: the server sees the connection go away
    assert wait_until(lambda: server.in_progress == 0)
    # the engine is done with the call, so no retry can come after this
    assert wait_until(lambda: od.stats()["in_flight"] == 0 and od.stats()["queued"] == 0)
    assert server.attempts_for(prompt) == 1  # a cancelled call is not retried


def test_cancelled_call_frees_its_concurrency_slot(od, server, concurrency_cap):
    concurrency_cap(2)
    stalled = [uniq("stall"), uniq("stall")]
    third = uniq("third")

    async def main():
        tasks = [asyncio.ensure_future(od.run_openrouter_async("fake/stall", p))
                 for p in stalled]
        assert await await_until(lambda: server.in_progress == 2, 5)
        waiting = asyncio.ensure_future(od.run_openrouter_async("fake/echo", third))
        assert await await_until(lambda: od.stats()["queued"] == 1)
        assert not waiting.done()               # both slots are taken
        assert server.attempts_for(third) == 0  # so it never reached the wire
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return await asyncio.wait_for(waiting, 2)

    assert arun(main(), 20) == "echo: " + third
    assert wait_until(lambda: od.stats()["in_flight"] == 0)


def test_cancelling_a_queued_call_never_sends_it(od, server, concurrency_cap):
    concurrency_cap(1)
    blocker, queued = uniq("blocker"), uniq("queued")

    async def main():
        b = asyncio.ensure_future(od.run_openrouter_async("fake/stall", blocker))
        assert await await_until(lambda: server.in_progress == 1, 5)
        q = asyncio.ensure_future(od.run_openrouter_async("fake/echo", queued))
        assert await await_until(lambda: od.stats()["queued"] == 1)  # waiting for the slot
        q.cancel()
        with pytest.raises(asyncio.CancelledError):
            await q
        b.cancel()
        await asyncio.gather(b, return_exceptions=True)
        # the slot works again afterwards
        return await od.run_openrouter_async("fake/echo", queued + "-after")

    assert arun(main(), 20) == "echo: " + queued + "-after"
    assert wait_until(lambda: od.stats()["in_flight"] == 0 and od.stats()["queued"] == 0)
    assert server.attempts_for(queued) == 1  # only the "-after" call


def test_cancel_during_retry_backoff_stops_further_attempts(od, server, adaptive_off):
    prompt = uniq()

    async def main():
        task = asyncio.ensure_future(
            od.run_openrouter_async("fake/retry-after-5", prompt, num_retries=3))
        assert await await_until(lambda: server.attempts_for(prompt) == 1, 5)
        # backing off: off the wire, in the engine's timer heap (counted as queued)
        assert await await_until(lambda: od.stats()["in_flight"] == 0
                                 and od.stats()["queued"] == 1)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t0

    assert arun(main(), 15) < bound(0.5)
    assert server.attempts_for(prompt) == 1


def test_wait_for_timeout_around_call_cancels_it(od, server):
    prompt = uniq()

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(od.run_openrouter_async("fake/stall", prompt), 0.3)

    t0 = time.monotonic()
    arun(main(), 10)
    assert time.monotonic() - t0 < bound(1.0)
    assert wait_until(lambda: server.in_progress == 0)
    assert wait_until(lambda: od.stats()["in_flight"] == 0)


def test_asyncio_run_ending_with_pending_calls_cancels_them(od, server):
    prompts = [uniq() for _ in range(5)]

    async def main():
        for p in prompts:
            asyncio.ensure_future(od.run_openrouter_async("fake/stall", p))
        assert await await_until(lambda: server.in_progress >= 1, 5)
        # return without awaiting: asyncio.run cancels the leftovers

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < bound(6)
    assert wait_until(lambda: server.in_progress == 0)
    assert wait_until(lambda: od.stats()["in_flight"] == 0)
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p)) == "echo: " + p


def test_call_closed_after_its_loop_is_closed_is_cancelled(server):
    """A loop closed with a call still awaiting (no asyncio.run to cancel it): when the coroutine
    is closed later, outside any running loop, the call must still leave the wire. In a child
    process, so that a call left on the wire cannot disturb the other tests."""
    code = r'''
import asyncio, gc, time, openrouter_direct as od
loop = asyncio.new_event_loop()
coro = od.run_openrouter_async("fake/stall", "closed-loop-call", num_retries=0)
task = loop.create_task(coro)
async def on_the_wire():
    while od.stats()["in_flight"] != 1:
        await asyncio.sleep(0.005)
loop.run_until_complete(asyncio.wait_for(on_the_wire(), 20))  # submitted, awaiting its future
loop.close()
task = None
coro.close()  # GeneratorExit at the await, with no loop running
coro = None
gc.collect()
t0 = time.monotonic()
while od.stats()["in_flight"] and time.monotonic() - t0 < 20:
    time.sleep(0.01)
s = od.stats()
print(s["calls"], s["in_flight"], s["cancelled"])
'''
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert server.attempts_for("closed-loop-call") == 1
    assert proc.stdout.split() == ["1", "0", "1"], (proc.stdout, proc.stderr)


def test_cancel_racing_completion_is_harmless(server):
    """Cancel calls at random moments around their completion, in many short loops."""
    code = r'''
import asyncio, random, openrouter_direct as od
async def one(i):
    t = asyncio.ensure_future(od.run_openrouter_async("fake/slow-3", "race-%d" % i))
    await asyncio.sleep(random.uniform(0, 0.008))
    t.cancel()
    try:
        r = await t
        assert r == "echo: race-%d" % i, r
        return "done"
    except asyncio.CancelledError:
        return "cancelled"
async def batch(k):
    return await asyncio.gather(*(one(k * 50 + i) for i in range(50)))
results = []
for k in range(20):
    results += asyncio.run(batch(k))
import time
deadline = time.monotonic() + 20   # aborts finish on the engine thread; a safety net
while (od.stats()["in_flight"] or od.stats()["queued"]) and time.monotonic() < deadline:
    time.sleep(0.01)
s = od.stats()
assert s["in_flight"] == 0 and s["queued"] == 0, s
assert asyncio.run(od.run_openrouter_async("fake/echo", "race-final")) == "echo: race-final"
print(results.count("done"), results.count("cancelled"))
'''
    proc = run_py(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception in callback" not in proc.stderr, proc.stderr
    done, cancelled = map(int, proc.stdout.split())
    assert done + cancelled == 1000
