"""The config keys that differ between the runs of a sweep (the run table's --differing-keys option)."""
from __future__ import annotations

from .attribution import level_label


def flat(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def run_config(run) -> dict:
    """A run's composed config (.hydra/config.yaml) flattened; its factors where there is none."""
    from .runs import read_yaml

    config = read_yaml(run.path / ".hydra" / "config.yaml") if run.path.is_dir() else {}
    return flat(config) if config else dict(run.factors)


def differing_keys(runs) -> tuple[list[str], dict]:
    """(config keys whose value differs between the runs, run name -> {key: value label})."""
    configs = {run.name: run_config(run) for run in runs}
    keys = []
    for config in configs.values():
        keys += [k for k in config if k not in keys]
    varying = [k for k in keys if len({level_label(c.get(k)) for c in configs.values()}) > 1
               and not k.startswith(("hydra.", "cache_dir", "wandb"))]
    return varying, {name: {k: level_label(c.get(k)) for k in varying} for name, c in configs.items()}
