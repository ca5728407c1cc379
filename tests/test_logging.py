"""DEBUG lines per attempt, switched on by the logger level or LOGLEVEL at import."""

import logging
import re

from helpers import arun, run_py, uniq

LOGGER = "openrouter_direct"


def debug_lines(caplog, model):
    return [r.getMessage() for r in caplog.records
            if r.name.startswith(LOGGER) and r.levelno == logging.DEBUG
            and model in r.getMessage()]


def tokens(line):
    return set(re.findall(r"[A-Za-z0-9_.:#=-]+", line))


def test_debug_logs_one_line_per_attempt_with_id_model_attempt_status_ms(od, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    model_a, model_b = "fake/flaky-2-503", "fake/flaky-1-429"
    pa, pb = uniq(), uniq()
    assert arun(od.run_openrouter_async(model_a, pa)) == "echo: " + pa
    assert arun(od.run_openrouter_async(model_b, pb)) == "echo: " + pb
    a, b = debug_lines(caplog, model_a), debug_lines(caplog, model_b)
    assert len(a) == 3, a
    assert len(b) == 2, b
    assert "503" in a[0] and "503" in a[1] and "200" in a[2]
    assert "429" in b[0] and "200" in b[1]
    for i, line in enumerate(a, 1):
        assert re.search(r"\b%d\b" % i, line), line        # attempt number
        assert re.search(r"\d+(\.\d+)?\s*ms", line), line  # duration in ms
    # a request id: shared by the lines of one call, different from the other call's
    id_a = set.intersection(*(tokens(x) for x in a)) - set.union(*(tokens(x) for x in b))
    id_b = set.intersection(*(tokens(x) for x in b)) - set.union(*(tokens(x) for x in a))
    id_a -= tokens(model_a)
    id_b -= tokens(model_b)
    assert id_a and id_b, (a, b)


def test_debug_line_for_connection_failure_names_the_error(od, caplog):
    import socket
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    arun(od.run_openrouter_async("fake/echo", uniq(), num_retries=1,
                                 api_base="http://127.0.0.1:%d/api/v1" % port))
    lines = debug_lines(caplog, "fake/echo")
    assert len(lines) == 2, lines


def test_no_debug_lines_at_default_level(od, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    arun(od.run_openrouter_async("fake/flaky-1-503", uniq()))
    assert [r for r in caplog.records if r.levelno < logging.WARNING] == []


def test_loglevel_debug_env_at_import_enables_attempt_lines(server):
    code = r'''
import logging
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)
logging.getLogger().addHandler(Keep())
import openrouter_direct as od
assert logging.getLogger("openrouter_direct").getEffectiveLevel() == logging.DEBUG
assert od.run_openrouter("fake/flaky-1-500", "loglevel-env") == "echo: loglevel-env"
lines = [r.getMessage() for r in records
         if r.levelno == logging.DEBUG and "fake/flaky-1-500" in r.getMessage()]
assert len(lines) == 2, lines
print("ok")
'''
    proc = run_py(code, timeout=30, env={"LOGLEVEL": "DEBUG"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
