"""The governor's benchmark: P client processes share one rate limit, as the vLLM Ray actors of
one training run share one OpenRouter key.

The server is the package's FakeOpenRouter with its shared token bucket (R calls/s, a burst,
429 + Retry-After beyond it) and a log-normal latency for admitted calls. Each client process is
a fresh interpreter (as Ray starts them) that gathers M calls at a ceiling of 256 and reports
each reply; the server logs every attempt with its time and status. Reported per run: calls
lost (a reply that is not the right text), wall time against the ideal N/R, attempts per call,
the share of attempts answered 429, Jain's fairness index of per-process throughput, and for
the "change" runs (R halved, then doubled back) how long until goodput is back to 90% of the
new R.

    python bench/ratelimit.py                    full run, writes docs/GOVERNOR.md and docs/governor.png
    python bench/ratelimit.py --smoke            tiny counts, openrouter_direct only; bench/out/
    python bench/ratelimit.py --clients od,litellm --procs 4
    python bench/ratelimit.py --worker CLIENT M TAG   (internal: one client process)

Clients: od (openrouter_direct, adaptive governor, the default), od-fixed (OPENROUTER_ADAPTIVE=0),
od-nohedge (OPENROUTER_HEDGE=off: compared with od, what hedging changes under a rate limit),
litellm (acompletion, num_retries=5), openai (AsyncOpenAI, max_retries=5), aiohttp (LiteLLM's
policy: 5 retries, exponential backoff, Retry-After ignored). Peers run under an
asyncio.Semaphore(256), as DR-Tulu's LITELLM_MAX_CONCURRENT_CALLS does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

CEILING = 256
MODEL = "bench/judge"


# ------------------------------------------------------------------ one client process
async def _od_calls(m, tag, samples):
    import openrouter_direct as od
    key = os.environ["OPENAI_API_BASE"] + "/chat/completions"

    def sample():
        while not samples["stop"]:
            ep = od.stats()["endpoints"].get(key)
            if ep:
                samples["limit"].append((time.monotonic(), ep["limit"], ep.get("rate", 0.0)))
            time.sleep(0.1)
    threading.Thread(target=sample, daemon=True).start()
    outs = await asyncio.gather(*(od.run_openrouter_async(MODEL, "%s-%d" % (tag, i))
                                  for i in range(m)))
    samples["stop"] = True
    return outs


async def _litellm_calls(m, tag, samples):
    import litellm
    litellm.suppress_debug_info = True
    sem = asyncio.Semaphore(CEILING)
    base, key = os.environ["OPENAI_API_BASE"], os.environ["OPENAI_API_KEY"]

    async def one(i):
        async with sem:
            try:
                r = await litellm.acompletion(model="openai/" + MODEL, api_base=base, api_key=key,
                                              messages=[{"role": "user", "content": "%s-%d" % (tag, i)}],
                                              temperature=0, max_tokens=800, num_retries=5,
                                              timeout=600)
                return r.choices[0].message.content or ""
            except Exception:  # noqa: BLE001 - a lost call, counted
                return ""
    return await asyncio.gather(*(one(i) for i in range(m)))


async def _openai_calls(m, tag, samples):
    import openai
    client = openai.AsyncOpenAI(base_url=os.environ["OPENAI_API_BASE"],
                                api_key=os.environ["OPENAI_API_KEY"], max_retries=5, timeout=600)
    sem = asyncio.Semaphore(CEILING)

    async def one(i):
        async with sem:
            try:
                r = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "%s-%d" % (tag, i)}],
                    temperature=0, max_tokens=800)
                return r.choices[0].message.content or ""
            except Exception:  # noqa: BLE001
                return ""
    return await asyncio.gather(*(one(i) for i in range(m)))


async def _aiohttp_calls(m, tag, samples):
    import random

    import aiohttp
    url = os.environ["OPENAI_API_BASE"] + "/chat/completions"
    headers = {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}
    sem = asyncio.Semaphore(CEILING)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CEILING)) as s:
        async def one(i):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "%s-%d" % (tag, i)}],
                    "temperature": 0, "max_tokens": 800}
            async with sem:
                for attempt in range(6):   # LiteLLM's policy: 5 retries, Retry-After ignored
                    try:
                        async with s.post(url, json=body, headers=headers) as r:
                            if r.status == 200:
                                data = await r.json()
                                return data["choices"][0]["message"]["content"] or ""
                            await r.read()
                    except aiohttp.ClientError:
                        pass
                    if attempt < 5:
                        await asyncio.sleep(min(0.5 * 2 ** attempt, 8) * (0.75 + 0.25 * random.random()))
                return ""
        return await asyncio.gather(*(one(i) for i in range(m)))


CLIENTS = {"od": _od_calls, "od-fixed": _od_calls, "od-nohedge": _od_calls,
           "litellm": _litellm_calls,
           "openai": _openai_calls, "aiohttp": _aiohttp_calls}


def worker(client, m, tag):
    if client == "od-fixed":
        os.environ["OPENROUTER_ADAPTIVE"] = "0"
    if client == "od-nohedge":
        os.environ["OPENROUTER_HEDGE"] = "off"
    fn = CLIENTS[client]
    samples = {"limit": [], "stop": False}
    if client.startswith("od"):
        import openrouter_direct as od
        od.stats()   # load the extension before the start line
    else:
        __import__({"litellm": "litellm", "openai": "openai", "aiohttp": "aiohttp"}[client])
    print("ready", flush=True)
    sys.stdin.readline()   # "go"
    t0 = time.monotonic()
    outs = asyncio.run(fn(m, tag, samples))
    t1 = time.monotonic()
    ok = sum(1 for i, text in enumerate(outs) if text == "echo: %s-%d" % (tag, i))
    hedges = od.stats()["hedge"]["sent"] if client.startswith("od") else 0
    print(json.dumps({"ok": ok, "lost": m - ok, "t0": t0, "t1": t1, "limit": samples["limit"],
                      "hedges": hedges}), flush=True)


# ------------------------------------------------------------------ one run
def jain(xs):
    return (sum(xs) ** 2) / (len(xs) * sum(x * x for x in xs)) if xs and any(xs) else 0.0


def goodput_series(log, t0, bin_s):
    """[(t since t0, successes/s)] in bins of bin_s."""
    ends = [t - t0 for t, code in log if code == 200]
    if not ends:
        return []
    n = int(max(ends) / bin_s) + 1
    counts = [0] * n
    for e in ends:
        if e >= 0:
            counts[int(e / bin_s)] += 1
    return [((k + 0.5) * bin_s, c / bin_s) for k, c in enumerate(counts)]


def recovery_s(log, t0, t_change, new_rate, window=1.0):
    """Seconds after t_change until the admitted rate over the last `window` s first reaches 90%
    of new_rate; None if never."""
    ok = sorted(t - t0 for t, code in log if code == 200)
    j = 0
    step = 0.05
    t = t_change + window
    end = ok[-1] if ok else t
    while t <= end:
        while j < len(ok) and ok[j] < t - window:
            j += 1
        k = j
        count = 0
        while k < len(ok) and ok[k] < t:
            count += 1
            k += 1
        if count / window >= 0.9 * new_rate:
            return round(t - t_change, 2)
        t += step
    return None


def run(client, procs, calls, rate, burst, latency_s, sigma, shape, change, env_base):
    from openrouter_direct._server import FakeOpenRouter
    srv = FakeOpenRouter(latency_ms=latency_s * 1000, latency_jitter=sigma).start()
    try:
        srv.rate_limit(rate=rate, burst=burst, retry_after=1.0, shape=shape)
        env = dict(env_base, OPENAI_API_BASE=srv.base_url, OPENAI_API_KEY="bench-key",
                   OPENROUTER_MAX_CONCURRENT_CALLS=str(CEILING), LOGLEVEL="CRITICAL",
                   LITELLM_LOCAL_MODEL_COST_MAP="True")
        env.pop("OPENROUTER_ADAPTIVE", None)
        m = calls // procs
        ps = [subprocess.Popen([sys.executable, __file__, "--worker", client, str(m), "c%d" % k],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
              for k in range(procs)]
        for p in ps:
            assert p.stdout.readline().strip() == "ready"
        t_go = time.monotonic()
        srv.rate_log = []
        for p in ps:
            p.stdin.write("go\n")
            p.stdin.flush()
        changes = []
        if change:
            # R halved a third of the way in (at the ideal pace), doubled back at two thirds.
            ideal = calls / rate
            marks = [(ideal / 3, rate / 2), (2 * ideal / 3 + ideal / 6, rate)]
            for at, r in marks:
                while time.monotonic() - t_go < at:
                    if all(p.poll() is not None for p in ps):
                        break
                    time.sleep(0.01)
                srv.rate_limit(rate=r, burst=burst, retry_after=1.0, shape=shape)
                changes.append((round(time.monotonic() - t_go, 3), r))
        results = []
        for p in ps:
            out, _ = p.communicate(timeout=3600)
            results.append(json.loads(out.strip().splitlines()[-1]))
        log = list(srv.rate_log)
    finally:
        srv.stop()
    n = m * procs
    wall = max(r["t1"] for r in results) - t_go
    ideal = n / rate
    if change:
        # the same calls at the rates in force: first third at R, then R/2, then R again
        t1, t2 = changes[0][0], changes[1][0] if len(changes) > 1 else changes[0][0]
        done_by_t2 = rate * t1 + rate / 2 * (t2 - t1)
        ideal = t2 + max(0.0, n - done_by_t2) / rate
    attempts = len(log)
    n429 = sum(1 for _, c in log if c != 200)
    thr = [m / (r["t1"] - t_go) for r in results]
    row = {"client": client, "procs": procs, "calls": n, "lost": sum(r["lost"] for r in results),
           "wall_s": round(wall, 2), "ideal_s": round(ideal, 2), "wall_ratio": round(wall / ideal, 3),
           "attempts_per_call": round(attempts / n, 3), "share_429": round(n429 / max(attempts, 1), 4),
           "jain": round(jain(thr), 4), "change": change,
           "hedges": sum(r.get("hedges", 0) for r in results)}
    series = {"goodput": goodput_series(log, t_go, 0.5),
              "limits": [[(t - t_go, lim) for t, lim, _ in r["limit"]] for r in results],
              "rates": [[(t - t_go, rate) for t, _, rate in r["limit"]] for r in results],
              "changes": changes, "rate": rate,
              "refused": [round(t - t_go, 3) for t, c in log if c != 200]}
    if change and len(changes) == 2:
        row["recover_halved_s"] = recovery_s(log, t_go, changes[0][0], changes[0][1])
        row["recover_doubled_s"] = recovery_s(log, t_go, changes[1][0], changes[1][1])
    return row, series


def repeated(n, *args):
    """run() n times: the run with the median wall time stands for all (its series too), with
    the spread beside it; lost calls are added up over every run, since none may be lost."""
    done = [run(*args) for _ in range(n)]
    if n == 1:
        return done[0]
    done.sort(key=lambda rs: rs[0]["wall_ratio"])
    row, series = dict(done[n // 2][0]), done[n // 2][1]
    rows = [r for r, _ in done]
    row["runs"] = n
    row["lost"] = sum(r["lost"] for r in rows)
    for k in ("wall_ratio", "share_429", "jain", "recover_halved_s", "recover_doubled_s"):
        vals = sorted(r[k] for r in rows if r.get(k) is not None)
        if vals:
            row[k] = vals[len(vals) // 2]
            row[k + "_range"] = [vals[0], vals[-1]]
    return row, series


# ------------------------------------------------------------------ report
def chart(series_by_name, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(series_by_name)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 3.2 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        s = series_by_name[name]
        gx = [t for t, _ in s["goodput"]]
        ax.plot(gx, [g for _, g in s["goodput"]], color="tab:green", label="goodput (calls/s)")
        # the server's rate over time
        rx, ry, r = [0.0], [s["rate"]], s["rate"]
        for t, new in s["changes"]:
            rx += [t, t]
            ry += [r, new]
            r = new
        rx.append(gx[-1] if gx else 1.0)
        ry.append(r)
        ax.plot(rx, ry, color="black", linestyle="--", label="server's limit R (calls/s)")
        for k, rates in enumerate(s.get("rates", [])):
            if rates:
                ax.plot([t for t, _ in rates], [v for _, v in rates], linewidth=0.7, alpha=0.6,
                        linestyle=":", label="paced rate, each process" if k == 0 else None)
        ax.set_ylabel("calls/s")
        ax.set_title(name)
        if any(s["limits"]):
            ax2 = ax.twinx()
            for k, lim in enumerate(s["limits"]):
                if lim:
                    ax2.plot([t for t, _ in lim], [v for _, v in lim], linewidth=0.8, alpha=0.7,
                             label="process %d limit" % k if k < 4 else None)
            ax2.set_ylabel("calls on the wire allowed")
            ax2.legend(loc="lower right", fontsize=7)
        ax.legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


BOUND = """## What bounds the wall time

The ideal N/R counts neither the bucket's burst (25 calls at once: -0.25 s) nor the latency of
the last calls (the slowest of the last ~40 log-normal replies, about 2.7x the median: +1.1 s):
a client that knew R from the start would take about 1.05x. A client that does not know R must
go past it once to learn it, and the answer carries `Retry-After: 1`: for that second no new
attempt starts while the bucket refills only 25 calls, so at least 0.75 s of R is lost, which
already makes 1.10x before anything else. Each later probe that finds the same level costs a
lone process another ~0.75 s; finding a raised limit within 5 s needs a probe every few seconds.
So 1.1x at P = 1 is out of reach of any client that obeys Retry-After and still finds a raised
limit; with more processes a pause costs less (the others go on), and what is left is the
spread of their finishing times."""


def report(rows, args, path):
    lines = ["# Governor benchmark", "",
             "`%s` (%s). Server: FakeOpenRouter, token bucket R = %g calls/s, burst %g, 429 + "
             "`Retry-After: 1` beyond it (shape `%s`), log-normal latency median %g s (sigma %g) "
             "for admitted calls. Each client process gathers its calls at a ceiling of %d."
             % (" ".join(["python bench/ratelimit.py"] + sys.argv[1:]),
                time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), args.rate, args.burst,
                args.shape, args.latency, args.sigma, CEILING), "",
             "| client | P × calls | lost | wall / ideal N/R | attempts per call | 429 share | Jain | "
             "recovery after R/2, after 2R (s) |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    def spread(r, k, fmt):
        lo_hi = r.get(k + "_range")
        return " (%s–%s)" % (fmt % lo_hi[0], fmt % lo_hi[1]) if lo_hi else ""
    for r in rows:
        rec = ("%s, %s" % (r.get("recover_halved_s"), r.get("recover_doubled_s"))
               if r["change"] else "")
        lines.append("| %s%s | %d × %d%s | %d | %.2f× (%.1f s / %.1f s)%s | %.2f | %.1f%%%s | %.3f%s | %s%s |" % (
            r["client"], " (R changes)" if r["change"] else "", r["procs"], r["calls"] // r["procs"],
            ", %d runs" % r["runs"] if r.get("runs") else "",
            r["lost"], r["wall_ratio"], r["wall_s"], r["ideal_s"],
            spread(r, "wall_ratio", "%.2f"), r["attempts_per_call"],
            100 * r["share_429"], spread({k: [100 * v for v in x] for k, x in r.items()
                                          if k == "share_429_range"}, "share_429", "%.1f"),
            r["jain"], spread(r, "jain", "%.3f"), rec, spread(r, "recover_doubled_s", "%s")))
    if any(r.get("runs") for r in rows):
        lines += ["", "Rows of several runs show the run with the median wall time, each figure's "
                  "median and its range over the runs in brackets; `lost` adds up every run."]
    lines += ["", "![limit and goodput over time](governor.png)", "", BOUND, ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=3)
    ap.add_argument("--clients", default="od,od-fixed,litellm,openai,aiohttp")
    ap.add_argument("--procs", default="1,4,8")
    ap.add_argument("--calls", type=int, default=1600)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--burst", type=float, default=25.0)
    ap.add_argument("--latency", type=float, default=0.4)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--shape", default="429")
    ap.add_argument("--change-calls", type=int, default=2400)
    ap.add_argument("--no-change", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each row; the median is reported with the spread (a noisy machine)")
    args = ap.parse_args()
    if args.worker:
        client, m, tag = args.worker
        worker(client, int(m), tag)
        return
    if args.smoke:
        args.clients, args.procs, args.calls, args.rate, args.burst = "od", "2", 120, 60.0, 10.0
        args.change_calls, args.latency = 240, 0.1
    out_dir = args.out or (os.path.join(HERE, "out", "smoke") if args.smoke else os.path.join(ROOT, "docs"))
    os.makedirs(out_dir, exist_ok=True)
    clients = [c for c in args.clients.split(",") if c]
    rows, series = [], {}
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"   # no fetch from the network at import
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for client in clients:
        if client not in CLIENTS:
            sys.exit("unknown client %r" % client)
        if not client.startswith("od"):
            try:
                __import__({"litellm": "litellm", "openai": "openai", "aiohttp": "aiohttp"}[client])
            except ImportError:
                print("[ratelimit] %s not installed: skipped" % client, flush=True)
                continue
        for p in [int(x) for x in args.procs.split(",")]:
            row, s = repeated(args.repeat, client, p, args.calls, args.rate, args.burst,
                              args.latency, args.sigma, args.shape, False, env)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if client == "od" and p == max(int(x) for x in args.procs.split(",")):
                series["%s, %d processes" % (client, p)] = s
        if not args.no_change and client in ("od", "od-fixed"):
            p = max(int(x) for x in args.procs.split(","))
            row, s = repeated(args.repeat, client, p, args.change_calls, args.rate, args.burst,
                              args.latency, args.sigma, args.shape, True, env)
            rows.append(row)
            print(json.dumps(row), flush=True)
            series["%s, %d processes, R halved then doubled" % (client, p)] = s
    raw_dir = os.path.join(HERE, "out")   # the raw series stay out of docs/
    os.makedirs(raw_dir, exist_ok=True)
    with open(os.path.join(raw_dir, "governor.json"), "w") as f:
        json.dump({"rows": rows, "series": series}, f)
    report(rows, args, os.path.join(out_dir, "GOVERNOR.md"))
    if series:
        chart(series, os.path.join(out_dir, "governor.png"))
    if args.smoke and any(r["lost"] for r in rows):
        sys.exit("[ratelimit] calls were lost in the smoke run")


if __name__ == "__main__":
    main()
