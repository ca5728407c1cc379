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
