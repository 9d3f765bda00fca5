"""Entry point: `python -m src.run [overrides]`, `-m` for a sweep.

Hydra's state is read here and nowhere else: the job's run dir, name and group go to the sweep's
bookkeeping (src/sweep.py) and to the launcher (src/launch.py), which trains it here or in a
process of its own (src/train.py: `train(cfg, run_dir) -> summary`).
"""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import launch, sweep
from .rundir.manifest import job_name

CHECKOUT_CONF = Path(__file__).resolve().parent.parent / "conf"
# From a checkout (or an editable install) the configs beside src/; installed, the ones packed inside it.
CONFIG_PATH = str(CHECKOUT_CONF) if (CHECKOUT_CONF / "config.yaml").is_file() else f"pkg://{__package__}.conf"

# conf/config.yaml names the sweep's Hydra callback through this, so it resolves under either package name
OmegaConf.register_new_resolver("dropsweep_package", lambda: __package__, replace=True)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def main(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    spec = launch.JobSpec(run_dir=run_dir, name=job_name(hc.overrides.task), multirun=multirun,
                          group=launch.group_name(hc, run_dir), command=launch.child_command(hc, run_dir),
                          cwd=hc.runtime.cwd)
    if sweep.in_sweep(hc):
        skipped = sweep.skip(cfg, hc.sweep.dir, run_dir, spec.name)
        if skipped is not None:
            return skipped
        sweep.job_started(hc.sweep.dir, hc.job.num, run_dir, spec.name)
        spec.notify = sweep.recorder(hc.sweep.dir, hc.job.num)
    summary = launch.run(cfg, spec)
    if sweep.in_sweep(hc) and summary.get("status") == "stopped" and launch.slurm_requeued():
        sweep.record_requeue(hc.sweep.dir, hc.job.num, summary.get("stop_reason"))
        raise SystemExit(f"dropsweep: job {hc.job.num} stopped and requeued by SLURM")
    if summary["status"] == "failed" and not multirun:
        sys.exit(1)
    return summary


def cli() -> None:
    """main() with Hydra's own errors (bad overrides, an unwritable output dir) as one sentence, exit 2."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let them reach us instead of Hydra's traceback printer
    try:
        main()
    except HydraException as exc:  # before OSError: a missing config option is both
        print(f"dropsweep: {_one_sentence(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        where = exc.filename or "the output dir"
        print(f"dropsweep: cannot write {where} ({exc.strerror or exc}); point hydra.run.dir (or hydra.sweep.dir) "
              f"at a writable place", file=sys.stderr)
        sys.exit(2)


def _one_sentence(text: str) -> str:
    """Hydra's multi-line message as one line: 'Could not find 'quant/nf5'; available options in 'quant': fp4, ...'."""
    text = text.split("Config search path:")[0].replace("In 'config': ", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 2 and lines[1].endswith(":"):
        return f"{lines[0].rstrip('.')}; {lines[1][0].lower()}{lines[1][1:-1]}: {', '.join(lines[2:])}"
    return "; ".join(line.rstrip(".") for line in lines)


if __name__ == "__main__":
    cli()
