"""Defects from the C review of issue 13, each pinned by the behaviour a user sees.

Every scenario that changes process-wide state (a subinterpreter, cJSON's hooks, fork, exit)
runs in a fresh interpreter against the session's fake server."""

import pytest

from helpers import run_py


# ------------------------------------------------------------------ subinterpreters
def test_a_subinterpreter_is_refused_and_the_main_interpreter_keeps_calling(server):
    # Before: the subinterpreter's module registered its own exit hook, and its end stopped the
    # process-wide engine: the call after it failed [shutdown].
    code = r'''
import _testcapi, openrouter_direct as od
assert od.run_openrouter("fake/echo", "main-before-sub", timeout=10) == "echo: main-before-sub"
_testcapi.run_in_subinterp("""
import openrouter_direct as od
try:
    od.stats()
    print("loaded in a subinterpreter")
except ImportError as exc:
    print("refused:", exc)
""")
print(od.run_openrouter("fake/echo", "main-after-sub", timeout=10))
'''
    proc = run_py(code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("refused:") and "subinterpreter" in lines[0], proc.stdout
    assert lines[1] == "echo: main-after-sub", (proc.stdout, proc.stderr)
    assert "[shutdown]" not in proc.stderr


# ------------------------------------------------------------------ exit and non-daemon threads
NON_DAEMON_AT_EXIT = r'''
import asyncio, threading, openrouter_direct as od
go = threading.Event()
# threading's exit hooks run last-registered first: this one runs after any the package
# registers there, while Python is about to join the non-daemon threads.
threading._register_atexit(go.set)
od.stats()  # loads the extension, which registers its exit hook
on_wire = threading.Event()
def in_flight_sync():
    print("sync:", od.run_openrouter("fake/slow-300", "nd-sync"), flush=True)
def in_flight_async():
    async def main():
        return await asyncio.gather(*(od.run_openrouter_async("fake/slow-300", "nd-async-%d" % i)
                                      for i in range(3)))
    print("async:", asyncio.run(main()), flush=True)
def after_exit_began():
    go.wait()
    print("late:", od.run_openrouter("fake/echo", "nd-late"), flush=True)
for fn in (in_flight_sync, in_flight_async, after_exit_began):
    threading.Thread(target=fn).start()
print("main done", flush=True)
'''


def test_non_daemon_threads_finish_their_calls_at_interpreter_exit(server):
    # Before: the package's exit hook ran before Python joined non-daemon threads, so their
    # calls (in flight, or made while Python waited for them) returned "" [shutdown].
    proc = run_py(NON_DAEMON_AT_EXIT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "sync: echo: nd-sync" in out, (proc.stdout, proc.stderr)
    assert "async: ['echo: nd-async-0', 'echo: nd-async-1', 'echo: nd-async-2']" in out, out
    assert "late: echo: nd-late" in out, (proc.stdout, proc.stderr)
    assert "[shutdown]" not in proc.stderr
