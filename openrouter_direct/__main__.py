"""Command line: ``python -m openrouter_direct demo`` (also the ``openrouter-direct`` script)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"demo": "run one simulated DR-Tulu training step against a local server"}
    if not argv or argv[0] not in commands:
        print("usage: python -m openrouter_direct COMMAND [options]\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:<8} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    if argv[0] == "demo":
        from . import _demo
        return _demo.main(argv[1:])
    return 2


if __name__ == "__main__":
    sys.exit(main())
