"""A workload that walks every path of a call, for leak checkers (LeakSanitizer, valgrind).

    python scripts/leakcheck.py [--rounds N] [--lsan REPORT_DIR]

Each round makes calls that succeed, fail in every way (HTTP statuses, resets, truncated and
unparsable bodies, timeouts, a reply over the size cap, CR/LF in a header, no key, a
programming error), raise in strict mode, are cancelled (queued, on the wire, backing off),
are left behind in a closed loop, are made synchronously, and are hedged (the hedge wins, loses,
stands in for a failed attempt, fails with it, is cancelled with it); it also reads stats().  The
local FakeOpenRouter runs in this process.

--lsan: run under an ASan build with LD_PRELOAD=libasan and
ASAN_OPTIONS=detect_leaks=1:leak_check_at_exit=0:log_path=REPORT_DIR/lsan.  After one
warm-up round the script asks LeakSanitizer for a leak check (__lsan_do_recoverable_leak_check),
runs the remaining rounds, and asks again.  A leak is memory no pointer reaches any more; with
PYTHONMALLOC=malloc every Python object is its own block, so a reference the extension forgot
to drop shows up too.  Why not simply a check at exit: CPython does not free its
interpreter-lifetime objects at exit, and listing them would need suppressions for half of
libpython. Mid-run, what CPython holds is still reachable.  The script fails when any leak
reported in the second check was allocated from the extension (a frame in csrc/ or
_native), or when the second check finds more than GROWTH_SLACK objects more than the first
(something grows with the number of calls, whoever allocated it: each round makes ~35
calls). The slack is for CPython's own: a check stops the threads wherever they are, and a
few objects in flight between two owners (a str being formatted, a struct sequence being
built in the server thread) are seen as unreachable; such reports carry no extension frame.
Use ASAN_OPTIONS=fast_unwind_on_malloc=0: libpython has no frame pointers, and the fast
unwinder would stop before reaching the frames that say who allocated.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import glob
import logging
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

os.environ.setdefault("OPENROUTER_RETRY_BASE_DELAY", "0.01")
os.environ.setdefault("OPENROUTER_RETRY_MAX_DELAY", "0.02")
os.environ["OPENAI_API_KEY"] = "sk-or-leakcheck-0123456789"

from openrouter_direct._server import FakeOpenRouter  # noqa: E402

import openrouter_direct as od  # noqa: E402


async def async_paths(base, r):
    calls = [od.run_openrouter_async(m, "lk-%d-%s" % (r, m), api_base=base, num_retries=1,
                                     timeout=5)
             for m in ("fake/echo", "fake/null", "fake/list", "fake/whitespace", "fake/big-100000",
                       "fake/flaky-1-503", "fake/flaky-1-reset", "fake/flaky-1-reset-midbody",
                       "fake/flaky-1-truncated", "fake/flaky-1-error200", "fake/flaky-1-429",
                       "fake/status-400", "fake/status-503", "fake/garbage", "fake/error200-502",
                       "fake/reset")]
    calls.append(od.run_openrouter_async("fake/stall", "lk-stall", api_base=base, num_retries=0,
                                         timeout=0.2))
    out = await asyncio.gather(*calls)
    assert out[0] == "echo: lk-%d-fake/echo" % r, out[0]
    for model, exc in (("fake/status-401", od.AuthenticationError),
                       ("fake/status-429", od.RateLimitError),
                       ("fake/reset", od.APIConnectionError)):
        try:
            await od.run_openrouter_async(model, "strict", api_base=base, num_retries=0,
                                          raise_on_error=True)
        except exc:
            pass
    # cancelled on the wire, while queued and while backing off
    od.configure(max_concurrent_calls=1)
    wire = asyncio.ensure_future(od.run_openrouter_async("fake/stall", "c1", api_base=base))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(od.run_openrouter_async("fake/echo", "c2", api_base=base))
    backoff = asyncio.ensure_future(od.run_openrouter_async("fake/retry-after-5", "c3",
                                                            api_base=base, num_retries=2))
    await asyncio.sleep(0.05)
    for t in (queued, wire, backoff):
        t.cancel()
    await asyncio.gather(wire, queued, backoff, return_exceptions=True)
    od.configure(max_concurrent_calls=16)


def sync_paths(base, r):
    assert od.run_openrouter("fake/echo", "s-%d" % r, api_base=base) == "echo: s-%d" % r
    od.run_openrouter("fake/status-402", "s", api_base=base)
    try:
        od.run_openrouter("fake/status-403", "s", api_base=base, raise_on_error=True)
    except od.APIStatusError:
        pass
    try:
        od.run_openrouter("fake/echo", 42, api_base=base)  # a programming error
    except TypeError:
        pass
    od.run_openrouter("fake/echo", "s", api_base=base, extra_headers={"X-A": "a\r\nb"})
    od.run_openrouter("fake/echo", "s", api_base=base, api_key="")  # falls back to the env key
    os.environ["OPENROUTER_MAX_RESPONSE_BYTES"] = "50000"
    od.run_openrouter("fake/big-100000", "s", api_base=base)
    del os.environ["OPENROUTER_MAX_RESPONSE_BYTES"]
    key = os.environ.pop("OPENAI_API_KEY")
    od.run_openrouter("fake/echo", "s", api_base=base)  # no key
    os.environ["OPENAI_API_KEY"] = key
    od.run_openrouter("fake/echo", "s", api_base="http://or-leakcheck.invalid/v1",
                      num_retries=0, timeout=2)
    od.stats()


def closed_loop(base, r):
    loop = asyncio.new_event_loop()
    tasks = [loop.create_task(od.run_openrouter_async("fake/slow-100", "cl-%d-%d" % (r, i),
                                                      api_base=base)) for i in range(3)]
    loop.run_until_complete(asyncio.sleep(0.02))
    loop.close()
    del tasks, loop
    time.sleep(0.15)


def _child_calls(base):
    """In a forked child: a sync and an async call on the child's own fresh engine."""
    a = od.run_openrouter("fake/echo", "fork-child", api_base=base, timeout=60)
    b = asyncio.run(od.run_openrouter_async("fake/flaky-1-503", "fork-child-a", api_base=base,
                                            timeout=60))
    return a == "echo: fork-child" and b == "echo: fork-child-a"


def _pool_work(args):
    base, i = args
    return od.run_openrouter("fake/echo", "pool-%d" % i, api_base=base, timeout=60)


def fork_paths(base, r):
    """fork() and a multiprocessing fork pool while this process has calls in flight."""
    import multiprocessing as mp
    import threading
    box = {}

    def in_flight():
        async def main():
            return await asyncio.gather(*(od.run_openrouter_async(
                "fake/slow-300", "fk-%d-%d" % (r, i), api_base=base, timeout=60)
                for i in range(4)))
        box["out"] = asyncio.run(main())
    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.1)
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = _child_calls(base)
        finally:
            os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    with mp.get_context("fork").Pool(2) as pool:
        out = pool.map(_pool_work, [(base, i) for i in range(4)])
    assert out == ["echo: pool-%d" % i for i in range(4)], out
    t.join(120)
    assert box.get("out") == ["echo: fk-%d-%d" % (r, i) for i in range(4)], box


async def raw_paths(base, r):
    """The raw calls: the engine keeps the reply buffer and hands it over as bytes."""
    resp = await od.run_openrouter_async_raw("fake/echo", "raw-%d" % r, api_base=base)
    assert resp.choices[0].message.content == "echo: raw-%d" % r
    await od.run_openrouter_async_raw("fake/big-100000", "raw-big", api_base=base)
    for model in ("fake/flaky-1-503", "fake/status-429", "fake/garbage", "fake/reset"):
        try:
            await od.run_openrouter_async_raw(model, "raw-%s" % model, api_base=base,
                                              num_retries=1)
        except od.OpenRouterError:
            pass
    wire = asyncio.ensure_future(od.run_openrouter_async_raw("fake/stall", "raw-c",
                                                             api_base=base))
    await asyncio.sleep(0.05)
    wire.cancel()
    await asyncio.gather(wire, return_exceptions=True)
    assert od.run_openrouter_raw("fake/echo", "raw-sync", api_base=base).usage.total_tokens > 0
    od.metrics(prefix="leak/")


async def governor_paths(base, r):
    """The governor's own paths: a 429 waited out, a wait budget spent (rate_limited, and its
    strict exception), a call refused by the cost guard. The paths above run with the governor
    off, where a 429 spends retries as they expect."""
    # The waited-out call has a wait budget to spare: after a 429 the governor paces this
    # endpoint at the rate it admitted, which for this sparse traffic is a few calls a second
    # (and slower still under valgrind). The budget then ends the refused-forever calls soon.
    od.configure(adaptive=True, rate_limit_wait=60)
    try:
        got = await od.run_openrouter_async("fake/flaky-2-429", "gv-%d" % r, api_base=base,
                                            num_retries=0)
        assert got == "echo: gv-%d" % r, got
        od.configure(rate_limit_wait=0.3)
        await od.run_openrouter_async("fake/status-429", "gv-rl", api_base=base)
        try:
            await od.run_openrouter_async("fake/status-429", "gv-strict", api_base=base,
                                          raise_on_error=True)
        except od.RateLimitError:
            pass
        od.configure(max_cost=1e-12)
        await od.run_openrouter_async("fake/echo", "gv-budget", api_base=base)
        assert od.stats()["failed_by_reason"].get("budget", 0) >= 1
    finally:
        od.configure(adaptive=False, rate_limit_wait=600, max_cost=0)


_SERVER = None  # the FakeOpenRouter of main(), for the hedge paths' scripted replies


async def hedge_paths(base, r):
    """Hedged calls: every way a call and its hedges can end. The estimate is per endpoint and
    model, and trusted after 128 successes: a model of its own each round, warmed up first (the
    slow replies of a round would teach the next one's estimate that they are normal)."""
    srv = _SERVER
    od.configure(hedge="p99.5", hedge_budget=1.0)
    model = "m/hedge-%d" % r
    # a key of its own: an endpoint the governor paths never rate-limit (no hedge goes to one)
    kw = {"api_base": base, "api_key": "sk-or-leakcheck-hedge"}
    try:
        await asyncio.gather(*(od.run_openrouter_async(model, "hw-%d" % i, **kw)
                               for i in range(140)))
        tag = "hg-%d-" % r
        srv.script(fault="stall", match=tag + "a")                   # the hedge wins
        srv.script(reply="first", match=tag + "b", delay_ms=300)     # the call's attempt wins
        srv.script(fault="stall", match=tag + "b", times=2)
        # a hedge stands in: the call's attempt fails once its hedge is on the wire and before
        # the hedge answers, whatever delay the estimate learned (valgrind stretches it past
        # 300 ms, and then no hedge was sent before the failure)
        srv.script(status=400, match=tag + "c", delay_ms=3000)
        srv.script(reply="hedged", match=tag + "c", delay_ms=3500, times=2)
        srv.script(status=400, match=tag + "d", delay_ms=300, times=3)  # all fail
        srv.script(fault="stall", match=tag + "e")                   # raw: the hedge wins
        out = await asyncio.gather(
            od.run_openrouter_async(model, tag + "a", **kw),
            od.run_openrouter_async(model, tag + "b", **kw),
            od.run_openrouter_async(model, tag + "c", **kw, num_retries=0),
            od.run_openrouter_async(model, tag + "d", **kw, raise_on_error=True),
            od.run_openrouter_async_raw(model, tag + "e", **kw),
            return_exceptions=True)
        assert out[:3] == ["echo: %sa" % tag, "first", "hedged"], out
        assert isinstance(out[3], od.APIStatusError), out[3]
        assert out[4].choices[0].message.content == "echo: %se" % tag, out[4]
        srv.script(fault="stall", match=tag + "f", times=3)          # cancelled with its hedges
        task = asyncio.ensure_future(od.run_openrouter_async(model, tag + "f", **kw))
        deadline = time.monotonic() + 10
        while srv.attempts_for(tag + "f") < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        od.configure(hedge_budget=0.05)


def one_round(base, r):
    asyncio.run(hedge_paths(base, r))
    asyncio.run(async_paths(base, r))
    asyncio.run(governor_paths(base, r))
    asyncio.run(raw_paths(base, r))
    sync_paths(base, r)
    closed_loop(base, r)


def settle():
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = od.stats()
        if s["in_flight"] == 0 and s["queued"] == 0:
            break
        time.sleep(0.05)
    asyncio.run(asyncio.sleep(0))  # a new loop sweeps the channels of closed ones
    for _ in range(3):
        gc.collect()


GROWTH_SLACK = 10
LEAK_HEAD = re.compile(r"^(Direct|Indirect) leak of (\d+) byte\(s\) in (\d+) object\(s\)", re.M)


def lsan_check(report_dir, label):
    """Ask LeakSanitizer now; returns (leaks, objects, leaks from the extension)."""
    before = set(glob.glob(os.path.join(report_dir, "*")))
    sizes = {p: os.path.getsize(p) for p in before}
    ctypes.CDLL(None).__lsan_do_recoverable_leak_check()
    text = ""
    for p in sorted(glob.glob(os.path.join(report_dir, "*"))):
        with open(p, errors="replace") as f:
            f.seek(sizes.get(p, 0))
            text += f.read()
    blocks = re.split(r"\n(?=(?:Direct|Indirect) leak of)", text)
    ours = [b for b in blocks if LEAK_HEAD.search(b) and ("csrc/" in b or "_native" in b)]
    leaks = LEAK_HEAD.findall(text)
    objects = sum(int(n) for _, _, n in leaks)
    print("%s: %d leak record(s), %d object(s), %d from the extension"
          % (label, len(leaks), objects, len(ours)), flush=True)
    return len(leaks), objects, ours


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lsan", metavar="REPORT_DIR")
    ap.add_argument("--fork", action="store_true",
                    help="also fork (os.fork, a multiprocessing fork pool) with calls in flight, "
                         "each round; the children call too (not under ASan or TSan: see "
                         ".ci/sanitizers)")
    args = ap.parse_args()
    # failures are the point here, and so are tasks left in closed loops: keep quiet about them
    logging.getLogger("openrouter_direct").setLevel(os.environ.get("LEAKCHECK_LOG", "CRITICAL"))
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    global _SERVER
    with FakeOpenRouter() as srv:
        _SERVER = srv
        od.configure(max_concurrent_calls=16, adaptive=False)
        one_round(srv.base_url, 0)
        settle()
        if args.lsan:
            first = lsan_check(args.lsan, "after warm-up")
        for r in range(1, args.rounds):
            one_round(srv.base_url, r)
            if args.fork:
                fork_paths(srv.base_url, r)
        settle()
        s = od.stats()
        print("calls %d succeeded %d failed %d cancelled %d" % (
            s["calls"], s["succeeded"], s["failed"], s["cancelled"]), flush=True)
        assert s["calls"] == s["succeeded"] + s["failed"] + s["cancelled"], s
        assert s["in_flight"] == 0 and s["queued"] == 0, s
        if args.lsan:
            second = lsan_check(args.lsan, "after %d more round(s)" % (args.rounds - 1))
            if second[2]:
                print("LEAKS FROM THE EXTENSION:\n" + "\n\n".join(second[2]))
                return 1
            if second[1] > first[1] + GROWTH_SLACK:
                print("leaked objects grew from %d to %d with more rounds" % (first[1], second[1]))
                return 1
    print("leakcheck: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
