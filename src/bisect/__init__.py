"""Version bisection of a training anomaly: which release of bitsandbytes, peft, transformers or
accelerate first makes a run stall, drop, fail or move its loss.

    python -m src.bisect bitsandbytes --good 0.48.2 --bad 0.50.2 --verdict stall model=smollm2_135m ...

    releases.py  the package index: releases in range, what cannot run here
    verdicts.py  what makes a probe bad, judged from its run dir
    search.py    the state on disk, the next probe, the probes as jobs of one sweep dir, the answer
    command.py   the command line and its one-sentence refusals (`python -m src.bisect`, `dropsweep bisect`)
"""


def main(argv=None) -> int:
    from .command import main as command

    return command(argv)
