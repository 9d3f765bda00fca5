"""`python -m src.bisect ...` (and `dropsweep bisect ...`): see src/bisect/command.py."""
import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
