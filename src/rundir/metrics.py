"""metrics.jsonl: the metrics row (one JSON object per logged step), its writer and its reader."""
from __future__ import annotations

import json
import math

FIELDS = ("step", "loss", "epoch", "lr", "grad_norm", "tokens", "step_time_s", "eval_loss")


def _safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def encode_row(row: dict) -> str:
    """One JSON line; a non-finite number is written as the string "nan", "inf" or "-inf" (never as 0)."""
    return json.dumps({k: _safe(v) for k, v in row.items()}, allow_nan=False)
