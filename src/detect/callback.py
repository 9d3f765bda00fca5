"""A Hugging Face TrainerCallback that watches the training loss live.

    from dropsweep.detect import LossAnomalyCallback   # or src.detect from a checkout
    trainer = Trainer(..., callbacks=[LossAnomalyCallback(on_drop="log", on_stall="stop")])

Each event is printed as one line; `on_event(event)` receives it too (dropsweep routes events
to summary.json and W&B that way). Per kind of event: "log" prints it, "alert" also raises a
W&B alert when a W&B run is active and no on_event hook takes care of routing, "stop" also
ends training cleanly (control.should_training_stop). Other settings are the detector's
(conf/detector/default.yaml).
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from .streaming import StreamingDetector

ACTIONS = ("log", "alert", "stop")
logger = logging.getLogger("src.detect")


class LossAnomalyCallback(TrainerCallback):
    def __init__(self, on_drop: str = "log", on_stall: str = "log", on_event=None, **settings):
        for name, action in (("on_drop", on_drop), ("on_stall", on_stall)):
            if action not in ACTIONS:
                raise ValueError(f"{name}={action!r} is not an action; use one of {', '.join(ACTIONS)}")
        self.actions = {"drop": on_drop, "stall": on_stall}
        self.on_event = on_event
        self.detector = StreamingDetector(**settings)
        self.events = []  # every event so far, in the order decided

    def action(self, event) -> str:
        """What the user asked for on this kind of event: log, alert or stop (the one place that decides)."""
        return self.actions.get(event.kind, "log")

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not state.is_world_process_zero or ("loss" not in logs and "eval_loss" not in logs):
            return  # other processes, and rows without a loss (the end-of-training summary)
        events = self.detector.update(
            state.global_step,
            logs.get("loss"),
            epoch=logs.get("epoch", state.epoch),
            lr=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            eval_loss=logs.get("eval_loss"),
            tokens=logs.get("num_input_tokens_seen"),
        )
        self._handle(events, control)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._handle(self.detector.finish(), control)

    def _handle(self, events, control) -> None:
        for event in events:
            self.events.append(event)
            action = self.action(event)
            print(f"[loss anomaly] {event.describe()}", flush=True)
            if self.on_event is not None:
                self.on_event(event)
            elif action in ("alert", "stop"):
                _wandb_alert(event)
            if action == "stop":
                control.should_training_stop = True


def _wandb_alert(event) -> None:
    """A W&B alert, when W&B is installed and a run is active; nothing otherwise."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        try:
            wandb.alert(title=f"loss {event.kind} at step {event.step}", text=event.describe())
        except Exception as error:  # an alert must never end training
            logger.warning("could not send a W&B alert: %s", error)
