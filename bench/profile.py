"""Where a client spends its time: one throughput run under `perf record` (native, all threads)
and, when py-spy is installed in bench/.venv, one under `py-spy record` (Python frames).

    bench/.venv/bin/python bench/profile.py [CLIENT] [plain|tls] [--n N] [--top K]

CLIENT defaults to openrouter_direct. Starts the bench nginx like suite.py does, prints perf's
top symbols per thread (self time) and per shared object, and writes the raw files to
bench/out/profile/. Needs `perf` (apt: linux-perf) and root or perf_event_paranoid <= 1.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import suite  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("client", nargs="?", default="openrouter_direct")
    p.add_argument("proto", nargs="?", default="plain", choices=("plain", "tls"))
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    out = os.path.join(suite.OUT, "profile")
    os.makedirs(out, exist_ok=True)
    with suite.one_client_nginx("od-profile-") as (env, ng):
        base = ng.plain if a.proto == "plain" else ng.tls
        cmd = [suite.PY, os.path.join(HERE, "client.py"), a.client, "throughput", base,
               "--n", str(a.n), "--rounds", "1", "--warmup-secs", "0"]
        data = os.path.join(out, f"{a.client}-{a.proto}.perf.data")
        subprocess.run(["perf", "record", "-F", "2000", "-g", "-o", data, "--", *cmd], env=env,
                       check=True, stderr=subprocess.DEVNULL)
        for sort in ("comm,dso", "comm,dso,symbol"):
            rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio",
                                  "--sort", sort, "-g", "none", "--percent-limit", "0.7"],
                                 capture_output=True, text=True).stdout
            lines = [ln for ln in rep.splitlines() if ln.strip() and not ln.startswith("#")]
            print(f"== perf, self time by {sort}")
            print("\n".join(lines[:a.top]))
        spy = os.path.join(os.path.dirname(suite.PY), "py-spy")
        if os.path.exists(spy):
            svg = os.path.join(out, f"{a.client}-{a.proto}.pyspy.txt")
            subprocess.run([spy, "record", "--native", "-r", "500", "-f", "raw", "-o", svg, "--",
                            *cmd], env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            print(f"== py-spy raw stacks: {svg}")
            summarize_pyspy(svg, a.top)


def summarize_pyspy(path, top):
    """Self and inclusive sample counts per Python function from py-spy's collapsed stacks."""
    incl, selfc, total = {}, {}, 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            total += n
            frames = stack.split(";")
            for fr in set(frames):
                incl[fr] = incl.get(fr, 0) + n
            selfc[frames[-1]] = selfc.get(frames[-1], 0) + n
    print(f"-- self ({total} samples)")
    for fr, n in sorted(selfc.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{n / total:6.1%}  {fr}")
    print("-- inclusive")
    for fr, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{n / total:6.1%}  {fr}")


if __name__ == "__main__":
    main()
