"""Loss-anomaly detection for training curves: drops (with their likely cause), spikes,
stalls and hidden NaN, over a whole log (`detect`) or live (`StreamingDetector`,
`LossAnomalyCallback`). `python -m src.detect PATH` runs it on a log file."""

from .core import detect
from .curve import Curve, LogFormatError
from .events import Event, Settings
from .formats import load_curve
from .streaming import StreamingDetector

__all__ = ["Curve", "Event", "LogFormatError", "LossAnomalyCallback", "Settings", "StreamingDetector", "detect", "load_curve"]


def __getattr__(name):
    # The callback needs transformers; import it only when asked for.
    if name == "LossAnomalyCallback":
        from .callback import LossAnomalyCallback

        return LossAnomalyCallback
    raise AttributeError(f"module 'src.detect' has no attribute {name!r}")
