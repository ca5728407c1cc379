"""Event-loop edge cases: cancelling in every state, loops closed with calls in flight,
many short-lived loops, many loops at once in many threads, asyncio debug mode, uvloop.

(Single cancellations in each state are pinned in test_cancel_timeout.py; here they happen
together, at volume, and the books must balance afterwards.)"""

import asyncio
import os
import threading
import time

import pytest

from helpers import arun, await_until, bound, run_py, uniq, wait_until


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def native_threads():
    return len(os.listdir("/proc/self/task"))


def settled(od):
    s = od.stats()
    return s["in_flight"] == 0 and s["queued"] == 0


def test_cancelling_calls_queued_on_the_wire_and_backing_off_at_once(od, server,
                                                                     concurrency_cap, adaptive_off):
    """Eight calls on the wire fill the cap, eight wait for a slot, eight sleep before a
    retry (Retry-After: 5 s); all 24 are cancelled in one go."""
    concurrency_cap(8)
    wire = [uniq("wire") for _ in range(8)]
    queued = [uniq("queued") for _ in range(8)]
    backoff = [uniq("backoff") for _ in range(8)]

    async def main():
        b = [asyncio.ensure_future(od.run_openrouter_async("fake/retry-after-5", p,
                                                            num_retries=3)) for p in backoff]
        assert await await_until(lambda: all(server.attempts_for(p) == 1 for p in backoff), 5)
        w = [asyncio.ensure_future(od.run_openrouter_async("fake/stall", p)) for p in wire]
        assert await await_until(lambda: server.in_progress == 8, 5)
        q = [asyncio.ensure_future(od.run_openrouter_async("fake/echo", p)) for p in queued]
        assert await await_until(lambda: od.stats()["queued"] == 16, 5), od.stats()
        assert od.stats()["in_flight"] == 8
        t0 = time.monotonic()
        # queued ones first: cancelling a call on the wire frees its slot at once, and a
        # call still queued at that moment would be started (then aborted) in its place
        for t in q + w + b:
            t.cancel()
        outcomes = await asyncio.gather(*(q + w + b), return_exceptions=True)
        elapsed = time.monotonic() - t0
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        # every slot is free again: a full cap of fresh calls runs at once
        fresh = [uniq("fresh") for _ in range(8)]
        got = await asyncio.wait_for(asyncio.gather(*(
            od.run_openrouter_async("fake/slow-100", p) for p in fresh)), 5)
        assert got == ["echo: " + p for p in fresh]
        return elapsed

    before = od.stats()
    assert arun(main(), 30) < bound(0.5)
    assert wait_until(lambda: settled(od)), od.stats()
    after = od.stats()
    assert after["cancelled"] - before["cancelled"] == 24
    assert after["calls"] - before["calls"] == 32
    assert after["succeeded"] - before["succeeded"] == 8
    assert after["failed"] == before["failed"]
    # settled: the engine is done with every call, so no attempt can still come
    assert [server.attempts_for(p) for p in backoff + wire] == [1] * 16  # nothing retried
    assert [server.attempts_for(p) for p in queued] == [0] * 8       # never sent
    assert wait_until(lambda: server.in_progress == 0)


def test_closing_loops_with_calls_queued_on_the_wire_and_backing_off(server):
    """A loop closed (without cancelling its tasks) while its calls wait for a slot, stall
    on the wire or sleep before a retry: nothing crashes, nothing is delivered to the dead
    loop, the engine settles, no descriptor or thread is left behind, new loops work."""
    code = r'''
import asyncio, gc, os, threading, time, openrouter_direct as od
od.configure(max_concurrent_calls=4, adaptive=False)  # per-call backoff, as "backing off" means
def fds(): return len(os.listdir("/proc/self/fd"))
def tasks(): return len(os.listdir("/proc/self/task"))
assert asyncio.run(od.run_openrouter_async("fake/echo", "warm")) == "echo: warm"
base_fds, base_tasks = fds(), tasks()
for rep in range(20):
    loop = asyncio.new_event_loop()
    ts = [loop.create_task(od.run_openrouter_async("fake/slow-300", "w%d-%d" % (rep, i)))
          for i in range(4)]
    ts += [loop.create_task(od.run_openrouter_async("fake/echo", "q%d-%d" % (rep, i)))
           for i in range(4)]
    ts += [loop.create_task(od.run_openrouter_async("fake/retry-after-1", "b%d-%d" % (rep, i),
                                                    num_retries=2)) for i in range(4)]
    async def submitted(n):  # every call has reached the engine
        while od.stats()["calls"] < n:
            await asyncio.sleep(0.002)
    loop.run_until_complete(asyncio.wait_for(submitted(1 + 12 * (rep + 1)), 20))
    loop.close()
    del ts, loop
gc.collect()
deadline = time.monotonic() + 30
while (od.stats()["in_flight"] or od.stats()["queued"]) and time.monotonic() < deadline:
    time.sleep(0.01)
s = od.stats()
assert s["in_flight"] == 0 and s["queued"] == 0, s
assert asyncio.run(od.run_openrouter_async("fake/echo", "after")) == "echo: after"
gc.collect()
deadline = time.monotonic() + 20  # an ended thread can stay listed in /proc a moment
while (fds() > base_fds + 3 or tasks() > base_tasks) and time.monotonic() < deadline:
    time.sleep(0.01)
assert fds() <= base_fds + 3, (fds(), base_fds)
assert tasks() <= base_tasks, (tasks(), base_tasks)
print("ok", s["calls"], s["succeeded"], s["failed"], s["cancelled"])
'''
    proc = run_py(code, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok"), proc.stdout
    assert "Fatal" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # the books balance: every call ended one way or another
    _, calls, ok, failed, cancelled = proc.stdout.split()
    assert int(calls) == int(ok) + int(failed) + int(cancelled)


def test_a_thousand_asyncio_run_cycles_leak_no_descriptors_or_threads(od):
    async def once(i):
        a, b = await asyncio.gather(od.run_openrouter_async("fake/echo", "cyc-%d" % i),
                                    od.run_openrouter_async("fake/status-400", "x",
                                                            num_retries=0))
        return a

    for i in range(10):  # warm up: engine thread, connection pool
        asyncio.run(once(i))
    fds, threads, pythreads = fd_count(), native_threads(), threading.active_count()
    samples = []
    for i in range(1000):
        assert asyncio.run(once(i)) == "echo: cyc-%d" % i
        if i % 100 == 99:
            samples.append(fd_count())
    assert max(samples) - fds <= 3, (fds, samples)
    assert samples[-1] - samples[0] <= 1, samples
    assert wait_until(lambda: native_threads() == threads), (native_threads(), threads)
    assert threading.active_count() == pythreads


def test_thirty_two_threads_each_with_its_own_loop_call_at_the_same_moment(
        od, server, concurrency_cap, hedge_off):
    # hedge_off: the server's count of calls in progress pins the cap. A hedge counts against
    # the cap too, but the attempt it beat is still "in progress" at the server until the
    # server notices the disconnect: 1,280 calls teach the estimate enough to hedge when a
    # slow machine (TSan) stretches the 20 ms replies, and the server then saw 65.
    concurrency_cap(64)
    n_threads, per_loop = 32, 20
    barrier = threading.Barrier(n_threads)
    results, errors = {}, []

    def worker(k):
        prompts = [uniq("t%d" % k) for _ in range(per_loop)]

        async def main():
            barrier.wait(10)  # every loop submits at once (the barrier is cyclic)
            return await asyncio.gather(*(od.run_openrouter_async("fake/slow-20", p)
                                          for p in prompts))
        try:
            for rep in range(2):  # a second loop per thread reuses nothing stale
                got = asyncio.run(asyncio.wait_for(main(), 30))
                if got != ["echo: " + p for p in prompts]:
                    errors.append((k, got[:3]))
            results[k] = True
        except BaseException as exc:  # noqa: BLE001
            errors.append((k, exc))

    before = native_threads()
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert len(results) == n_threads
    assert server.max_concurrent == 64
    # at most the engine thread, never one per loop; awaited, because an OS thread can still
    # be listed in /proc/self/task just after Thread.join() returns
    assert wait_until(lambda: native_threads() <= before + 1), (native_threads(), before)
    assert wait_until(lambda: settled(od))


def test_calls_work_in_asyncio_debug_mode(od):
    """Debug mode complains about callbacks scheduled from the wrong thread and slow
    callbacks: delivery happens on the loop's own thread, in batches."""
    prompts = [uniq() for _ in range(200)]

    async def main():
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.5
        return await asyncio.gather(*(od.run_openrouter_async("fake/echo", p) for p in prompts))

    errors = []

    def handler(loop, context):
        errors.append(context.get("message"))

    async def wrapped():
        asyncio.get_running_loop().set_exception_handler(handler)
        return await main()

    assert asyncio.run(asyncio.wait_for(wrapped(), 30), debug=True) == \
        ["echo: " + p for p in prompts]
    assert errors == []


# ----------------------------------------------------------------------------- uvloop
try:
    import uvloop
except ImportError:  # pragma: no cover - the test extra installs it
    uvloop = None

needs_uvloop = pytest.mark.skipif(uvloop is None,
                                  reason="uvloop is not installed (pip install uvloop)")


def uv_run(coro, timeout=30):
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        loop.close()


@needs_uvloop
def test_uvloop_many_calls_get_their_own_replies(od, concurrency_cap):
    concurrency_cap(64)
    prompts = [uniq() for _ in range(500)]

    async def main():
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        return await asyncio.gather(*(od.run_openrouter_async("fake/echo", p) for p in prompts))

    assert uv_run(main()) == ["echo: " + p for p in prompts]


@needs_uvloop
def test_uvloop_retries_and_failures(od, server):
    p1, p2 = uniq(), uniq()

    async def main():
        return await asyncio.gather(
            od.run_openrouter_async("fake/flaky-2-reset-midbody", p1, num_retries=3),
            od.run_openrouter_async("fake/status-401", p2, num_retries=3))

    assert uv_run(main()) == ["echo: " + p1, ""]
    assert server.attempts_for(p1) == 3 and server.attempts_for(p2) == 1


@needs_uvloop
def test_uvloop_cancellation_on_the_wire_queued_and_in_backoff(od, server, concurrency_cap, adaptive_off):
    concurrency_cap(1)
    wire, queued, backoff = uniq(), uniq(), uniq()

    async def main():
        b = asyncio.ensure_future(od.run_openrouter_async("fake/retry-after-5", backoff,
                                                          num_retries=2))
        assert await await_until(lambda: server.attempts_for(backoff) == 1, 5)
        w = asyncio.ensure_future(od.run_openrouter_async("fake/stall", wire))
        assert await await_until(lambda: server.in_progress == 1, 5)
        q = asyncio.ensure_future(od.run_openrouter_async("fake/echo", queued))
        assert await await_until(lambda: od.stats()["queued"] == 2)  # q and b, behind w
        for t in (b, w, q):
            t.cancel()
        out = await asyncio.gather(b, w, q, return_exceptions=True)
        assert all(isinstance(o, asyncio.CancelledError) for o in out), out
        return await od.run_openrouter_async("fake/echo", queued + "-after")

    assert uv_run(main()) == "echo: " + queued + "-after"
    assert wait_until(lambda: settled(od))
    assert server.attempts_for(backoff) == 1


@needs_uvloop
def test_uvloop_sync_call_in_executor_and_many_short_loops_leak_nothing(od):
    async def once(i):
        loop = asyncio.get_running_loop()
        a = await od.run_openrouter_async("fake/echo", "uv-%d" % i)
        b = await loop.run_in_executor(None, lambda: od.run_openrouter("fake/echo", "uvs-%d" % i))
        return a, b

    for i in range(5):
        uv_run(once(i))
    fds = fd_count()
    for i in range(200):
        assert uv_run(once(i)) == ("echo: uv-%d" % i, "echo: uvs-%d" % i)
    assert fd_count() - fds <= 3


@needs_uvloop
def test_uvloop_closed_with_calls_in_flight(server):
    code = r'''
import asyncio, time, uvloop, openrouter_direct as od
loop = uvloop.new_event_loop()
ts = [loop.create_task(od.run_openrouter_async("fake/slow-200", "uvc-%d" % i)) for i in range(5)]
async def on_the_wire():
    while od.stats()["in_flight"] < 5:
        await asyncio.sleep(0.002)
loop.run_until_complete(asyncio.wait_for(on_the_wire(), 20))
loop.close()
deadline = time.monotonic() + 20  # the five replies arrive after the close
while (od.stats()["in_flight"] or od.stats()["queued"]) and time.monotonic() < deadline:
    time.sleep(0.01)
s = od.stats()
assert s["in_flight"] == 0 and s["queued"] == 0, s
loop = uvloop.new_event_loop()
assert loop.run_until_complete(od.run_openrouter_async("fake/echo", "uv-after")) == "echo: uv-after"
loop.close()
print("ok")
'''
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
