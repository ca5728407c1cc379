"""The governor costs nothing where there is no limit: openrouter_direct's plain-HTTP throughput
against the bench nginx with adaptation on (the default) and off (OPENROUTER_ADAPTIVE=0), runs
alternating in the same session, medians and their ratio.

    python bench/adaptive_ab.py [--runs 6] [--secs 2] [--tls]
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
    p.add_argument("--runs", type=int, default=6)
    p.add_argument("--secs", type=float, default=2.0)
    p.add_argument("--tls", action="store_true")
    a = p.parse_args()
    rates = {"on": [], "off": []}
    with suite.one_client_nginx("od-ab-") as (env, ng):
        base = ng.tls if a.tls else ng.plain
        for k in range(a.runs):
            for mode in (("on", "off") if k % 2 == 0 else ("off", "on")):
                e = dict(env, OPENROUTER_ADAPTIVE="1" if mode == "on" else "0")
                out = subprocess.run([suite.PY, os.path.join(HERE, "client.py"), "openrouter_direct",
                                      "throughput", base, "--secs", str(a.secs)],
                                     env=e, check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                if row.get("wrong") or row.get("errors"):
                    sys.exit("wrong answers or errors: %s" % row)
                rates[mode].append(row["calls_per_s"])
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(json.dumps({"proto": "tls" if a.tls else "plain", "runs": a.runs,
                      "adaptive_on_calls_per_s": round(on), "adaptive_off_calls_per_s": round(off),
                      "ratio_on_off": round(on / off, 4), "on": rates["on"], "off": rates["off"]}))


if __name__ == "__main__":
    main()
