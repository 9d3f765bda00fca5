"""The `dropsweep` console script: one command, the same verbs as the `python -m src.<verb>` entry points.

    dropsweep run [-m] [overrides]     # python -m src.run
    dropsweep report [SWEEP_DIR ...]   # python -m src.report
    dropsweep detect FILE [--json]     # python -m src.detect
    dropsweep sweep status|resume DIR  # python -m src.sweep
    dropsweep generate RUN_DIR PROMPT  # python -m src.generate
    dropsweep bisect ...               # python -m src.bisect
    dropsweep envs list|clean          # python -m src.envs
"""
from __future__ import annotations

import importlib
import sys

VERBS = {"run": "run", "report": "report.__main__", "detect": "detect.__main__", "sweep": "sweep",
         "generate": "generate", "bisect": "bisect", "envs": "envs"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in VERBS:
        known = ", ".join(VERBS)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"dropsweep: '{argv[0]}' is not a command; use one of: {known}", file=sys.stderr)
            return 2
        print(__doc__.strip())
        return 0
    verb, rest = argv[0], argv[1:]
    module = importlib.import_module(f"{__package__}.{VERBS[verb]}")
    if verb == "run":  # Hydra reads sys.argv itself
        sys.argv = ["dropsweep run", *rest]
        module.cli()
        return 0
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
