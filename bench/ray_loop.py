"""The engine's cost to a Ray actor's own asyncio loop, on the bench nginx (plain HTTP).

    .venv/bin/python bench/ray_loop.py [--actors 2] [--calls 16384] [--batch 1024] [--text]

Needs ray and nginx. Each actor (tests/ray_judge_actor.py: a dedicated loop thread running a busy
coroutine that spins 200 us per tick, as generation would keep the loop of a vLLM actor busy)
first idles for 2 s, then awaits ``--calls`` raw judge calls on its loop (LMJudgeVerifier's
shape; ``--text``: run_openrouter_async instead), ``--batch`` gathered at a time. Reported per
actor: judge calls/s, the loop thread's CPU per call spent outside the busy coroutine (the
engine's and asyncio's share: submitting, waking, resolving, building the response object), and
the busy coroutine's tick rate while judging as a share of its idle rate. The loop thread's CPU
and the busy coroutine's share of it are read together on the loop thread, so the difference is
exact up to one tick. Every reply is checked against the canned content.
"""

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, os.path.join(REPO, "tests")]
import suite  # noqa: E402
from workload import API_KEY, CANNED_CONTENT, MODEL  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--calls", type=int, default=16384)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--text", action="store_true",
                   help="await run_openrouter_async (the str) instead of the raw call")
    a = p.parse_args()
    import ray
    from ray_judge_actor import JudgeActor
    with suite.one_client_nginx("od-ray-loop-") as (_env, ng):
        base = "http://127.0.0.1:%d/api/v1" % ng.plain_port
        ray.init(num_cpus=a.actors, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                     [REPO, os.path.join(REPO, "tests")])}})
        try:
            env = {"OPENAI_API_BASE": base, "OPENAI_API_KEY": API_KEY,
                   "OPENROUTER_MAX_CONCURRENT_CALLS": "64"}
            actors = [ray.remote(num_cpus=1)(JudgeActor).remote(env) for _ in range(a.actors)]
            ray.get([x.judge.remote(["warm-up"] * 64, MODEL) for x in actors], timeout=120)
            idle = ray.get([x.idle.remote(2.0) for x in actors], timeout=60)

            def run_all(x):
                return x.judge.remote(["judge this"] * a.batch, MODEL, None, 300, a.text)

            totals = [[0, 0, 0.0, 0.0] for _ in actors]   # calls, ticks, cpu, wall
            for _ in range(max(1, a.calls // a.batch)):
                for tot, (replies, ticks, cpu, wall) in zip(
                        totals, ray.get([run_all(x) for x in actors], timeout=300)):
                    bad = [r for r in replies if r[0] != CANNED_CONTENT]
                    if bad:
                        sys.exit(f"wrong reply: {bad[0]!r}")
                    tot[0] += len(replies)
                    tot[1] += ticks
                    tot[2] += cpu
                    tot[3] += wall
        finally:
            ray.shutdown()
    us, kept = [], []
    for i, ((calls, ticks, cpu, wall), (iticks, _icpu)) in enumerate(zip(totals, idle)):
        idle_rate, busy_rate = iticks, ticks / wall
        us.append(cpu / calls * 1e6)
        kept.append(busy_rate / idle_rate)
        print(f"actor {i}: {calls} calls in {wall:.2f} s ({calls / wall:,.0f}/s); loop thread "
              f"{us[-1]:.1f} us/call outside the busy coroutine; busy coroutine at "
              f"{kept[-1]:.0%} of its idle tick rate ({busy_rate:,.0f} vs {idle_rate:,.0f}/s)")
    kind = "text" if a.text else "raw"
    print(f"{kind} calls, median over {len(us)} actors: {statistics.median(us):.1f} us of "
          f"loop-thread CPU per judge call; busy coroutine kept {statistics.median(kept):.0%} "
          "of its rate")


if __name__ == "__main__":
    main()
