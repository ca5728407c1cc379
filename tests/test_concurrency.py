"""Many calls at once, from many loops and threads; the process-wide cap; no leaks."""

import asyncio
import os
import threading
import time


from helpers import arun, await_until, bound, bounded, run_py, uniq, wait_until


def test_700_concurrent_calls_each_get_their_own_reply(od, server, concurrency_cap, hedge_off):
    # hedge_off: the test pins one request per call; 700 calls at once queue in the one-thread
    # server, whose replies slow down during the burst, and hedging would answer that
    concurrency_cap(128)
    prompts = [uniq("c%d" % i) for i in range(700)]

    async def main():
        return await asyncio.gather(*(od.run_openrouter_async("fake/echo", p) for p in prompts))

    results = arun(main(), 60)
    assert results == ["echo: " + p for p in prompts]
    assert len(server.chat_requests()) == 700
    assert server.max_concurrent <= 128


def test_default_cap_keeps_many_calls_to_ten_on_the_wire(od, server):
    assert od.configure()["max_concurrent_calls"] == 10  # conftest leaves the default
    prompts = [uniq() for _ in range(60)]

    async def main():
        return await asyncio.gather(*(od.run_openrouter_async("fake/slow-50", p)
                                      for p in prompts))

    assert arun(main(), 30) == ["echo: " + p for p in prompts]
    assert server.max_concurrent == 10


def test_cap_bounds_calls_across_threads_and_loops(od, server, concurrency_cap):
    concurrency_cap(6)
    errors = []

    def worker(k):
        prompts = [uniq("t%d" % k) for _ in range(4)]

        async def main():
            return await asyncio.gather(*(od.run_openrouter_async("fake/slow-200", p)
                                          for p in prompts))
        try:
            got = asyncio.run(asyncio.wait_for(main(), 30))
            if got != ["echo: " + p for p in prompts]:
                errors.append(got)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors
    assert server.max_concurrent == 6


def test_configure_changes_the_cap_at_run_time(od, server, concurrency_cap):
    concurrency_cap(40)
    assert od.configure()["max_concurrent_calls"] == 40

    async def burst(n):
        ps = [uniq() for _ in range(n)]
        got = await asyncio.gather(*(od.run_openrouter_async("fake/slow-100", p) for p in ps))
        assert got == ["echo: " + p for p in ps]

    arun(burst(120), 30)
    assert server.max_concurrent == 40
    server.reset()
    concurrency_cap(3)
    arun(burst(12), 30)
    assert server.max_concurrent == 3


def test_lowering_the_cap_while_calls_are_in_flight_is_respected(od, server, concurrency_cap):
    concurrency_cap(20)

    async def main():
        first = [asyncio.ensure_future(od.run_openrouter_async("fake/slow-300", uniq()))
                 for _ in range(20)]
        assert await await_until(lambda: od.stats()["queued"] == 0)  # all twenty started
        od.configure(max_concurrent_calls=2)
        await asyncio.gather(*first)
        server.reset()
        second = [od.run_openrouter_async("fake/slow-100", uniq()) for _ in range(8)]
        return await asyncio.gather(*second)

    results = arun(main(), 30)
    assert all(r.startswith("echo: ") for r in results)
    assert server.max_concurrent == 2


def test_cap_is_read_from_env_when_the_engine_starts(server):
    code = r'''
import asyncio, openrouter_direct as od
assert od.configure()["max_concurrent_calls"] == 3, od.configure()
async def main():
    return await asyncio.gather(*(od.run_openrouter_async("fake/slow-150", "envcap-%d" % i)
                                  for i in range(12)))
r = asyncio.run(main())
assert r == ["echo: envcap-%d" % i for i in range(12)], r
'''
    proc = run_py(code, timeout=30, env={"OPENROUTER_MAX_CONCURRENT_CALLS": "3"})
    assert proc.returncode == 0, proc.stderr
    assert server.max_concurrent == 3


def test_sixteen_threads_each_running_asyncio_run_repeatedly(od, server, concurrency_cap):
    concurrency_cap(32)
    errors = []

    def worker(k):
        for rep in range(5):
            prompts = [uniq("w%d-%d" % (k, rep)) for _ in range(6)]

            async def main():
                return await asyncio.gather(*(od.run_openrouter_async("fake/echo", p)
                                              for p in prompts))
            try:
                got = asyncio.run(asyncio.wait_for(main(), 30))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
            if got != ["echo: " + p for p in prompts]:
                errors.append(got)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert len(server.chat_requests()) == 16 * 5 * 6


def test_sync_calls_from_many_plain_threads(od, server):
    errors = []

    def worker(k):
        for _ in range(5):
            p = uniq("s%d" % k)
            try:
                got = od.run_openrouter("fake/echo", p, timeout=10)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
            if got != "echo: " + p:
                errors.append(got)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]


def test_sync_call_from_plain_thread(od):
    p = uniq()
    assert bounded(od.run_openrouter, "fake/echo", p) == "echo: " + p


def test_sync_call_inside_a_running_event_loop(od):
    p = uniq()

    async def main():
        # blocks this loop while it waits, but must work (no "loop already running")
        return od.run_openrouter("fake/echo", p, timeout=10)

    assert arun(main(), 20) == "echo: " + p


def test_async_and_sync_calls_mix_in_one_loop(od):
    p1, p2 = uniq(), uniq()

    async def main():
        t = asyncio.ensure_future(od.run_openrouter_async("fake/slow-100", p1))
        s = await asyncio.get_running_loop().run_in_executor(
            None, lambda: od.run_openrouter("fake/echo", p2, timeout=10))
        return await t, s

    assert arun(main(), 20) == ("echo: " + p1, "echo: " + p2)


def test_mixed_outcomes_in_one_gather_go_to_the_right_callers(od, concurrency_cap):
    concurrency_cap(50)
    models = ["fake/echo", "fake/status-400", "fake/null", "fake/list", "fake/slow-50",
              "fake/status-503", "fake/garbage", "fake/whitespace"] * 10
    prompts = [uniq() for _ in models]

    def expected(m, p):
        return {"fake/echo": "echo: " + p, "fake/slow-50": "echo: " + p,
                "fake/whitespace": "echo: " + p, "fake/list": "part one part two"}.get(m, "")

    async def main():
        return await asyncio.gather(*(od.run_openrouter_async(m, p, num_retries=1)
                                      for m, p in zip(models, prompts)))

    assert arun(main(), 30) == [expected(m, p) for m, p in zip(models, prompts)]


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


def _task_count():
    return len(os.listdir("/proc/self/task"))


def test_many_sequential_asyncio_runs_leak_no_fds_or_threads(od):
    async def once(p):
        return await od.run_openrouter_async("fake/echo", p)

    for _ in range(5):  # warm up: engine, connection cache
        p = uniq()
        assert asyncio.run(once(p)) == "echo: " + p
    fds, tasks, active = _fd_count(), _task_count(), threading.active_count()
    for _ in range(150):
        p = uniq()
        assert asyncio.run(once(p)) == "echo: " + p
    assert wait_until(lambda: _fd_count() - fds <= 3), (_fd_count(), fds)
    # a thread that ended can stay listed in /proc/self/task for a moment
    assert wait_until(lambda: _task_count() - tasks <= 1), (_task_count(), tasks)
    assert threading.active_count() == active


def test_many_failed_and_cancelled_calls_leak_no_fds(od, server):
    async def mixed():
        stall = asyncio.ensure_future(od.run_openrouter_async("fake/stall", uniq()))
        assert await await_until(lambda: od.stats()["in_flight"] == 1)
        stall.cancel()
        await asyncio.gather(stall, return_exceptions=True)
        await od.run_openrouter_async("fake/reset", uniq(), num_retries=0)
        await od.run_openrouter_async("fake/status-503", uniq(), num_retries=1)

    asyncio.run(mixed())
    fds, tasks = _fd_count(), _task_count()
    for _ in range(40):
        asyncio.run(asyncio.wait_for(mixed(), 10))
    assert wait_until(lambda: _fd_count() - fds <= 3), (_fd_count(), fds)
    assert wait_until(lambda: _task_count() - tasks <= 1), (_task_count(), tasks)


def test_connections_are_reused_across_sequential_calls(od, server):
    for _ in range(30):
        p = uniq()
        assert arun(od.run_openrouter_async("fake/echo", p)) == "echo: " + p
    assert server.connections_opened <= 2


def test_call_survives_server_closing_idle_connections(od, server):
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p)) == "echo: " + p
    server.close_connections()
    assert wait_until(lambda: server.open_connections == 0)
    p = uniq()
    assert arun(od.run_openrouter_async("fake/echo", p, num_retries=0)) == "echo: " + p


def _engine_cpu_seconds():
    """CPU time of this process's engine thread (named openrouter-eng), from /proc."""
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "openrouter-eng":
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def test_idle_connections_closed_by_the_server_leave_the_engine_idle(od, server):
    """Kept-alive sockets stay in the engine's epoll set between calls. When the server closes
    them while idle, the engine must stop listening (a level-triggered hang-up would otherwise
    wake it forever) and later calls must open fresh connections, round after round."""
    async def burst(tag):
        ps = [uniq(tag) for _ in range(16)]
        outs = await asyncio.gather(*(od.run_openrouter_async("fake/echo", p, num_retries=0)
                                      for p in ps))
        assert outs == ["echo: " + p for p in ps]

    for round_no in range(5):
        arun(burst(f"idle{round_no}-"))
        server.close_connections()
        assert wait_until(lambda: server.open_connections == 0)
        before = _engine_cpu_seconds()
        assert before is not None, "no openrouter-eng thread in this process"
        time.sleep(0.5)  # the window the CPU time is measured over, not a wait for something
        spent = _engine_cpu_seconds() - before
        assert spent < bound(0.1), f"round {round_no}: the idle engine used {spent:.2f} s of CPU in 0.5 s"


def test_first_slow_call_does_not_hold_back_others_on_plain_http(server):
    """A fresh engine: a fast call must not wait behind a slow one to the same host."""
    code = r'''
import asyncio, time, openrouter_direct as od
async def timed(model, prompt):
    t0 = time.monotonic()
    out = await od.run_openrouter_async(model, prompt)
    return out, time.monotonic() - t0
async def main():
    slow = asyncio.ensure_future(timed("fake/slow-1500", "hol-slow"))
    while od.stats()["in_flight"] < 1:  # the slow call is on the wire
        await asyncio.sleep(0.005)
    fast = await timed("fake/echo", "hol-fast")
    await slow
    return fast
out, elapsed = asyncio.run(main())
assert out == "echo: hol-fast", out
print(round(elapsed, 3))
'''
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) < bound(0.5), "fast call took %s s" % proc.stdout.strip()
