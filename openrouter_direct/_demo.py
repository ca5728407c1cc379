"""``python -m openrouter_direct demo``: one simulated DR-Tulu training step, no key, no network.

A local OpenRouter stand-in (``_server.py``) runs in a child process, so the CPU figure is the
client's alone. The step is shaped like the trainer's: rubric generation gathers one large call per
prompt in one ``asyncio.run``; then judging runs in worker threads that each call ``asyncio.run``
per response to gather one judge call per rubric.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import _api

RUBRIC_WORDS = ("accuracy", "citations", "coverage", "clarity", "reasoning", "brevity")


def _start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "openrouter_direct._server", "--port", "0",
         "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    m = re.search(r"(http://\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit("demo: the local server did not start")
    return proc, m.group(1)


def _progress(total: int, start: dict, stop: threading.Event, label: str) -> None:
    width = 30
    while True:
        s = _api.stats()
        done = (s["succeeded"] + s["failed"]) - (start["succeeded"] + start["failed"])
        frac = min(1.0, done / total) if total else 1.0
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        sys.stderr.write(f"\r  {label:<18} [{bar}] {done}/{total}")
        sys.stderr.flush()
        if stop.wait(0.1):
            s = _api.stats()
            done = (s["succeeded"] + s["failed"]) - (start["succeeded"] + start["failed"])
            bar = "#" * width if done >= total else bar
            sys.stderr.write(f"\r  {label:<18} [{bar}] {done}/{total}\n")
            return


def _model_for(model: str, fault_rate: float, rng: random.Random) -> str:
    # On the local server a faulty call fails once (503) and then succeeds on retry.
    if model.startswith("fake/") or model == "demo/judge":
        return "fake/flaky-1-503" if rng.random() < fault_rate else "fake/echo"
    return model


def run_step(args: argparse.Namespace, model: str) -> dict:
    rng = random.Random(1234)
    question = "What are the main causes of the 2008 financial crisis? " * 4
    responses = [[f"Response {s} to question {p}: " + "Subprime lending and leverage. " * 40
                  for s in range(args.samples)] for p in range(args.prompts)]
    t0, c0, s0 = time.perf_counter(), time.process_time(), _api.stats()

    async def rubrics() -> list[str]:
        calls = []
        for p in range(args.prompts):
            prompt = (f"[prompt {p}] Question: {question}\n\n" + "\n\n".join(responses[p])
                      + "\n\nWrite adaptive rubrics as JSON.")
            calls.append(_api.run_openrouter_async(_model_for(model, args.fault_rate, rng), prompt))
        return await asyncio.gather(*calls)

    stop = threading.Event()
    bar = threading.Thread(target=_progress, args=(args.prompts, s0, stop, "rubric generation"))
    bar.start()
    rubric_texts = asyncio.run(rubrics())
    stop.set()
    bar.join()

    def judge(job: tuple[int, int]) -> list[str]:
        p, s = job
        async def one_response() -> list[str]:
            return await asyncio.gather(*[
                _api.run_openrouter_async(
                    _model_for(model, args.fault_rate, rng),
                    f"[p{p} s{s} r{r}] Rubric: {RUBRIC_WORDS[r % len(RUBRIC_WORDS)]}\n"
                    f"Response: {responses[p][s][:400]}",
                    system_prompt='You are a judge. Reply with JSON {"score": x}.',
                    max_tokens=800)
                for r in range(args.rubrics)])
        return asyncio.run(one_response())

    jobs = [(p, s) for p in range(args.prompts) for s in range(args.samples)]
    s1 = _api.stats()
    stop = threading.Event()
    bar = threading.Thread(target=_progress, args=(len(jobs) * args.rubrics, s1, stop, "judging"))
    bar.start()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        scores = list(pool.map(judge, jobs))
    stop.set()
    bar.join()

    wall, cpu, s2 = time.perf_counter() - t0, time.process_time() - c0, _api.stats()
    calls = s2["calls"] - s0["calls"]
    return {
        "calls": calls,
        "succeeded": s2["succeeded"] - s0["succeeded"],
        "failed": s2["failed"] - s0["failed"],
        "retries": s2["retries"] - s0["retries"],
        "empty replies": sum(1 for t in rubric_texts if not t) + sum(1 for r in scores for t in r if not t),
        "latency p50 / p95 / p99 (ms)": "{:.1f} / {:.1f} / {:.1f}".format(
            *(s2["latency_ms"][k] or 0.0 for k in ("p50", "p95", "p99"))),
        "wall time (s)": f"{wall:.2f}",
        "calls/s": f"{calls / wall:.0f}" if wall else "-",
        "CPU per call (µs)": f"{cpu / calls * 1e6:.0f}" if calls else "-",
        "max concurrent calls": s2["max_concurrent_calls"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrouter_direct demo", description=(
        "Run one simulated DR-Tulu training step through openrouter_direct against a local "
        "OpenRouter stand-in (no key, no network), or against --base-url with a key."))
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the step (32)")
    parser.add_argument("--samples", type=int, default=8, help="responses per prompt (8)")
    parser.add_argument("--rubrics", type=int, default=6, help="judge calls per response (6)")
    parser.add_argument("--threads", type=int, default=16, help="judging worker threads (16)")
    parser.add_argument("--latency-ms", type=float, default=50.0,
                        help="server-side latency of each call, local server only (50)")
    parser.add_argument("--fault-rate", type=float, default=0.02,
                        help="share of calls that fail once with 503 first, local server (0.02)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="max calls on the wire, process-wide (64)")
    parser.add_argument("--base-url", help="a real endpoint instead of the local server")
    parser.add_argument("--model", default="openai/gpt-4o-mini",
                        help="model for --base-url runs (openai/gpt-4o-mini)")
    args = parser.parse_args(argv)

    _api.configure(max_concurrent_calls=args.concurrency)
    proc = None
    if args.base_url:
        if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENROUTER_API_KEY")):
            print("demo: --base-url needs OPENAI_API_KEY or OPENROUTER_API_KEY", file=sys.stderr)
            return 2
        os.environ["OPENAI_API_BASE"] = args.base_url
        model = args.model
    else:
        proc, base = _start_server(args.latency_ms)
        os.environ.update({"OPENAI_API_BASE": base, "OPENAI_API_KEY": "demo-key-not-secret",
                           "OPENROUTER_RETRY_BASE_DELAY": "0.05"})
        model = "demo/judge"
        print(f"local OpenRouter stand-in at {base} (latency {args.latency_ms:g} ms, "
              f"fault rate {args.fault_rate:g})")
    try:
        summary = run_step(args, model)
    finally:
        if proc:
            proc.kill()
            proc.wait()
    width = max(len(k) for k in summary)
    print("\n  " + "-" * (width + 14))
    for k, v in summary.items():
        print(f"  {k:<{width}}  {v:>10}")
    print("  " + "-" * (width + 14))
    return 0 if summary["failed"] == 0 else 1
