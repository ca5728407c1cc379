"""From the suite's results to docs/BENCHMARKS.md, docs/bench.png and the README's section.

write(results, out_dir, update_readme) is called by suite.py; `python report.py RESULTS.json
OUT_DIR [--readme]` redraws a report from saved results.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(HERE), "README.md")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

LABELS = {
    "wrk": "wrk (C, no Python; HTTP/1.1)",
    "no-client": "baseline: no HTTP client (the offering loop alone)",
    "openrouter_direct": "**openrouter_direct**",
    "od-gather": "openrouter_direct, gather all (≤ 20,000 per round, native cap)",
    "od-raw": "openrouter_direct, raw call (`run_openrouter_async_raw`, reads `.choices[0].message.content`)",
    "pycurl": "pycurl multi from Python, no asyncio",
    "pycurl-h1": "pycurl multi, HTTP/1.1 over TLS",
    "aiohttp": "aiohttp, one session",
    "httpx": "httpx, one client",
    "httpx-per-call": "httpx, a new client per call",
    "openai": "openai `AsyncOpenAI`",
    "curl_cffi": "curl_cffi `AsyncSession`",
    "litellm": "LiteLLM `acompletion`",
}
SHORT = {"no-client": "baseline: no client", "openrouter_direct": "openrouter_direct",
         "od-gather": "od, gather all", "od-raw": "od, raw call",
         "pycurl": "pycurl multi", "pycurl-h1": "pycurl multi h1.1", "aiohttp": "aiohttp",
         "httpx": "httpx", "httpx-per-call": "httpx per call", "openai": "openai",
         "curl_cffi": "curl_cffi", "litellm": "LiteLLM", "wrk": "wrk"}
LIB = {"openrouter_direct": "openrouter_direct", "od-gather": "openrouter_direct",
       "od-raw": "openrouter_direct",
       "pycurl": "pycurl", "pycurl-h1": "pycurl", "aiohttp": "aiohttp", "httpx": "httpx",
       "httpx-per-call": "httpx", "openai": "openai", "curl_cffi": "curl_cffi",
       "litellm": "litellm"}
OD = "openrouter_direct"


def ok(r):
    return r is not None and "crashed" not in r


def fmt_int(x):
    return "—" if x is None else f"{x:,.0f}"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def _get(results, name, proto, key):
    r = results["throughput"].get(name, {}).get(proto)
    return r.get(key) if ok(r) else None


def _div(a, b):
    return a / b if a is not None and b else None


def targets(results):
    """(target, measured, met) rows; met is None when not measured."""
    g = lambda n, p, k: _get(results, n, p, k)  # noqa: E731
    rows = []

    def add(text, value, shown, cond):
        rows.append((text, shown if value is not None else "not measured",
                     None if value is None else cond(value)))

    for proto, want in (("plain", 6.0), ("tls", 2.5)):
        v = _div(g(OD, proto, "calls_per_s"), g("aiohttp", proto, "calls_per_s"))
        add(f"calls/s ≥ {want}× aiohttp ({'plain' if proto == 'plain' else 'TLS'})", v,
            fmt_ratio(v), lambda x, w=want: x >= w)
    for proto, want in (("plain", 0.2), ("tls", 0.4)):
        v = _div(g(OD, proto, "cpu_us_per_call"), g("aiohttp", proto, "cpu_us_per_call"))
        add(f"CPU per call ≤ {want}× aiohttp's ({'plain' if proto == 'plain' else 'TLS'})", v,
            fmt_ratio(v), lambda x, w=want: x <= w)
    for proto, want in (("plain", 0.5), ("tls", 0.8)):
        v = _div(g(OD, proto, "calls_per_s"), g("pycurl", proto, "calls_per_s"))
        add(f"calls/s ≥ {want:.0%} of pycurl multi's ({'plain' if proto == 'plain' else 'TLS, same h2 settings'})",
            v, "—" if v is None else f"{v:.0%}", lambda x, w=want: x >= w)
    v = _div(g("od-raw", "plain", "cpu_us_per_call"), g(OD, "plain", "cpu_us_per_call"))
    add("raw call: CPU per call ≤ 1.5× the text call's (plain)", v, fmt_ratio(v),
        lambda x: x <= 1.5)
    t = results["trainer"].get(OD)
    v = t["completed_per_s"] if ok(t) else None
    add("busy trainer: ≥ 950 calls/s completed of 1,000 offered", v,
        "—" if v is None else f"{v:,.0f}/s", lambda x: x >= 950)
    v = t["trainer_ratio"] if ok(t) else None
    base = results["trainer"].get("no-client")
    floor = f" (baseline with no client: {base['trainer_ratio']:.1%})" if ok(base) else ""
    add("busy trainer: trainer thread keeps ≥ 95% of its speed", v,
        "—" if v is None else f"{v:.1%}{floor}", lambda x: x >= 0.95)
    imp = results["imports"].get(OD)
    v = imp["fresh_ms"] if imp else None
    first = (f" (then {imp['with_first_use_ms'] - v:.1f} ms once, at the first call)"
             if imp and "with_first_use_ms" in imp else "")
    add("import ≤ 5 ms (fresh interpreter)", v, "—" if v is None else f"{v:.1f} ms{first}",
        lambda x: x <= 5)
    s = results["scale"].get(OD)
    sc = results["scale_params"]
    full = sc["n"] == 10_000 and sc["delay"] == 1.0
    v = s["wall_s"] if ok(s) else None
    add("scale: wall ≤ 5.5 s" + ("" if full else " (smoke counts: not comparable)"), v,
        "—" if v is None else f"{v:.2f} s", lambda x: x <= 5.5 or not full)
    v = max(s["max_threads"], s.get("threads_at_end") or 0) if ok(s) else None
    add("scale: ≤ 16 native threads", v, "—" if v is None else str(v), lambda x: x <= 16)
    v = s["maxrss_kb"] / 1024 if ok(s) else None
    add("scale: ≤ 200 MB RSS", v, "—" if v is None else f"{v:.0f} MB", lambda x: x <= 200)
    return rows


def _rss_mb(results, name):
    vals = [r["maxrss_kb"] for r in results["throughput"].get(name, {}).values() if ok(r)]
    return max(vals) / 1024 if vals else None


def _bad(r):
    if r is None:
        return ""
    if "crashed" in r:
        return "**crashed**"
    if r.get("errors") or r.get("wrong"):
        return f"**{r.get('wrong', 0)} wrong / {r.get('errors', 0)} errors**"
    return "0"


PROTO = {"HTTP/1.1": "h1.1", "HTTP/2.0": "h2", "HTTP/1.0": "h1.0"}


def _conns(r):
    """Connections nginx saw opened during the run (warm-up included), with their protocol."""
    if not ok(r) or "connections" not in r:
        return "—"
    protos = ",".join(PROTO.get(p, p) for p in sorted(r.get("protocols") or {}))
    return f"{r['connections']:,} {protos}".strip()


def throughput_table(results):
    tp, imports, wrk = results["throughput"], results["imports"], results["wrk"]
    a_plain = _get(results, "aiohttp", "plain", "calls_per_s")
    a_tls = _get(results, "aiohttp", "tls", "calls_per_s")
    p_plain = _get(results, "pycurl", "plain", "calls_per_s")
    p_tls = _get(results, "pycurl", "tls", "calls_per_s")
    head = ("| client | plain calls/s | CPU µs/call | TLS calls/s | CPU µs/call (TLS) "
            "| connections plain / TLS | peak RSS MB | import ms | × aiohttp plain / TLS | × pycurl plain / TLS "
            "| wrong / errors |\n|---|--:|--:|--:|--:|---|--:|--:|--:|--:|---|\n")
    rows = []
    if wrk:
        rows.append(f"| {LABELS['wrk']} | {fmt_int(wrk.get('plain', {}).get('calls_per_s'))} | — "
                    f"| {fmt_int(wrk.get('tls', {}).get('calls_per_s'))} | — | 64 / 64 h1.1 | — | — "
                    f"| — | — | — |")
    lc = results.get("libcurl_c") or {}
    if lc:
        pl, tl = lc.get("plain") or {}, lc.get("tls") or {}
        cp, ct = pl.get("calls_per_s"), tl.get("calls_per_s")
        errs = sum(r.get("errors", 0) or 0 for r in (pl, tl))
        bad = "crashed" if "crashed" in pl or "crashed" in tl else str(errs)
        rows.append(f"| libcurl from C, one thread, no Python (`bench/libcurl_floor.c`) "
                    f"| {fmt_int(cp)} | {fmt_int(pl.get('cpu_us_per_call'))} | {fmt_int(ct)} "
                    f"| {fmt_int(tl.get('cpu_us_per_call'))} | — | — | — "
                    f"| {fmt_ratio(_div(cp, a_plain))} / {fmt_ratio(_div(ct, a_tls))} "
                    f"| {fmt_ratio(_div(cp, p_plain))} / {fmt_ratio(_div(ct, p_tls))} | {bad} |")
    for name in LABELS:
        if name == "wrk" or name not in tp:
            continue
        d = tp[name]
        pl, tl = d.get("plain"), d.get("tls")
        cp = pl["calls_per_s"] if ok(pl) else None
        ct = tl["calls_per_s"] if ok(tl) else None
        up = pl["cpu_us_per_call"] if ok(pl) else None
        ut = tl["cpu_us_per_call"] if ok(tl) else None
        conns = f"{_conns(pl)} / {_conns(tl)}"
        imp = imports.get(LIB[name])
        imp_s = f"{imp['fresh_ms']:.0f}" if imp and name not in ("od-gather", "od-raw") else "—"
        if imp and name == OD:
            imp_s = f"{imp['fresh_ms']:.1f}"
        rss = _rss_mb(results, name)
        xa = f"{fmt_ratio(_div(cp, a_plain))} / {fmt_ratio(_div(ct, a_tls))}"
        xp = f"{fmt_ratio(_div(cp, p_plain))} / {fmt_ratio(_div(ct, p_tls))}"
        bad = " ".join(filter(None, {_bad(pl), _bad(tl)} - {"0"})) or "0"
        if pl is None and tl is None:
            bad = ""
        rows.append(f"| {LABELS[name]} | {fmt_int(cp)} | {fmt_int(up)} | {fmt_int(ct)} "
                    f"| {fmt_int(ut)} | {conns} | {fmt_int(rss)} | {imp_s} | {xa} | {xp} "
                    f"| {bad} |")
    return head + "\n".join(rows) + "\n"


def _trainer_passes(results):
    counts = [len(r.get("passes", [])) for r in results["trainer"].values()]
    n = max(counts, default=0)
    return {0: "once", 1: "once", 2: "twice"}.get(n, f"{n} times")


def trainer_table(results):
    head = ("| client | calls/s completed in the window (1,000 offered) | offered/s the loop "
            "managed | trainer thread speed vs alone | vs the baseline's | wrong / errors |\n"
            "|---|--:|--:|--:|--:|---|\n")
    rows = []
    base = results["trainer"].get("no-client")
    floor = base["trainer_ratio"] if ok(base) else None
    for name in LABELS:
        r = results["trainer"].get(name)
        if r is None:
            continue
        if not ok(r):
            rows.append(f"| {LABELS[name]} | — | — | — | — | **crashed** |")
            continue
        rel = f"{r['trainer_ratio'] / floor:.1%}" if floor else "—"
        rows.append(f"| {LABELS[name]} | {r['completed_per_s']:,.0f} | {r['offered_per_s']:,.0f} "
                    f"| {r['trainer_ratio']:.1%} | {rel} | {_bad(r)} |")
    return head + "\n".join(rows) + "\n"


def scale_table(results):
    sc = results["scale_params"]
    head = (f"| client | wall s ({sc['n']:,} calls × {sc['delay']:g} s, {sc['concurrency']:,} in "
            "flight) | CPU s | max native threads | peak RSS MB | connections | wrong / errors |\n"
            "|---|--:|--:|--:|--:|--:|---|\n")
    rows = []
    for name in LABELS:
        r = results["scale"].get(name)
        if r is None:
            continue
        if not ok(r):
            rows.append(f"| {LABELS[name]} | — | — | — | — | — | **crashed** |")
            continue
        threads = max(r["max_threads"], r.get("threads_at_end") or 0)
        label = ("openrouter_direct, gather all (native cap at the in-flight count)"
                 if name == "od-gather" else LABELS[name])
        rows.append(f"| {label} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {threads} "
                    f"| {r['maxrss_kb'] / 1024:.0f} | {fmt_int(r.get('connections'))} "
                    f"| {_bad(r)} |")
    return head + "\n".join(rows) + "\n"


def targets_table(results):
    rows = ["| target (openrouter_direct, same run) | measured | met |", "|---|--:|---|"]
    for text, shown, met in targets(results):
        mark = "not measured" if met is None else ("met" if met else "**not met**")
        rows.append(f"| {text} | {shown} | {mark} |")
    return "\n".join(rows) + "\n"


def machine_line(results):
    m = results["machine"]
    builds = m.get("extension_builds")
    built = f" (extension built {', '.join(builds)} local time)" if builds else ""
    return (f"{m['date']}, openrouter_direct at {m.get('commit', '?')}{built}; {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux "
            f"{m['kernel']}, Python {m['python']}, libcurl {m['libcurl']}, nginx {m['nginx']}, "
            f"{m['openssl']}; load average before {m['load_before'][0]:.2f}, after "
            f"{m['load_after'][0]:.2f}")


def versions_line(results):
    v = results["versions"]
    parts = [f"{k} {v[k]}" for k in sorted(v) if v[k]]
    missing = [k for k in sorted(v) if not v[k]]
    s = ", ".join(parts)
    if missing:
        s += "; not installed (skipped): " + ", ".join(missing)
    return s


def markdown(results, png_name="bench.png"):
    smoke = " (SMOKE RUN: tiny counts, the figures mean nothing)" if results["smoke"] else ""
    if results["machine"].get("rebuilt_during_run"):
        smoke += " (WARNING: the extension was rebuilt during this run)"
    return f"""# Benchmarks{smoke}

Written by `bash bench/run` — {machine_line(results)}.

Workload: nginx on 127.0.0.1 (one worker) answering a canned chat completion; a {results['body_bytes']:,} B
request body (a judge prompt: system + user message); {results['concurrency']} calls in flight; every
client in its own process (CPU is `time.process_time()` of that process, all its threads; RSS is
its peak); every reply's content checked. Plain is HTTP/1.1; TLS is TLS 1.3 with HTTP/2 offered by
ALPN (a throw-away CA trusted through `SSL_CERT_FILE`). Each client runs {_passes(results)} time(s) (all
clients one after the other, then again); each run makes {_rounds(results)} timed rounds of about 3 s after a
warm-up; the table shows the most calls/s and the least CPU per call of any round (other work on a
shared machine only ever slows a round down and adds to its CPU time). Versions: {versions_line(results)}.

## Targets

{targets_table(results)}
## Throughput

{throughput_table(results)}
libcurl from C is `bench/libcurl_floor.c`: the same body, headers and transfer settings through
one multi handle in one thread with no Python, 64 in flight, three runs kept as for the clients
(most calls/s, least CPU per call): what libcurl itself costs per call here. × pycurl TLS compares with pycurl multi using openrouter_direct's own settings (HTTP/2 over TLS,
`PIPEWAIT`: one multiplexed connection). Connections: as counted by nginx during the client's
whole run (warm-up included), with the protocol spoken. Import: median over fresh interpreters of
`perf_counter()` around the import statement.

## Busy trainer

The main thread runs a pure-Python loop; a second thread runs `asyncio.run()` offering one call
every 1 ms (each its own task; the schedule catches up when the loop wakes late) for
{_window(results)} s. Peers cap calls in flight with an `asyncio.Semaphore(64)`, openrouter_direct with
its native cap. The trainer's speed alone is the mean of a run before and one after the window.
Each client runs {_trainer_passes(results)}, the runs interleaved across clients, and the
table shows its run with the median trainer speed (every run's figures are in the raw results).
The baseline row offers the same tasks with no HTTP behind them: what the offering loop itself
costs the trainer (the floor for every client). On this machine a busy process on the other
core alone leaves the trainer loop {_interference(results)} of its speed: whatever runs beside the
trainer (the loop thread, an engine thread, nginx) costs it more than its share of the GIL.

{trainer_table(results)}
## Scale

{scale_params_line(results)}

{scale_table(results)}
![benchmark chart]({png_name})

## Imports

{imports_table(results)}"""


def scale_params_line(results):
    sc = results["scale_params"]
    return (f"A Python asyncio server of our own (`bench/slow_server.py`, HTTP/1.1 keep-alive, "
            f"event loop: {results.get('scale_server_loop', '?')}) holds "
            f"each request {sc['delay']:g} s. {sc['n']:,} calls, {sc['concurrency']:,} in flight "
            f"(worker tasks; \"gather all\" submits all calls at once with the native cap at "
            f"{sc['concurrency']:,}). Threads: the most seen in `/proc/PID/status`, sampled "
            f"every 5 ms.")


def imports_table(results):
    rows = ["| library | import ms, fresh interpreter | import ms with asyncio, logging, ssl, "
            "json already imported | import + work deferred to the first use, ms |",
            "|---|--:|--:|--:|"]
    for lib, r in results["imports"].items():
        first = (f"{r['with_first_use_ms']:.1f} (`{r['first_use']}`)" if "first_use" in r
                 else "—")
        rows.append(f"| {lib} | {r['fresh_ms']:.1f} | {r['preloaded_ms']:.1f} | {first} |")
    return "\n".join(rows) + "\n"


def _interference(results):
    v = results["machine"].get("interference")
    return "?" if v is None else f"{v:.0%}"


def _passes(results):
    for d in results["throughput"].values():
        for r in d.values():
            if ok(r):
                return len(r.get("passes", [1]))
    return 0


def _rounds(results):
    for d in results["throughput"].values():
        for r in d.values():
            if ok(r):
                return len(r["rounds"])
    return 0


def _window(results):
    for r in results["trainer"].values():
        if ok(r):
            return f"{r['window_s']:g}"
    return "?"


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tp = results["throughput"]
    names = [n for n in LABELS if n in tp]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    colors = {"plain": "#4C72B0", "tls": "#DD8452"}

    def hbars(ax, key, title, xlabel, extra=None, legend="lower right"):
        rows = list(names)
        if extra:
            rows = ["wrk"] + rows
        ys = range(len(rows))
        seen = 0
        for i, proto in enumerate(("plain", "tls")):
            vals = []
            for n in rows:
                if n == "wrk":
                    vals.append((extra.get(proto) or {}).get("calls_per_s") or 0)
                else:
                    vals.append(_get(results, n, proto, key) or 0)
            seen = max([seen] + vals)
            ax.barh([y + (i - 0.5) * 0.4 for y in ys], vals, height=0.4, color=colors[proto],
                    label="plain HTTP/1.1" if proto == "plain" else "TLS (h2 where offered)")
            for y, v in zip(ys, vals):
                if v:
                    ax.text(v * 1.05, y + (i - 0.5) * 0.4, f"{v:,.0f}", va="center", fontsize=7)
        ax.set_yticks(list(ys))
        ax.set_yticklabels([SHORT[n] for n in rows], fontsize=8)
        ax.invert_yaxis()
        if seen > 0:
            ax.set_xscale("log")
            ax.legend(fontsize=7, loc=legend)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.margins(x=0.25)

    hbars(axes[0][0], "calls_per_s", "Throughput, 64 in flight (higher is better)",
          "calls/s (log)", extra=results["wrk"] or None)
    hbars(axes[0][1], "cpu_us_per_call", "CPU per call, all threads (lower is better)",
          "µs of process time per call (log)", legend="upper right")

    ax = axes[1][0]
    tr = [(n, results["trainer"][n]) for n in LABELS if ok(results["trainer"].get(n))]
    if tr:
        ys = range(len(tr))
        vals = [r["completed_per_s"] for _, r in tr]
        ax.barh(list(ys), vals, color="#55A868")
        ax.axvline(1000, color="grey", ls="--", lw=1)
        for y, (n, r) in zip(ys, tr):
            ax.text(max(r["completed_per_s"], 1) * 1.05, y,
                    f"{r['completed_per_s']:,.0f}/s, trainer {r['trainer_ratio']:.0%}",
                    va="center", fontsize=7)
        ax.set_yticks(list(ys))
        ax.set_yticklabels([SHORT[n] for n, _ in tr], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(0.5, 20000)
    ax.set_title("Busy trainer: calls/s completed of 1,000 offered", fontsize=10)
    ax.set_xlabel("calls/s (log); label: trainer thread speed vs alone", fontsize=8)

    ax = axes[1][1]
    sc = [(n, results["scale"][n]) for n in LABELS if ok(results["scale"].get(n))]
    p = results["scale_params"]
    if sc:
        ys = range(len(sc))
        ax.barh(list(ys), [r["wall_s"] for _, r in sc], color="#8172B3")
        ideal = max(1.0, p["n"] / p["concurrency"]) * p["delay"]
        ax.axvline(ideal, color="grey", ls="--", lw=1)
        for y, (n, r) in zip(ys, sc):
            threads = max(r["max_threads"], r.get("threads_at_end") or 0)
            ax.text(r["wall_s"] * 1.02, y, f"{r['wall_s']:.2f} s, {threads} threads, "
                    f"{r['maxrss_kb'] / 1024:.0f} MB", va="center", fontsize=7)
        ax.set_yticks(list(ys))
        ax.set_yticklabels([SHORT[n] for n, _ in sc], fontsize=8)
        ax.invert_yaxis()
        ax.margins(x=0.6)
    ax.set_title(f"Scale: {p['n']:,} calls × {p['delay']:g} s, {p['concurrency']:,} in flight "
                 f"(dashed: ideal)", fontsize=10)
    ax.set_xlabel("wall seconds (lower is better)", fontsize=8)

    m = results["machine"]
    smoke = "SMOKE RUN — " if results["smoke"] else ""
    fig.suptitle(f"{smoke}openrouter_direct and peers — loopback nginx, canned completion, "
                 f"{results['body_bytes']:,} B body\n{m['nproc']} cores {m['cpu']}, Linux "
                 f"{m['kernel']}, Python {m['python']}, libcurl {m['libcurl']} — {m['date']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_section(results):
    return f"""{START}
## Benchmarks

`bash bench/run` installs what it needs (nginx-light and wrk with apt, the peers into
`bench/.venv`), starts its own nginx on 127.0.0.1 and measures every client in its own process;
`bash bench/run --smoke` runs it all with tiny counts in about a minute and fails when any client
errs or answers wrongly (for CI, to keep the suite working). Full report: [docs/BENCHMARKS.md](docs/BENCHMARKS.md). Latest run: {machine_line(results)}.

{targets_table(results)}
{throughput_table(results)}
![benchmark chart](docs/bench.png)
{END}"""


def update_readme(results):
    with open(README) as f:
        text = f.read()
    section = readme_section(results)
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: section, text,
                      flags=re.S)
    else:
        marker = "\n## Layout"
        i = text.find(marker)
        text = (text.rstrip("\n") + "\n\n" + section + "\n") if i < 0 else \
            text[:i] + "\n" + section + "\n" + text[i:]
    with open(README, "w") as f:
        f.write(text)


def write(results, out_dir, update_readme_too):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "BENCHMARKS.md"), "w") as f:
        f.write(markdown(results))
    chart(results, os.path.join(out_dir, "bench.png"))
    if update_readme_too:
        update_readme(results)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        res = json.load(f)
    write(res, sys.argv[2], "--readme" in sys.argv[3:])
