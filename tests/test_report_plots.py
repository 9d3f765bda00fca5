"""The report's loss-curve figures show every curve whole: each panel's plotted range holds its data."""
import numpy as np

from benchmarks.report import summary_for, write_run_dir
from src.detect import Curve
from src.report import make_report
from src.report.plots import overlay_axes


def curve(level: float, n: int) -> Curve:
    step = np.arange(1, n + 1)
    return Curve(step=step, loss=level * np.exp(-step / n) * (1 + 0.01 * np.sin(step)), epoch=step / 10)


def test_each_panel_holds_all_of_its_curves(tmp_path):
    # one epoch at a high loss, six epochs falling far lower: a shared range would clip one of them
    write_run_dir(tmp_path / "0", curve(3.0, 12), summary_for({"train.epochs": 1}, steps=12), ["train.epochs=1"])
    write_run_dir(tmp_path / "1", curve(0.05, 72), summary_for({"train.epochs": 6}, steps=72), ["train.epochs=6"])
    report = make_report(tmp_path, jobs=1, plots=False)
    runs = {r.name: r for r in report.sweep.runs}
    fig = overlay_axes([("train.epochs=1", [runs["0"]]), ("train.epochs=6", [runs["1"]])])
    for ax, run in zip(fig.axes, (runs["0"], runs["1"])):
        low, high = ax.get_ylim()
        loss = run.analysis.preview_loss[np.isfinite(run.analysis.preview_loss)]
        assert low <= loss.min() and loss.max() <= high, (ax.get_title(), low, high, loss.min(), loss.max())
        left, right = ax.get_xlim()
        assert left <= run.analysis.preview_step.min() and run.analysis.preview_step.max() <= right
