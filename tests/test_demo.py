"""``python -m openrouter_direct demo``: one simulated DR-Tulu step against the embedded server,
run in a subprocess with small counts; the summary table is read back."""

import re
import subprocess
import sys

import pytest

from helpers import REPO

ROWS = ("calls", "succeeded", "failed", "retries", "empty replies",
        "judge replies parsed as JSON", "latency p50 / p95 / p99 (ms)", "wall time (s)",
        "calls/s", "CPU per call (µs)", "concurrency cap (calls on the wire)")


def demo(*args, env=None, timeout=90):
    import os
    full = dict(os.environ, PYTHONPATH=REPO)
    for name in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "OPENAI_API_BASE", "http_proxy",
                 "https_proxy", "all_proxy"):
        full.pop(name, None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "openrouter_direct", "demo", *args],
                          capture_output=True, text=True, timeout=timeout, env=full, cwd=REPO)


def summary(stdout):
    rows = {}
    for line in stdout.splitlines():
        for name in ROWS:
            m = re.match(r"^  %s\s{2,}(\S.*)$" % re.escape(name), line)
            if m:
                rows[name] = m.group(1).strip()
    assert set(rows) >= set(ROWS), stdout
    return rows


def num(text):
    return float(text.split(" / ")[0].replace(",", ""))


SMALL = ("--prompts", "3", "--samples", "2", "--rubrics", "2", "--threads", "2",
         "--latency-ms", "2")


def test_small_step_with_faults_is_all_retried_to_success():
    proc = demo(*SMALL, "--fault-rate", "0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = summary(proc.stdout)
    calls = 3 + 3 * 2 * 2
    assert num(rows["calls"]) == calls and num(rows["succeeded"]) == calls
    assert num(rows["failed"]) == 0 and num(rows["empty replies"]) == 0
    assert num(rows["retries"]) >= 1
    assert rows["judge replies parsed as JSON"] == "12 / 12"
    p50, p95, p99 = (float(x.replace(",", "")) for x in rows["latency p50 / p95 / p99 (ms)"]
                     .split(" / "))
    assert 0 < p50 <= p95 <= p99
    assert num(rows["wall time (s)"]) > 0 and num(rows["calls/s"]) > 0
    assert num(rows["CPU per call (µs)"]) > 0
    assert "127.0.0.1" in proc.stdout and "fault rate 0.5" in proc.stdout
    # a progress bar per phase; stderr is a pipe, so one finished line each
    assert re.search(r"rubric generation\s+\[#+\] 3/3", proc.stderr), proc.stderr
    assert re.search(r"judging\s+\[#+\] 12/12", proc.stderr), proc.stderr


def test_no_faults_means_no_retries_and_options_shape_the_step():
    proc = demo(*SMALL, "--fault-rate", "0", "--concurrency", "3")
    assert proc.returncode == 0, proc.stderr
    rows = summary(proc.stdout)
    assert num(rows["retries"]) == 0 and num(rows["calls"]) == 15
    assert rows["concurrency cap (calls on the wire)"] == "3"


def test_default_step_shape_is_32_prompts_8_samples_6_rubrics():
    """The README's first command, at zero latency to keep the suite fast."""
    proc = demo("--latency-ms", "0", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = summary(proc.stdout)
    assert rows["calls"] == "1,568" and rows["succeeded"] == "1,568"
    assert rows["judge replies parsed as JSON"] == "1,536 / 1,536"
    assert "32 prompts x 8 responses" in proc.stdout and "from 16 threads" in proc.stdout


def test_base_url_runs_the_same_step_against_that_endpoint(server):
    proc = demo(*SMALL, "--base-url", server.base_url, "--model", "openai/gpt-4.1",
                env={"OPENAI_API_KEY": "sk-or-demo"})
    assert proc.returncode == 0, proc.stderr
    rows = summary(proc.stdout)
    assert num(rows["calls"]) == 15
    reqs = server.chat_requests()
    assert len(reqs) == 15 and {r["body"]["model"] for r in reqs} == {"openai/gpt-4.1"}
    assert {r["headers"]["authorization"] for r in reqs} == {"Bearer sk-or-demo"}
    judge = [r for r in reqs if r["body"]["messages"][0]["role"] == "system"]
    assert len(judge) == 12
    assert all(r["body"]["response_format"] == {"type": "json_object"} for r in judge)
    rubric = [r for r in reqs if r not in judge]
    assert all("<response 1>" in r["body"]["messages"][0]["content"] for r in rubric)
    assert "cost (USD, as reported)" in proc.stdout


def test_base_url_without_a_key_is_refused():
    proc = demo("--base-url", "http://127.0.0.1:9/api/v1")
    assert proc.returncode == 2 and "needs a key" in proc.stderr


@pytest.mark.parametrize("args", [("--fault-rate", "1.5"), ("--prompts", "0"),
                                  ("--latency-ms", "-1"), ("--concurrency", "0")])
def test_bad_options_are_rejected(args):
    proc = demo(*args)
    assert proc.returncode == 2 and "error" in proc.stderr
