"""CPU per call of the raw call against the text call, on the bench nginx (plain HTTP).

    .venv/bin/python bench/raw_cpu.py [--pairs 3] [--secs 2]   (needs nginx and openssl)

Runs client.py's ``openrouter_direct`` (run_openrouter_async -> str) and ``od-raw``
(run_openrouter_async_raw -> .choices[0].message.content) alternately, each in a fresh process,
``--pairs`` times, and prints each figure and the ratio of the medians. Issue 12's target: the
raw call within 1.5x of the text call's CPU per call.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import suite  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--secs", type=float, default=2.0)
    a = p.parse_args()
    cpu = {"openrouter_direct": [], "od-raw": []}
    with suite.one_client_nginx("od-raw-cpu-") as (env, ng):
        base = "http://127.0.0.1:%d/api/v1" % ng.plain_port
        for _ in range(a.pairs):
            for client in cpu:
                out = subprocess.run(
                    [sys.executable, os.path.join(HERE, "client.py"), client, "throughput", base,
                     "--secs", str(a.secs), "--rounds", "3"],
                    env=env, capture_output=True, text=True, timeout=300)
                if out.returncode != 0:
                    sys.exit(f"{client} failed: {out.stderr[-2000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                if res.get("errors") or res.get("wrong"):
                    sys.exit(f"{client}: {res.get('errors')} errors, {res.get('wrong')} wrong")
                cpu[client].append(res["cpu_us_per_call"])
                print(f"{client:18s} {res['cpu_us_per_call']:6.1f} us/call  "
                      f"{res['calls_per_s']:8.0f} calls/s", flush=True)
    text, raw = (statistics.median(cpu[c]) for c in cpu)
    print(f"median CPU per call: text {text:.1f} us, raw {raw:.1f} us, ratio {raw / text:.2f}x")


if __name__ == "__main__":
    main()
