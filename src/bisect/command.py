"""`python -m src.bisect PACKAGE [OVERRIDES ...] --good V --bad V [--verdict V]` (or `dropsweep bisect`):
the first release of PACKAGE whose run behaves like the bad one, in as few runs as binary search allows.

Each probe is a job of one sweep dir (default experiments/sweeps/<date_time>_bisect_<package>);
`python -m src.bisect --resume DIR` goes on after an interruption, and `python -m src.report DIR`
shows the versions tried, each verdict with its evidence, and the answer.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
from datetime import datetime
from pathlib import Path

from packaging.version import Version

from .releases import PACKAGES, BisectError, between, cannot_run_here, fetch, find
from .search import STATE, overlay_refusal, read_state, run, save
from .verdicts import HELP, parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m src.bisect", description=__doc__.split("\n\n")[0])
    parser.add_argument("package", nargs="?", help=f"one of {', '.join(PACKAGES)}")
    parser.add_argument("overrides", nargs="*", help="the run's Hydra overrides, as for python -m src.run")
    parser.add_argument("--good", help="a release that behaves (default: the oldest that can run here)")
    parser.add_argument("--bad", help="a release that shows the anomaly (default: the newest release)")
    parser.add_argument("--verdict", default="findings", help=f"what makes a run bad: {HELP}".replace("%", "%%"))
    parser.add_argument("--dir", type=Path, help="the sweep dir (default: experiments/sweeps/<date_time>_bisect_<package>)")
    parser.add_argument("--resume", type=Path, metavar="DIR", help="go on with the bisection in DIR")
    parser.add_argument("--pre", action="store_true", help="also try pre-releases")
    parser.add_argument("--yanked", action="store_true", help="also try yanked releases")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    return parser.parse_intermixed_args(argv)


def compose(overrides: list[str]):
    """The run's config as the probes will see it; one sentence when the overrides do not compose."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    conf = Path(__file__).resolve().parents[2] / "conf"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as error:  # Hydra's own message names the override
        raise BisectError(f"the overrides do not compose ({str(error).strip().splitlines()[0].rstrip('.')}); "
                          f"fix them as for python -m src.run.") from None


def check_overrides(package: str, overrides: list[str]):
    key = PACKAGES[package].lstrip("+")
    for item in overrides:
        name, _, value = item.partition("=")
        if "," in value and not value.strip().startswith(("[", "{", "'", '"')):
            raise BisectError(f"{item} is a sweep; a bisection runs one configuration, so give one value.")
        if name.lstrip("+~") == key or (package == "bitsandbytes" and name == "bnb"):
            raise BisectError(f"drop {item} from the overrides: the bisection sets the {package} version itself.")
    cfg = compose(overrides)
    swept = dict(cfg.hydra.sweeper.get("params") or {})
    if package == "bitsandbytes" and list(swept) == ["bnb"]:  # a preset comparing versions: the bisection picks them
        overrides = [*overrides, "~hydra.sweeper.params.bnb"]
        cfg, swept = compose(overrides), {}
    if swept:
        raise BisectError(f"the overrides sweep {', '.join(swept)} (hydra.sweeper.params, e.g. from an experiment "
                          f"preset); give the preset's settings as plain overrides instead.")
    return cfg, overrides


def plan(args) -> dict:
    """The bisection's starting state; every bad input is refused here, before anything is written."""
    if not args.package:
        raise BisectError(f"name the package to bisect ({', '.join(PACKAGES)}), e.g. "
                          f"python -m src.bisect bitsandbytes --good 0.48.2 --bad 0.50.2.")
    if args.package not in PACKAGES:
        raise BisectError(f"{args.package} is not a package dropsweep can bisect; use one of {', '.join(PACKAGES)}.")
    verdict = parse(args.verdict)
    cfg, overrides = check_overrides(args.package, args.overrides)
    from ..versions import resolve_device

    device = resolve_device(cfg.device)
    releases = fetch(args.package)
    if not args.good and not args.bad:
        raise BisectError("give --good or --bad (or both): the bisection needs at least one end.")
    usable = [r for r in releases if not r.pre and not r.yanked and cannot_run_here(args.package, r, device) is None]
    bad = find(releases, args.package, args.bad, "bad") if args.bad else (usable or releases)[-1]
    good = find(releases, args.package, args.good, "good") if args.good else (usable or releases)[0]
    if Version(good.version) == Version(bad.version):
        raise BisectError(f"--good and --bad are both {args.package} {good.version}; give two different releases.")
    if Version(good.version) > Version(bad.version):
        raise BisectError(f"--good {good.version} is newer than --bad {bad.version}; the good end must be the older "
                          f"release (swap them).")
    candidates = between(releases, good.version, bad.version, args.pre, args.yanked)
    refused = {r.version: why for r in candidates if (why := cannot_run_here(args.package, r, device))}
    if len(refused) == len(candidates):
        first = next(iter(refused.values()))
        raise BisectError(f"no release of {args.package} from {good.version} to {bad.version} can run here, so pick "
                          f"another range; the first one says: {first.rstrip('.')}.")
    for end, release in (("good", good), ("bad", bad)):
        if release.version in refused:
            raise BisectError(f"the {end} end cannot run here: {refused[release.version].rstrip('.')}; "
                              f"pick another --{end}.")
    bnb_version = str(cfg.bnb.version)
    companions = {str(k): str(v) for k, v in (cfg.bnb.get("companions") or {}).items()}
    state = {"package": args.package, "good": good.version, "bad": bad.version, "verdict": verdict.spec,
             "overrides": overrides, "bnb_version": bnb_version, "companions": companions,
             "device": device, "cache_dir": str(cfg.cache_dir), "candidates": [r.version for r in candidates],
             "refused": refused, "probes": [good.version, bad.version], "outcome": None,
             "created_at": datetime.now().isoformat(timespec="seconds")}
    for end, release in (("good", good), ("bad", bad)):
        refusal = overlay_refusal(state, release.version, cfg.cache_dir)
        if refusal:
            raise BisectError(f"the {end} end cannot run here: {refusal.rstrip('.')}; pick another --{end}.")
    return state


SAME = ("package", "good", "bad", "verdict", "overrides")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C: the probe that trains stops, the state is kept
    created, sweep_dir = False, None
    try:
        if args.resume:
            sweep_dir = args.resume
            state = read_state(sweep_dir)
            if state is None:
                raise BisectError(f"{sweep_dir} holds no bisection ({STATE}); start one with python -m src.bisect "
                                  f"PACKAGE --good V --bad V.")
            if state.get("outcome"):
                print(state["answer"])
                return 0 if state["outcome"] != "refused" else 1
        else:
            state = plan(args)
            sweep_dir = args.dir or Path("experiments/sweeps") / (
                f"{datetime.now():%Y-%m-%d_%H-%M-%S}_bisect_{args.package}")
            earlier = read_state(sweep_dir)
            if earlier is not None and all(earlier.get(k) == state[k] for k in SAME):
                state = earlier  # the same bisection: go on with it
            elif sweep_dir.exists() and any(sweep_dir.iterdir()):
                raise BisectError(f"{sweep_dir} already holds something else; pick another --dir "
                                  f"(or --resume {sweep_dir} to go on with the bisection there).")
            else:
                created = not sweep_dir.exists()
                sweep_dir.mkdir(parents=True, exist_ok=True)
                save(sweep_dir, state)
        print(f"[bisect] {state['package']} {state['good']} (good) .. {state['bad']} (bad), verdict '{state['verdict']}': "
              f"{len(state['candidates'])} releases, {len(state['refused'])} of them cannot run here -> {sweep_dir}",
              flush=True)
        state = run(state, sweep_dir, state["cache_dir"], echo=lambda line: print(line, flush=True))
    except BisectError as error:
        print(f"dropsweep: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = f"; go on later with python -m src.bisect --resume {sweep_dir}" if sweep_dir else " before it started"
        print(f"\n[bisect] interrupted{hint}", file=sys.stderr)
        return 130
    if state["outcome"] == "refused":
        print(f"dropsweep: {state['answer']}", file=sys.stderr)
        if created:
            shutil.rmtree(sweep_dir, ignore_errors=True)
        return 1
    tried = len(state["probes"])
    print(f"[bisect] {state['answer']}")
    print(f"[bisect] {tried} probes ({tried - 2} between the ends), {state['seconds']:.0f} s -> {sweep_dir}")
    if not args.no_report:
        from ..report.__main__ import main as report

        report([str(sweep_dir)])
    return 0
