"""The hedging benchmark: one training step's judge calls, when a provider stalls now and then.

The "step" workload: one client process (a fresh interpreter, as a vLLM Ray actor is) gathers N
calls at a cap of C and the step lasts until the last reply. The server is the package's
FakeOpenRouter with a log-normal latency (median 0.5 s, sigma 0.5) and, in the stall runs, a
share of attempts (drawn per attempt) that first wait S seconds: a provider that stalls. Each
configuration runs in its own process for --steps steps, one after the other, as a trainer's
steps follow each other (the first step starts with a cold latency estimate).

Reported per configuration: the wall time of each step, its ratio to the clean step without
hedging in the same run, extra attempts (attempts the server saw beyond one per call: hedges,
and retries if any), hedges sent and won; and the checks: every reply right, exactly one reply
per call (succeeded + failed + cancelled == calls), no transfer left running (the client's
in_flight and the server's requests in progress both 0 at the end).

    python bench/hedge.py                  full run: writes the results into docs/HEDGING.md and
                                           docs/hedging.png
    python bench/hedge.py --smoke          tiny counts, bench/out/smoke/ (CI: keeps it working)
    python bench/hedge.py --worker ...     (internal: one client process)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MODEL = "bench/judge"
START, END = "<!-- bench/hedge.py results: start -->", "<!-- bench/hedge.py results: end -->"


# ------------------------------------------------------------------ the client process
def worker(n, steps, tag):
    import openrouter_direct as od
    od.stats()   # load the extension before the start line
    print("ready", flush=True)
    sys.stdin.readline()   # "go"
    rows = []
    for s in range(steps):
        prompts = ["%s-s%d-%d" % (tag, s, i) for i in range(n)]
        before = od.stats()

        async def step():
            return await asyncio.gather(*(od.run_openrouter_async(MODEL, p) for p in prompts))
        t0 = time.monotonic()
        outs = asyncio.run(step())
        wall = time.monotonic() - t0
        after = od.stats()
        d = {k: after[k] - before[k] for k in ("calls", "succeeded", "failed", "cancelled",
                                               "retries")}
        h = {k: after["hedge"][k] - before["hedge"][k] for k in after["hedge"]}
        rows.append({"wall_s": wall, "wrong": sum(1 for p, o in zip(prompts, outs)
                                                  if o != "echo: " + p),
                     "one_each": d["calls"] == n and d["succeeded"] + d["failed"]
                     + d["cancelled"] == n,
                     "in_flight": after["in_flight"], "retries": d["retries"], "hedge": h})
        print(json.dumps({"progress": s, "wall_s": round(wall, 2)}), file=sys.stderr, flush=True)
    print(json.dumps({"steps": rows, "settings": od.configure()}), flush=True)


# ------------------------------------------------------------------ one configuration
def run(name, hedge, stall, args, env_base):
    from openrouter_direct._server import FakeOpenRouter
    srv = FakeOpenRouter(latency_ms=args.median * 1000, latency_jitter=args.sigma).start()
    try:
        srv.stall_rate, srv.stall_s = stall, args.stall_s
        env = dict(env_base, OPENAI_API_BASE=srv.base_url, OPENAI_API_KEY="bench-key",
                   OPENROUTER_MAX_CONCURRENT_CALLS=str(args.cap), OPENROUTER_HEDGE=hedge,
                   LOGLEVEL="CRITICAL", LITELLM_DEFAULT_TIMEOUT="600")
        p = subprocess.Popen([sys.executable, __file__, "--worker", str(args.calls),
                              str(args.steps), name], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
        assert p.stdout.readline().strip() == "ready"
        srv.reset()
        p.stdin.write("go\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=3600)
        res = json.loads(out.strip().splitlines()[-1])
        # a stalled attempt that lost was aborted: the server must see it go, not hold it
        deadline = time.monotonic() + 10
        while srv.in_progress and time.monotonic() < deadline:
            time.sleep(0.01)
        attempts = len(srv.chat_requests())
        left, stalls, abandoned = srv.in_progress, srv.stalls, srv.abandoned
    finally:
        srv.stop()
    n = args.calls * args.steps
    steps = res["steps"]
    return {"name": name, "hedge": hedge, "stall": stall, "steps_s": [s["wall_s"] for s in steps],
            "sent_per_step": [s["hedge"]["sent"] for s in steps],
            "calls": n, "attempts": attempts, "extra": (attempts - n) / n,
            "sent": sum(s["hedge"]["sent"] for s in steps),
            "won": sum(s["hedge"]["won"] for s in steps),
            "retries": sum(s["retries"] for s in steps),
            "wrong": sum(s["wrong"] for s in steps),
            "one_each": all(s["one_each"] for s in steps),
            "left_running": left + sum(s["in_flight"] for s in steps),
            "stalls": stalls, "abandoned": abandoned}


# ------------------------------------------------------------------ report
def chart(rows, clean_s, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4))
    names = [r["name"] for r in rows]
    for i, r in enumerate(rows):
        mean = sum(r["steps_s"]) / len(r["steps_s"])
        ax.bar(i, mean, color="tab:orange" if r["hedge"] == "off" else "tab:blue", alpha=0.8)
        ax.scatter([i] * len(r["steps_s"]), r["steps_s"], color="black", s=12, zorder=3)
    ax.axhline(clean_s, color="grey", lw=1, ls="--", label="clean step, no hedging")
    ax.axhline(1.2 * clean_s, color="red", lw=1, ls=":", label="1.2 × clean (target)")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("step wall time (s): bar = mean, dots = steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows, clean_s, args):
    cmd = " ".join(["python bench/hedge.py"] + sys.argv[1:])
    lines = [START, "",
             "`%s` (%s, %d steps per configuration). N = %d calls per step at a cap of C = %d, "
             "log-normal latency median %g s (sigma %g); stalls: a share of attempts waits %g s "
             "first." % (cmd, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), args.steps,
                         args.calls, args.cap, args.median, args.sigma, args.stall_s), "",
             "| configuration | step wall time (s) | ratio to clean | extra attempts | hedges "
             "sent / won | stalls drawn | replies right, one per call, none left running |",
             "|---|---|--:|--:|--:|--:|---|"]
    for r in rows:
        mean = sum(r["steps_s"]) / len(r["steps_s"])
        checks = "yes" if (not r["wrong"] and r["one_each"] and not r["left_running"]) else (
            "NO (%d wrong, one each: %s, %d left)" % (r["wrong"], r["one_each"],
                                                     r["left_running"]))
        lines.append("| %s | %s | %.2f× | %.2f%% | %d / %d | %d | %s |" % (
            r["name"], ", ".join("%.1f" % s for s in r["steps_s"]), mean / clean_s,
            100 * r["extra"], r["sent"], r["won"], r["stalls"], checks))
    lines += ["", "![step wall time per configuration](hedging.png)", "", END]
    return "\n".join(lines)


def write_report(text, path):
    old = open(path).read() if os.path.exists(path) else "# Hedged requests\n\n" + START + END
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(new)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=3)
    ap.add_argument("--calls", type=int, default=1536)
    ap.add_argument("--cap", type=int, default=128)
    ap.add_argument("--median", type=float, default=0.5)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--stall", type=float, default=0.01)
    ap.add_argument("--stall-s", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--hedges", default="off,p99.5,p99",
                    help="OPENROUTER_HEDGE values to compare ('off' first: the reference)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.worker:
        n, steps, tag = args.worker
        worker(int(n), int(steps), tag)
        return
    if args.smoke:
        # two steps of 200: the second has a warm estimate (128 successes), so hedges do go
        args.calls, args.cap, args.median, args.stall, args.stall_s = 200, 32, 0.05, 0.02, 3.0
        args.steps, args.hedges = 2, "off,p99.5"
    out_dir = args.out or (os.path.join(HERE, "out", "smoke") if args.smoke
                           else os.path.join(ROOT, "docs"))
    os.makedirs(out_dir, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    hedges = [h for h in args.hedges.split(",") if h]
    rows = []
    for stall in (0.0, args.stall):
        for hedge in hedges:
            name = "%s, hedge %s" % ("clean" if not stall else "%g%% stall %g s"
                                     % (100 * stall, args.stall_s), hedge)
            row = run(name, hedge, stall, args, env)
            rows.append(row)
            print(json.dumps(row), flush=True)
    clean = rows[0]
    clean_s = sum(clean["steps_s"]) / len(clean["steps_s"])
    raw_dir = os.path.join(HERE, "out")
    os.makedirs(raw_dir, exist_ok=True)
    with open(os.path.join(raw_dir, "hedge.json"), "w") as f:
        json.dump(rows, f)
    write_report(table(rows, clean_s, args), os.path.join(out_dir, "HEDGING.md"))
    chart(rows, clean_s, os.path.join(out_dir, "hedging.png"))
    bad = [r["name"] for r in rows if r["wrong"] or not r["one_each"] or r["left_running"]]
    if bad:
        sys.exit("[hedge] wrong replies, a call without exactly one reply, or a transfer left "
                 "running: %s" % bad)


if __name__ == "__main__":
    main()
