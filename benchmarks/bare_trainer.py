"""The bare baseline: HF Trainer + peft + bitsandbytes, nothing of dropsweep's (no detector, no
metrics stream, no W&B). `python -m benchmarks.gpu` runs it beside dropsweep with the same
settings to show what dropsweep's own machinery costs per step.

Standalone on purpose: it imports no dropsweep code, so that it is what a user would write.

    python benchmarks/bare_trainer.py --model CKPT_DIR --data rows.jsonl --quant nf4_dq \\
        --steps 40 --batch 8 --seq 512 --json bare.json

Step time is measured as dropsweep measures it: from on_step_begin to on_step_end, with
torch.cuda.synchronize at the step's end; the period is end to end (the step plus logging,
callbacks and the next batch).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from importlib import metadata

import torch
from datasets import load_dataset
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorForLanguageModeling,
                          Trainer, TrainerCallback, TrainingArguments, set_seed)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# quant mode -> (bits, 4-bit type, double quant), the names dropsweep's quant group uses
QUANT_MODES = {"none": (None, None, False), "nf4": (4, "nf4", False), "nf4_dq": (4, "nf4", True),
               "fp4": (4, "fp4", False), "fp4_dq": (4, "fp4", True), "int8": (8, None, False)}
TEMPLATE = "### 질문: {instruction}\n\n### 답변: {output}"  # KoAlpaca's


class StepTimer(TrainerCallback):
    def __init__(self):
        self.step_times, self.step_periods, self.losses = [], [], []
        self._started = self._ended = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if args.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.step_times.append(now - self._started)
        self.step_periods.append(now - self._ended if self._ended is not None else None)
        self._ended = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def load_model(args, device: str):
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bits, quant_type, double_quant = QUANT_MODES[args.quant]
    if bits == 8:
        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    elif bits == 4:
        kwargs = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=DTYPES[args.compute_dtype])}
    else:
        kwargs = {"dtype": DTYPES[args.compute_dtype]}
    if device == "cuda":
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if bits:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=args.targets.split(","), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if device == "cuda" and not bits:
        model.to("cuda")
    return model, tokenizer


def load_rows(args, tokenizer):
    rows = load_dataset("json", data_files=args.data, split="train")

    def tokenize(batch):
        texts = [TEMPLATE.format(instruction=i.strip(), output=o.strip()) + tokenizer.eos_token
                 for i, o in zip(batch["instruction"], batch["output"])]
        return tokenizer(texts, truncation=True, max_length=args.seq)

    return rows.map(tokenize, batched=True, remove_columns=rows.column_names)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="bare HF Trainer + peft + bitsandbytes LoRA run, timed per step")
    parser.add_argument("--model", required=True, help="a local checkpoint directory")
    parser.add_argument("--data", required=True, help="a .jsonl with instruction/output fields")
    parser.add_argument("--quant", default="nf4", choices=sorted(QUANT_MODES))
    parser.add_argument("--compute-dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--scheduler", default="constant")
    parser.add_argument("--optim", default="adamw_torch")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--targets", default="query_key_value", help="comma-separated LoRA target modules")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args(argv)

    set_seed(args.seed)
    on_gpu = args.device == "cuda"
    model, tokenizer = load_model(args, args.device)
    train_set = load_rows(args, tokenizer)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type=args.scheduler,
            warmup_steps=0, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
            optim=args.optim, weight_decay=0.0, max_grad_norm=args.max_grad_norm, seed=args.seed,
            data_seed=args.seed, logging_steps=1, logging_nan_inf_filter=False, eval_strategy="no",
            save_strategy="no", report_to="none", include_num_input_tokens_seen="non_padding",
            bf16=on_gpu and args.compute_dtype == "bfloat16", fp16=on_gpu and args.compute_dtype == "float16",
            use_cpu=not on_gpu, dataloader_num_workers=0, disable_tqdm=True, remove_unused_columns=False)
        trainer = Trainer(model=model, args=training_args, train_dataset=train_set,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                          processing_class=tokenizer, callbacks=[timer])
        result = trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    versions = {name: metadata.version(name) for name in ("torch", "transformers", "peft", "bitsandbytes")}
    out = {"quant": args.quant, "steps": trainer.state.global_step, "step_times": timer.step_times,
           "step_periods": timer.step_periods, "losses": timer.losses,
           "train_runtime_s": result.metrics.get("train_runtime"), "tokens": int(trainer.state.num_input_tokens_seen),
           "peak_mem_gb": peak, "device_name": torch.cuda.get_device_name(0) if on_gpu else platform.processor(),
           "cuda": torch.version.cuda, "python": platform.python_version(), "versions": versions}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(f"bare {args.quant}: {out['steps']} steps, median step "
          f"{sorted(timer.step_times)[len(timer.step_times) // 2]:.4f} s, loss {timer.losses[0]:.3f} -> {timer.losses[-1]:.3f}")


if __name__ == "__main__":
    main()
