"""Process life: fork, and interpreter exit with calls still in flight.

Every scenario runs in a fresh interpreter with a hard timeout, so a hang fails
the test instead of the suite."""

import os
import subprocess
import sys
import time

import pytest

from helpers import REPO, bound, run_py, wait_until


def exit_once_the_server_has_them(server, code, prefix, n):
    """Run ``code`` in a fresh interpreter whose main thread, once its calls are in flight,
    waits for a line on stdin before it ends; the line is sent once the server has read ``n``
    requests whose prompt starts with ``prefix`` (in flight at the client is not yet read at the
    server). Returns the seconds from that line to the exit, stdout, stderr, the return code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)
    try:
        wait_until(lambda: server.attempts_for(prefix) >= n or proc.poll() is not None)
        assert server.attempts_for(prefix) >= n, "the calls never reached the server"
        t0 = time.monotonic()
        out, err = proc.communicate("go\n", timeout=30)
        return time.monotonic() - t0, out, err, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_child_after_fork_can_call_at_once_and_parent_keeps_working(server):
    code = r'''
import os, sys, openrouter_direct as od
assert od.run_openrouter("fake/echo", "before-fork") == "echo: before-fork"
pid = os.fork()
if pid == 0:
    try:
        ok = od.run_openrouter("fake/echo", "in-child", timeout=10) == "echo: in-child"
        import asyncio
        ok = ok and asyncio.run(od.run_openrouter_async("fake/echo", "in-child-async",
                                                        timeout=10)) == "echo: in-child-async"
    except BaseException:
        ok = False
    os._exit(0 if ok else 3)
assert od.run_openrouter("fake/echo", "in-parent", timeout=10) == "echo: in-parent"
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
print("ok")
'''
    proc = run_py(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    for p in ("in-child", "in-child-async", "in-parent"):
        assert server.attempts_for(p) >= 1


def test_fork_with_calls_in_flight_in_the_parent(server):
    code = r'''
import asyncio, os, threading, time, openrouter_direct as od
results = {}
def parent_calls():
    async def main():
        return await asyncio.gather(*(od.run_openrouter_async("fake/slow-400", "inflight-%d" % i,
                                                              timeout=10) for i in range(8)))
    results["parent"] = asyncio.run(main())
t = threading.Thread(target=parent_calls, daemon=True)
t.start()
def wait_in_flight(n):  # the calls are on the wire
    deadline = time.monotonic() + 20
    while od.stats()["in_flight"] < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert od.stats()["in_flight"] >= n, od.stats()
wait_in_flight(8)
pid = os.fork()
if pid == 0:
    try:
        ok = od.run_openrouter("fake/echo", "child-during", timeout=10) == "echo: child-during"
        ok = ok and od.stats()["in_flight"] == 0
    except BaseException:
        ok = False
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
t.join(12)
assert results.get("parent") == ["echo: inflight-%d" % i for i in range(8)], results
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
print("ok")
'''
    proc = run_py(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert server.attempts_for("child-during") == 1


def test_forked_child_that_never_called_before_works(server):
    code = r'''
import os, openrouter_direct as od
pid = os.fork()
if pid == 0:
    ok = od.run_openrouter("fake/echo", "fresh-child", timeout=10) == "echo: fresh-child"
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0
assert od.run_openrouter("fake/echo", "fresh-parent", timeout=10) == "echo: fresh-parent"
print("ok")
'''
    proc = run_py(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_multiprocessing_fork_pool_workers_can_call(server):
    code = r'''
import multiprocessing as mp, openrouter_direct as od
def work(i):
    return od.run_openrouter("fake/echo", "pool-%d" % i, timeout=10)
if __name__ == "__main__":
    assert od.run_openrouter("fake/echo", "pool-warm") == "echo: pool-warm"
    with mp.get_context("fork").Pool(3) as pool:
        out = pool.map(work, range(12))
    assert out == ["echo: pool-%d" % i for i in range(12)], out
    print("ok")
'''
    proc = run_py(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


EXIT_ASYNC = r'''
import asyncio, threading, openrouter_direct as od
def runner():
    async def main():
        await asyncio.gather(*(od.run_openrouter_async("fake/stall", "exit-async-%d" % i)
                               for i in range(50)))
    asyncio.run(main())
threading.Thread(target=runner, daemon=DAEMON).start()
import time
def wait_in_flight(n):  # the calls are on the wire
    deadline = time.monotonic() + 20
    while od.stats()["in_flight"] < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert od.stats()["in_flight"] >= n, od.stats()
wait_in_flight(8)   # the governor's first window (the cap is 10), the rest queued
import sys
sys.stdin.readline()  # the test sends a line once the server has read them
print("main done", flush=True)
'''


# Daemon threads only: Python waits for non-daemon threads, and so do their calls
# (test_c_review.py::test_non_daemon_threads_finish_their_calls_at_interpreter_exit).
@pytest.mark.parametrize("daemon", [True], ids=["daemon"])
def test_interpreter_exits_promptly_with_async_calls_stalled(server, daemon):
    # the governor's first window: 8 of the 50 on the wire, read by the server, the rest queued
    elapsed, out, err, rc = exit_once_the_server_has_them(
        server, EXIT_ASYNC.replace("DAEMON", str(daemon)), "exit-async-", 8)
    assert rc == 0, err
    assert "main done" in out
    assert elapsed < bound(6), elapsed
    assert "Fatal Python error" not in err


EXIT_SYNC = r'''
import threading, openrouter_direct as od
def runner():
    od.run_openrouter("fake/stall", "exit-sync")
threading.Thread(target=runner, daemon=DAEMON).start()
import time
def wait_in_flight(n):  # the calls are on the wire
    deadline = time.monotonic() + 20
    while od.stats()["in_flight"] < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert od.stats()["in_flight"] >= n, od.stats()
wait_in_flight(1)
import sys
sys.stdin.readline()  # the test sends a line once the server has read it
print("main done", flush=True)
'''


# Daemon threads only: Python waits for non-daemon threads, and so do their calls
# (test_c_review.py::test_non_daemon_threads_finish_their_calls_at_interpreter_exit).
@pytest.mark.parametrize("daemon", [True], ids=["daemon"])
def test_interpreter_exits_promptly_with_sync_call_stalled(server, daemon):
    # Before: the child ended once its call was in flight at the client, and under load the
    # server had not always read it yet (attempts 0). Now it ends once the server has.
    elapsed, out, err, rc = exit_once_the_server_has_them(
        server, EXIT_SYNC.replace("DAEMON", str(daemon)), "exit-sync", 1)
    assert rc == 0, err
    assert "main done" in out
    assert elapsed < bound(6), elapsed
    assert "Fatal Python error" not in err
    assert server.attempts_for("exit-sync") == 1


def test_interpreter_exits_cleanly_right_after_calls(server):
    code = r'''
import asyncio, openrouter_direct as od
async def main():
    return await asyncio.gather(*(od.run_openrouter_async("fake/echo", "quick-%d" % i)
                                  for i in range(30)))
assert len(asyncio.run(main())) == 30
'''
    t0 = time.monotonic()
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert time.monotonic() - t0 < bound(5)


def test_import_is_fast_and_starts_no_threads(server):
    code = r'''
import threading, time
t0 = time.perf_counter()
import openrouter_direct
print(time.perf_counter() - t0, threading.active_count())
'''
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    seconds, threads = proc.stdout.split()
    assert float(seconds) < bound(0.5)
    assert int(threads) == 1


def test_ctrl_c_interrupts_a_blocked_sync_call(server):
    code = r'''
import os, signal, threading, time, openrouter_direct as od
signal.signal(signal.SIGINT, signal.default_int_handler)  # see helpers.SIGINT_AS_INTERACTIVE
def interrupt_once_on_the_wire():
    while od.stats()["in_flight"] < 1:
        time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGINT)
    t0_box.append(time.monotonic())
t0_box = []
threading.Thread(target=interrupt_once_on_the_wire, daemon=True).start()
t0 = time.monotonic()
try:
    od.run_openrouter("fake/stall", "ctrl-c", timeout=20)
    print("returned")
except KeyboardInterrupt:
    print("interrupted %.2f" % (time.monotonic() - t0_box[0]))  # from the signal
deadline = time.monotonic() + 20
while od.stats()["in_flight"] and time.monotonic() < deadline:
    time.sleep(0.01)
print("in_flight", od.stats()["in_flight"])
'''
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first.startswith("interrupted"), proc.stdout
    assert float(first.split()[1]) < bound(1.0)
    assert second == "in_flight 0"


def test_closing_a_loop_with_calls_in_flight_is_harmless(server):
    """Replies for a loop that was closed meanwhile are dropped, not delivered."""
    code = r'''
import asyncio, gc, time, openrouter_direct as od
loop = asyncio.new_event_loop()
tasks = [loop.create_task(od.run_openrouter_async("fake/slow-200", "closed-%d" % i))
         for i in range(5)]
async def on_the_wire():
    while od.stats()["in_flight"] < 5:
        await asyncio.sleep(0.002)
loop.run_until_complete(asyncio.wait_for(on_the_wire(), 20))
loop.close()
deadline = time.monotonic() + 20     # the five replies arrive after the close
while (od.stats()["in_flight"] or od.stats()["queued"]) and time.monotonic() < deadline:
    time.sleep(0.01)
s = od.stats()
assert s["in_flight"] == 0 and s["queued"] == 0, s
del tasks
gc.collect()
assert asyncio.run(od.run_openrouter_async("fake/echo", "after-close")) == "echo: after-close"
assert od.run_openrouter("fake/echo", "after-close-sync") == "echo: after-close-sync"
print("ok")
'''
    proc = run_py(code, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert "Fatal" not in proc.stderr and "Segmentation" not in proc.stderr
