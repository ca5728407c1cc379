"""Command line: ``python -m openrouter_direct COMMAND`` (also the ``openrouter-direct`` script).

Each command lives in its own module, imported only when it runs.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": "run one simulated DR-Tulu training step against a local server",
    "check": "check the configured endpoint, key and model (exit 0 when all pass)",
    "patch-run-utils": "make DR-Tulu's run_utils.py use openrouter_direct when "
                       "USE_OPENROUTER_DIRECT=true",
}


def _usage() -> str:
    lines = ["usage: python -m openrouter_direct COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, text in COMMANDS.items()]
    lines += ["", "python -m openrouter_direct COMMAND --help describes a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from . import _demo
        return _demo.main(rest)
    if command == "check":
        from . import _check
        return _check.main(rest)
    if command == "patch-run-utils":
        from . import patch_run_utils
        return patch_run_utils.main(rest)
    print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
