"""The sweep's W&B side: how to upload offline runs, and (online, on request) a W&B Report of
the sweep grouped by the same factors as the local report (wandb-workspaces)."""
from __future__ import annotations

from collections import Counter

from ..tracking import wandb_mode

# Report factor -> the flattened config key the run logged to W&B (src/tracking.py: flatten).
CONFIG_KEYS = {
    "quant": "quant.name", "double_quant": "quant.double_quant", "compute_dtype": "quant.compute_dtype",
    "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_targets": "lora.target_modules",
    "model": "model.name", "data": "data.name", "bnb_requested": "bnb.version", "bnb": "bnb.version",
}
MAX_GRIDS = 6


def wandb_runs(runs) -> list:
    return [r for r in runs if isinstance(r.summary.get("wandb"), dict) and r.summary["wandb"].get("id")]


def project_of(runs) -> tuple[str | None, str | None]:
    """(entity, project) from the runs' W&B paths ('entity/project/id' or 'project/id')."""
    paths = Counter(str(r.summary["wandb"].get("path") or "") for r in wandb_runs(runs))
    for path, _ in paths.most_common():
        parts = path.split("/")
        if len(parts) == 3:
            return parts[0], parts[1]
        if len(parts) == 2:
            return None, parts[0]
    return None, None


def group_of(sweep) -> str:
    return sweep.path.name  # src/job.py: group = the sweep directory's name


def config_key(factor) -> str | None:
    for name in [factor.name, *factor.aliases]:
        key = CONFIG_KEYS.get(name, name if "." in name or name in ("bnb_version", "device") else None)
        if key:
            return key
    return None


def groupby_key(key: str) -> str:
    # Our config is logged flat ("lora.r" is one key), so its value sits at "<key>.value".
    return f"config.{key}.value" if "." in key else f"config.{key}"


def status(sweep, requested: bool, attribution, verdict: str) -> tuple[list[str], str | None]:
    """(lines, a command to show) for the report's W&B section; makes the W&B Report if asked."""
    logged = wandb_runs(sweep.runs)
    if not logged:
        return ["No run of this sweep logged to W&B (logger=disk, or runs made elsewhere)."], None
    entity, project = project_of(sweep.runs)
    offline = sum(1 for r in logged if r.summary["wandb"].get("mode") == "offline")
    where = f"project {project}" + (f" of {entity}" if entity else "") + f", group {group_of(sweep)}"
    lines = [f"{len(logged)} run{'s' if len(logged) > 1 else ''} logged to W&B ({where})"
             + (f"; {offline} of them offline." if offline else ".")]
    sync = f"wandb sync {sweep.path}/*/wandb/offline-run-*" if offline else None
    online = wandb_mode("auto") == "online"
    if not requested:
        if offline:
            lines.append("Upload the offline runs with the command below (after `wandb login`); then "
                         "`python -m src.report --wandb-report` adds a W&B Report grouped by the same factors.")
        else:
            lines.append("`python -m src.report --wandb-report` adds a W&B Report grouped by the same factors.")
        return lines, sync
    if not online:
        lines.append("No W&B Report: not logged in to W&B (offline). Run `wandb login`, upload the runs with "
                     "the command below, then run the report again with --wandb-report.")
        return lines, sync or "wandb login"
    try:
        url = build(sweep, attribution, verdict, entity, project).save().url
    except ImportError:
        lines.append("No W&B Report: it needs the wandb-workspaces package (pip install wandb-workspaces).")
    except Exception as error:  # noqa: BLE001 - the local report stands without it
        lines.append(f"No W&B Report: W&B refused it ({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}).")
    else:
        lines.append(f"W&B Report: {url}")
    return lines, sync


def build(sweep, attribution, verdict: str, entity: str | None, project: str):
    """The W&B Report object (not yet saved): the verdict, then one panel grid per factor."""
    import wandb_workspaces.reports.v2 as wr

    group = group_of(sweep)
    filters = f"Group = '{group}'"
    grids = []
    for factor in attribution.factors[:MAX_GRIDS]:
        key = config_key(factor)
        if key is None:
            continue
        runset = wr.Runset(entity=entity or "", project=project, name=f"by {factor.name}", filters=filters,
                           groupby=[groupby_key(key)])
        grids += [wr.H2(f"By {factor.name}"), wr.PanelGrid(runsets=[runset], panels=[
            wr.LinePlot(title="train loss", x="train/step", y=["train/loss"], log_y=True),
            wr.LinePlot(title="eval loss", x="train/step", y=["eval/loss"]),
        ])]
    if not grids:
        runset = wr.Runset(entity=entity or "", project=project, name="all runs", filters=filters)
        grids = [wr.PanelGrid(runsets=[runset], panels=[wr.LinePlot(title="train loss", x="train/step",
                                                                    y=["train/loss"], log_y=True)])]
    kwargs = {"entity": entity} if entity else {}
    return wr.Report(project=project, title=f"dropsweep: {group}", description=verdict,
                     blocks=[wr.H1(f"Sweep {group}"), wr.P(verdict), *grids], **kwargs)
