"""Instructions per call, per thread, counted by valgrind's callgrind: a figure that the shared,
noisy bench machine cannot move, for A/B comparisons of small changes.

    bench/.venv/bin/python bench/instructions.py [CLIENT] [--tls] [--small N] [--large N] [--pkg DIR]

Runs one throughput test of `--small` calls and one of `--large` calls under callgrind (user-space
instructions only; the kernel's share is not counted) and reports (large - small) / (difference in
calls) for the whole process and for each thread, so interpreter start-up and imports cancel out.
`--pkg DIR` puts DIR first on PYTHONPATH (a copy of the package built from another commit).
The callgrind files stay in bench/out/instructions/ for callgrind_annotate. Under valgrind the
threads run one at a time and far slower, so the engine wakes more often per call than at full
speed: compare builds with each other, not with the wall-clock profile.
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import suite  # noqa: E402


def totals(prefix):
    """{thread number: instructions} from callgrind's per-thread files (prefix-01, -02, ...)."""
    out = {}
    for path in sorted(glob.glob(prefix + "-*")):
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    out[int(path.rsplit("-", 1)[1])] = int(line.split()[1])
                    break
    return out


def run(a, env, base, n, out):
    prefix = os.path.join(out, f"{a.client}-{'tls' if a.tls else 'plain'}-{n}.callgrind")
    for old in glob.glob(prefix + "*"):
        os.remove(old)
    cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={prefix}",
           suite.PY, os.path.join(HERE, "client.py"), a.client, "throughput", base, "--n", str(n),
           "--rounds", "1", "--warmup-secs", "0", "--warmup-n", "64"]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return totals(prefix)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("client", nargs="?", default="openrouter_direct")
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=8000)
    p.add_argument("--pkg", help="directory to put first on PYTHONPATH")
    p.add_argument("--tls", action="store_true", help="TLS + HTTP/2 instead of plain HTTP/1.1")
    a = p.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install -y valgrind)")
    out = os.path.join(suite.OUT, "instructions")
    os.makedirs(out, exist_ok=True)
    with suite.one_client_nginx("od-instr-") as (env, ng):
        if a.pkg:
            env["PYTHONPATH"] = os.path.abspath(a.pkg) + os.pathsep + env.get("PYTHONPATH", "")
        base = ng.tls if a.tls else ng.plain
        small = run(a, env, base, a.small, out)
        large = run(a, env, base, a.large, out)
    calls = a.large - a.small
    proto = "TLS + HTTP/2" if a.tls else "plain HTTP/1.1"
    print(f"{a.client}: instructions per call over {calls} calls ({proto}, user space)")
    print(f"  {'whole process':<16}{(sum(large.values()) - sum(small.values())) / calls:>12,.0f}")
    for t in sorted(large):
        per = (large[t] - small.get(t, 0)) / calls
        if per >= 1:
            name = "main thread" if t == 1 else f"thread {t}"
            print(f"  {name:<16}{per:>12,.0f}")


if __name__ == "__main__":
    main()
