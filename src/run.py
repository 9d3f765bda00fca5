"""Entry point: `python -m src.run [overrides]`, `-m` for a sweep.

The work happens in `src.job.run_job(cfg)`; this file only hands Hydra's config over.
"""
import hydra
from omegaconf import DictConfig

from .job import run_job


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg)


if __name__ == "__main__":
    main()
