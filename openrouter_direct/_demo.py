"""``python -m openrouter_direct demo``: one simulated DR-Tulu training step, no key, no network.

With no ``--base-url`` the demo starts the package's own OpenRouter stand-in (``_server.py``,
standard library only) on 127.0.0.1 in a child process, so the CPU figure is the client's alone.
Its latency is log-normal around ``--latency-ms`` (a long tail, as real providers have), and
``--fault-rate`` of the calls fail at random with 503, 502, 429 or a 200 carrying an error
object, which the engine retries.

The step has the trainer's shape. Rubric generation: one long call per prompt (the question and
all its sampled responses), gathered in one ``asyncio.run``. Judging: inside that run, every
response goes to a worker thread through ``loop.run_in_executor``; the worker calls
``asyncio.run`` to gather one judge call per rubric, as DR-Tulu's verifiers do. A live progress
bar follows each phase; a summary table ends the run. ``--base-url`` (with a key in
``OPENAI_API_KEY`` or ``OPENROUTER_API_KEY``) and ``--model`` run the same step against a real
endpoint; that makes real, billed calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _api
from ._progress import Progress

RUBRIC_WORDS = ("accuracy", "citations", "coverage", "clarity", "reasoning", "brevity")
QUESTION = "What were the main causes of the 2008 financial crisis, and which mattered most?"
JUDGE_SYSTEM = ('You are a strict grader. Judge the response against one rubric item and reply '
                'with a JSON object only: {"score": S}, S being 0, 1 or 2.')


def _start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "openrouter_direct._server", "--port", "0",
         "--latency-ms", str(args.latency_ms), "--latency-jitter", str(args.latency_jitter),
         "--fault-rate", str(args.fault_rate), "--seed", "1234"],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None  # stdout=PIPE
    ready, _, _ = select.select([proc.stdout], [], [], 15.0)
    line = proc.stdout.readline() if ready else ""
    m = re.search(r"(http://\S+)", line)
    if not m:
        proc.kill()
        proc.wait()
        raise SystemExit("demo: the local server did not start")
    return proc, m.group(1)


def _watch(label: str, total: int, start: dict[str, Any], stop: threading.Event) -> None:
    """Draw the progress of one phase from the engine's counters until ``stop`` is set."""
    def done() -> int:
        s = _api.stats()
        n: int = (s["succeeded"] + s["failed"]) - (start["succeeded"] + start["failed"])
        return n
    bar = Progress(label, total)
    while not stop.wait(0.1):
        bar.update(done())
    bar.close(done())


def _phase(label: str, total: int) -> Any:
    """A context manager running ``_watch`` in a thread for the duration of a phase."""
    class _Phase:
        def __enter__(self) -> None:
            self.stop = threading.Event()
            self.thread = threading.Thread(target=_watch, daemon=True,
                                           args=(label, total, _api.stats(), self.stop))
            self.thread.start()

        def __exit__(self, *exc: Any) -> None:
            self.stop.set()
            self.thread.join()
    return _Phase()


def _responses(prompts: int, samples: int) -> list[list[str]]:
    body = ("Subprime lending grew while leverage at investment banks rose; securitisation "
            "spread the risk and hid it. ")
    return [[f"Response {s} to prompt {p}: " + body * 12 for s in range(samples)]
            for p in range(prompts)]


def _score(text: str) -> float | None:
    start, end = text.find("{"), text.rfind("}")
    try:
        value = json.loads(text[start:end + 1])["score"] if start != -1 else None
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def run_step(args: argparse.Namespace, model: str) -> dict[str, Any]:
    responses = _responses(args.prompts, args.samples)
    jobs = [(p, s) for p in range(args.prompts) for s in range(args.samples)]

    def rubric_prompt(p: int) -> str:
        shown = "\n\n".join(f"<response {i}>\n{r}\n</response {i}>"
                            for i, r in enumerate(responses[p]))
        return (f"[prompt {p}] Question: {QUESTION}\n\n{shown}\n\nExisting rubrics: none.\n"
                f"Write {args.rubrics} adaptive rubric items that tell these responses apart, "
                "as a JSON list of objects with 'title' and 'description'.")

    def judge_response(p: int, s: int) -> list[str]:
        # A verifier in a worker thread: its own short-lived event loop, as in the trainer.
        async def rubrics() -> list[str]:
            return await asyncio.gather(*[
                _api.run_openrouter_async(
                    model,
                    f"[p{p} s{s} r{r}] Rubric item: the response shows "
                    f"{RUBRIC_WORDS[r % len(RUBRIC_WORDS)]}.\nResponse:\n{responses[p][s]}",
                    JUDGE_SYSTEM, max_tokens=800, response_format={"type": "json_object"})
                for r in range(args.rubrics)])
        return asyncio.run(rubrics())

    async def step() -> tuple[list[str], list[list[str]]]:
        with _phase("rubric generation", args.prompts):
            rubric_texts = await asyncio.gather(*[
                _api.run_openrouter_async(model, rubric_prompt(p)) for p in range(args.prompts)])
        loop = asyncio.get_running_loop()
        with _phase("judging", len(jobs) * args.rubrics), \
                ThreadPoolExecutor(max_workers=args.threads) as pool:
            judged = await asyncio.gather(*[loop.run_in_executor(pool, judge_response, p, s)
                                            for p, s in jobs])
        return rubric_texts, judged

    s0, t0, c0 = _api.stats(), time.perf_counter(), time.process_time()
    rubric_texts, judged = asyncio.run(step())
    wall, cpu, s1 = time.perf_counter() - t0, time.process_time() - c0, _api.stats()

    calls = s1["calls"] - s0["calls"]
    replies = [t for t in rubric_texts] + [t for r in judged for t in r]
    scores = [_score(t) for r in judged for t in r]
    lat = s1["latency_ms"]
    summary: dict[str, Any] = {
        "calls": f"{calls:,}",
        "succeeded": f"{s1['succeeded'] - s0['succeeded']:,}",
        "failed": f"{s1['failed'] - s0['failed']:,}",
        "retries": f"{s1['retries'] - s0['retries']:,}",
        "empty replies": f"{sum(1 for t in replies if not t):,}",
        "judge replies parsed as JSON": f"{sum(1 for x in scores if x is not None):,}"
                                        f" / {len(scores):,}",
        "latency p50 / p95 / p99 (ms)": " / ".join(
            f"{lat[k]:,.0f}" if lat[k] is not None else "-" for k in ("p50", "p95", "p99")),
        "wall time (s)": f"{wall:.2f}",
        "calls/s": f"{calls / wall:,.0f}" if wall > 0 else "-",
        "CPU per call (µs)": f"{cpu / calls * 1e6:,.0f}" if calls else "-",
        "concurrency cap (calls on the wire)": f"{s1['max_concurrent_calls']}",
    }
    if args.base_url:
        summary["cost (USD, as reported)"] = f"{s1['cost'] - s0['cost']:.4f}"
    summary["_failed"] = s1["failed"] - s0["failed"]
    return summary


def _table(summary: dict[str, Any]) -> str:
    rows = [(k, str(v)) for k, v in summary.items() if not k.startswith("_")]
    kw = max(len(k) for k, _ in rows)
    vw = max(len(v) for _, v in rows)
    rule = "  " + "-" * (kw + vw + 4)
    lines = [rule] + [f"  {k:<{kw}}    {v:>{vw}}" for k, v in rows] + [rule]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrouter_direct demo", description=(
        "Run one simulated DR-Tulu training step through openrouter_direct: rubric generation "
        "for PROMPTS x SAMPLES responses, then judging every response against RUBRICS rubric "
        "items from THREADS worker threads that each call asyncio.run. By default against an "
        "embedded local OpenRouter stand-in (no key, no network); with --base-url and a key, "
        "against a real endpoint (billed)."))
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the step (32)")
    parser.add_argument("--samples", type=int, default=8, help="responses per prompt (8)")
    parser.add_argument("--rubrics", type=int, default=6, help="rubric items judged per "
                                                                "response (6)")
    parser.add_argument("--threads", type=int, default=16, help="judging worker threads (16)")
    parser.add_argument("--latency-ms", type=float, default=100.0,
                        help="median latency of a call on the local server (100)")
    parser.add_argument("--latency-jitter", type=float, default=0.5,
                        help="sigma of the log-normal latency spread on the local server; "
                             "0 for a fixed latency (0.5)")
    parser.add_argument("--fault-rate", type=float, default=0.02,
                        help="share of calls the local server fails once at random with "
                             "503/502/429, to be retried (0.02)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="most calls on the wire at once, process-wide (64)")
    parser.add_argument("--base-url", help="run against this endpoint instead of the local "
                                           "server (needs OPENAI_API_KEY or OPENROUTER_API_KEY)")
    parser.add_argument("--model", default="openai/gpt-4.1-mini",
                        help="model for rubric generation and judging (openai/gpt-4.1-mini)")
    args = parser.parse_args(argv)
    for name in ("prompts", "samples", "rubrics", "threads", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 0.0 <= args.fault_rate <= 1.0:
        parser.error("--fault-rate must be between 0 and 1")
    if args.latency_ms < 0 or args.latency_jitter < 0:
        parser.error("--latency-ms and --latency-jitter must not be negative")

    _api.configure(max_concurrent_calls=args.concurrency)
    total = args.prompts + args.prompts * args.samples * args.rubrics
    proc = None
    if args.base_url:
        if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENROUTER_API_KEY")):
            print("demo: --base-url needs a key in OPENAI_API_KEY or OPENROUTER_API_KEY",
                  file=sys.stderr)
            return 2
        os.environ["OPENAI_API_BASE"] = args.base_url
        print(f"endpoint {args.base_url}, model {args.model}: {total:,} real calls")
    else:
        proc, base = _start_server(args)
        os.environ.update({"OPENAI_API_BASE": base, "OPENAI_API_KEY": "demo-key-not-secret",
                           "OPENROUTER_RETRY_BASE_DELAY": "0.05"})
        print(f"local OpenRouter stand-in at {base}: latency {args.latency_ms:g} ms median "
              f"(log-normal, sigma {args.latency_jitter:g}), fault rate {args.fault_rate:g}")
    print(f"one DR-Tulu step: rubrics for {args.prompts} prompts x {args.samples} responses, "
          f"then {args.prompts * args.samples} responses x {args.rubrics} rubrics judged from "
          f"{args.threads} threads; at most {args.concurrency} calls on the wire", flush=True)
    try:
        summary = run_step(args, args.model)
    finally:
        if proc:
            proc.kill()
            proc.wait()
    print(_table(summary))
    return 0 if summary["_failed"] == 0 else 1
