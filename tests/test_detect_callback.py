"""LossAnomalyCallback inside a real (tiny, random, CPU) Hugging Face Trainer."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from src.detect import LossAnomalyCallback

MAX_STEPS = 12


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))


def train(tmp_path, model, callbacks) -> Trainer:
    ids = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=MAX_STEPS, logging_steps=1, per_device_train_batch_size=4,
        learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=[{"input_ids": x, "labels": x} for x in ids], callbacks=callbacks)
    trainer.train()
    return trainer


def freeze_gradients(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """Gradients exactly zero, as after the bitsandbytes 0.49-0.50 freeze: the model is frozen
    and the only trainable parameter enters the loss multiplied by zero."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.probe = torch.nn.Parameter(torch.zeros(()))

    def zero_gradient_path(module, args, output):
        output["loss"] = output["loss"] + 0.0 * module.probe
        return output

    model.register_forward_hook(zero_gradient_path)
    return model


class CorruptWeightsAt(TrainerCallback):
    """Turns every weight into NaN after a given step, as an fp16 overflow can."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(math.nan)


def test_stall_stops_training_and_reaches_the_hook(tmp_path, capsys):
    received = []
    callback = LossAnomalyCallback(on_stall="stop", on_event=received.append)
    trainer = train(tmp_path, freeze_gradients(tiny_gpt2()), [callback])
    assert trainer.state.global_step == 5 < MAX_STEPS  # stopped as soon as the stall was certain
    assert [(e.kind, e.step, e.cause) for e in received] == [("stall", 1, "zero_gradients")]
    assert received == callback.events
    assert "[loss anomaly] stall at step 1, zero_gradients: grad_norm exactly 0" in capsys.readouterr().out


def test_nan_hidden_by_the_trainer_is_reported(tmp_path):
    callback = LossAnomalyCallback()
    trainer = train(tmp_path, tiny_gpt2(), [CorruptWeightsAt(step=6), callback])
    logged = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert logged[6:] == [0.0] * (MAX_STEPS - 6)  # the HF Trainer's logging_nan_inf_filter at work
    # Nothing during the healthy steps, then the hidden NaN; "log" does not stop training.
    assert [(e.kind, e.step, e.cause) for e in callback.events] == [("nonfinite", 7, "nan_masked_as_zero")]
    assert trainer.state.global_step == MAX_STEPS


def test_unknown_action_is_one_sentence():
    with pytest.raises(ValueError, match="on_drop='halt' is not an action; use one of log, alert, stop"):
        LossAnomalyCallback(on_drop="halt")
