"""Generation benchmark (GPU): plain `generate` against each fast path, at polyglot-ko-1.3b's and 12.8b's shapes.

    make bench-gen                                            # both sizes -> experiments/gpu/gen_results.{json,md}
    python -m benchmarks.gen --sizes 12.8b --out /tmp/gen     # one size
    python -m benchmarks.gen --tiny --out /tmp/gen-dry        # the whole pipeline on the CPU, a tiny shape

Per size, in one process: the model is made on the GPU with random weights (models.random_base_on_device: nf4 +
double quant, each layer quantized as it is made, no checkpoint), wrapped with the KoAlpaca recipe's LoRA
(experiment=seed_koalpaca: r=8, alpha 32, dropout 0.05 on query_key_value, bf16 compute, gradient checkpointing,
paged 8-bit AdamW, batch 2) and trained --steps steps on the bundled facts, so that its logits are not flat; its
peak memory is the training peak. Then, batch 1, greedy, --tokens new tokens with the end-of-text token held back:
plain `generate` on the LoRA model, and each fast path (src/generation) converting that model in place, as
`python -m src.generate RUN_DIR` does: base (the nf4 base as trained + adapter, CUDA graphs), int4 (merged, torchao
int4 weight-only, CUDA graphs) and dense (merged bf16, transformers' compiled route); the model is made again,
with the trained adapter, for each path that used it up. For each: tokens/s (answer tokens over the whole call),
time to first token, set-up (conversion + compilation or graph capture + warm-up), peak memory from the LoRA model
on, and the first token where the answer leaves plain `generate`'s.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/gen.py` as well as `python -m benchmarks.gen`
    sys.path.insert(0, str(ROOT))

SIZES = {"1.3b": "polyglot_ko_1_3b_random", "12.8b": "polyglot_ko_12_8b_random"}
TINY_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}
PATHS = {  # name -> (weights, decoding ways in order)
    "base": ("base", ["fused", "graphs", "eager"]),
    "base_graphs": ("base", ["graphs", "eager"]),
    "int4": ("int4", ["graphs", "eager"]),
    "dense": ("dense", ["inductor", "graphs", "eager"]),
    "int4_inductor": ("int4", ["inductor"]),
}


def gb(n: float) -> float:
    return round(n / 2**30, 3)


def compose(model: str, args) -> "DictConfig":  # noqa: F821
    from hydra import compose as hydra_compose, initialize_config_dir

    overrides = ["experiment=seed_koalpaca", f"model={model}", "data=facts", f"device={args.device}",
                 "logger=disk", f"cache_dir={args.cache}"]
    if args.tiny:
        overrides += [f"model.arch_config.{k}={v}" for k, v in TINY_SHAPE.items()] + ["quant.compute_dtype=float32"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def build(cfg, device: str, lora_state=None):
    from peft import set_peft_model_state_dict

    from src.models import load_model_and_tokenizer

    started = time.perf_counter()
    torch.manual_seed(int(cfg.train.seed))
    model, tokenizer = load_model_and_tokenizer(cfg, device, on_device=True)
    if lora_state is not None:
        set_peft_model_state_dict(model, {k: v.to(device) for k, v in lora_state.items()})
    sync(device)
    return model, tokenizer, time.perf_counter() - started


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> float | None:
    return gb(torch.cuda.max_memory_allocated()) if device == "cuda" else None


def train(model, tokenizer, cfg, steps: int, lr: float, device: str) -> dict:
    """--steps optimizer steps of the recipe on the facts (batch 2), as the Trainer would take them."""
    from src.data import PROJECT_ROOT, format_example

    rows = [json.loads(line) for line in (PROJECT_ROOT / "src/assets/facts.jsonl").read_text().splitlines()]
    texts = [format_example(r["instruction"], r["output"]) for r in rows]
    params = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=lr)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr)
    batch_size = int(cfg.train.batch_size)
    model.train()
    losses, started = [], time.perf_counter()
    for step in range(steps):
        chunk = [texts[(step * batch_size + i) % len(texts)] for i in range(batch_size)]
        batch = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                          max_length=int(cfg.model.max_length)).to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, float(cfg.train.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss), 4))
    sync(device)
    model.eval()
    return {"steps": steps, "lr": lr, "batch_size": batch_size, "losses": losses,
            "seconds": round(time.perf_counter() - started, 2)}


def flatness(model, tokenizer, prompt: str, token_ids: list[int], device: str) -> dict:
    """How peaked the plain model's next-token distributions are along its own answer."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    full = torch.cat([ids, torch.tensor([token_ids], device=device)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, ids.shape[1] - 1:-1].float()
    top = logits.topk(2, dim=-1)
    probs = logits.softmax(-1).max(-1).values
    gaps = (top.values[:, 0] - top.values[:, 1])
    return {"top1_prob_mean": round(float(probs.mean()), 4), "top1_prob_min": round(float(probs.min()), 4),
            "logit_gap_median": round(float(gaps.median()), 4), "logit_gap_min": round(float(gaps.min()), 5),
            "uniform_prob": round(1 / logits.shape[-1], 6)}


def one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def run_path(name: str, model, tokenizer, prompt: str, args, plain_ids: list[int]) -> dict:
    from src.generation import FastPath, first_divergence

    weights, ways = PATHS[name]
    started = time.perf_counter()
    fast = FastPath(model, tokenizer, weights=weights, in_place=True, ways=list(ways),
                    positions=args.tokens + len(tokenizer(prompt)["input_ids"]))
    answers = [fast.answer(prompt, args.tokens, full_length=True) for _ in range(args.repeats)]
    setup_s = fast.convert_s + answers[0]["warmup_s"]
    first = answers[0]
    out = {"path": first["path"], "weights": first["weights"], "setup_s": round(setup_s, 2),
           "convert_s": round(fast.convert_s, 2), "wall_s": round(time.perf_counter() - started, 2),
           "tokens_per_s": round(statistics.median(a["tokens_per_s"] for a in answers), 1),
           "tokens_per_s_runs": [round(a["tokens_per_s"], 1) for a in answers],
           "ttft_ms": round(1000 * statistics.median(a["ttft_s"] for a in answers), 1),
           "new_tokens": first["new_tokens"],
           "first_divergence": first_divergence(plain_ids, first["token_ids"]),
           "runs_agree": all(a["token_ids"] == first["token_ids"] for a in answers), "answer": first["answer"]}
    if "compile_error" in first:
        out["fell_back"] = first["compile_error"]
    if fast.decoder is not None and fast.decoder.graph is not None:
        from benchmarks.decode_time import decode_breakdown

        out |= decode_breakdown(fast.model, fast.decoder)
    return out


def bench_size(size: str, args, row: dict, save) -> None:
    """Fills `row` for one size, calling `save()` after each stage so a cut-off run keeps what it measured."""
    from src.generation import choose_weights, plain_generate
    from src.generation.fast import available_bytes

    device = args.device
    cfg = compose(SIZES[size], args)
    prompt = cfg.train.generation.prompt
    row |= {"size": size, "model": SIZES[size], "arch": dict(cfg.model.arch_config), "paths": {}}
    reset_memory(device)
    model, tokenizer, build_s = build(cfg, device)
    row["build_s"] = round(build_s, 2)
    row["model_gb"] = peak(device)
    print(f"[{size}] built in {build_s:.1f} s", flush=True)
    row["train"] = train(model, tokenizer, cfg, args.steps, args.lr, device)
    row["train_peak_gb"] = peak(device)
    print(f"[{size}] trained: loss {row['train']['losses'][0]} -> {row['train']['losses'][-1]}, "
          f"peak {row['train_peak_gb']} GiB", flush=True)
    from peft import get_peft_model_state_dict

    lora_state = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}
    positions = args.tokens + len(tokenizer(prompt)["input_ids"])
    choice = {}
    for label, memory_gb in (("this card", None), ("24 GB card", 24.0)):
        weights, reason = choose_weights(model, in_place=True, positions=positions, memory_gb=memory_gb)
        choice[label] = {"weights": weights, "reason": reason}
    row["auto_choice"] = choice
    free = available_bytes(model.device)
    row["free_gb_before_answering"] = gb(free) if free is not None else None

    reset_memory(device)
    plain = plain_generate(model, tokenizer, prompt, args.tokens, full_length=True)
    row["plain"] = {"tokens_per_s": round(plain["tokens_per_s"], 1), "ttft_ms": round(1000 * plain["ttft_s"], 1),
                    "peak_gb": peak(device), "new_tokens": plain["new_tokens"], "answer": plain["answer"]}
    row["plain_logits"] = flatness(model, tokenizer, prompt, plain["token_ids"], device)
    print(f"[{size}] plain: {row['plain']['tokens_per_s']} tokens/s, flatness {row['plain_logits']}", flush=True)
    save()

    for name in args.paths:
        if model is None:
            reset_memory(device)
            model, tokenizer, rebuild_s = build(cfg, device, lora_state)
            print(f"[{size}] made again in {rebuild_s:.1f} s", flush=True)
        reset_memory(device)
        start_gb = gb(torch.cuda.memory_allocated()) if device == "cuda" else None
        try:
            result = run_path(name, model, tokenizer, prompt, args, plain["token_ids"])
        except Exception as exc:  # one path's failure is a result too; the others still run
            result = {"error": one_line(exc)}
        result["peak_gb"] = peak(device)
        result["start_gb"] = start_gb
        if "tokens_per_s" in result:
            result["speedup"] = round(result["tokens_per_s"] / row["plain"]["tokens_per_s"], 2)
            if row["train_peak_gb"]:
                result["peak_vs_training"] = round(result["peak_gb"] / row["train_peak_gb"], 2)
        row["paths"][name] = result
        print(f"[{size}] {name}: {json.dumps({k: v for k, v in result.items() if k != 'answer'})}", flush=True)
        save()
        model = None  # used up by the conversion (in place: the base path's 4-bit layers are unrolled)
        torch._dynamo.reset()
    del model
    reset_memory(device)


def environment(device: str) -> dict:
    from src.versions import library_versions

    versions = library_versions()
    for name in ("torchao", "triton"):  # the int4 kernels and the compiler, beside dropsweep's own libraries
        versions[name] = metadata.version(name) if importlib.util.find_spec(name) else None
    env = {"versions": versions, "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env |= {"device": torch.cuda.get_device_name(0), "device_memory_gb": gb(props.total_memory),
                "cuda": torch.version.cuda}
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["device"] = platform.processor() or "cpu"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        env["git"] = commit + ("-dirty" if dirty else "") if commit else None
    except OSError:
        env["git"] = None
    return env


def markdown(results: dict) -> str:
    env, s = results["environment"], results["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines = [f"# Generation: plain vs fast paths ({env['device']}, {env['when']})", "",
             f"- versions: {versions}; CUDA {env.get('cuda')}, driver {env.get('driver')}; dropsweep {env.get('git')}",
             f"- batch 1, greedy, {s['tokens']} new tokens (end-of-text held back), median of {s['repeats']} answers "
             f"after the warm-up; adapter trained {s['steps']} steps (lr {s['lr']}) before answering",
             "- tokens/s: answer tokens over the whole call (prompt included); TTFT: time to the first token; set-up: "
             "conversion + compilation or graph capture + warm-up, paid once per model; peak: GPU memory allocated "
             "from the LoRA model on, against the training peak", ""]
    for row in results["sizes"]:
        if "plain" not in row:
            continue
        t = row["train"]
        lines += [f"## {row['size']} ({row['model']}: {row['arch'].get('num_hidden_layers')} layers, hidden "
                  f"{row['arch'].get('hidden_size')})", "",
                  f"Made on the GPU in {row['build_s']} s (nf4 + double quant: {row['model_gb']} GiB); trained "
                  f"{t['steps']} steps in {t['seconds']} s, loss {t['losses'][0]} -> {t['losses'][-1]}, "
                  f"**training peak {row['train_peak_gb']} GiB**. Plain model's answer: top-1 probability "
                  f"{row['plain_logits']['top1_prob_mean']} on average (uniform {row['plain_logits']['uniform_prob']}),"
                  f" median top-1/top-2 logit gap {row['plain_logits']['logit_gap_median']}.", "",
                  "| path | what ran | tokens/s | vs plain | TTFT ms | set-up s | peak GiB | x training peak "
                  "| same tokens as plain |", "|---|---|---|---|---|---|---|---|---|"]
        p = row["plain"]
        lines.append(f"| plain | `generate` on the LoRA model | {p['tokens_per_s']} | 1.0x | {p['ttft_ms']} | - | "
                     f"{p['peak_gb']} | {_ratio(p['peak_gb'], row['train_peak_gb'])} | - |")
        for name, r in row["paths"].items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | | | | | {r.get('peak_gb')} | | |")
                continue
            same = "all" if r["first_divergence"] is None else f"first {r['first_divergence']}"
            lines.append(f"| {name} | {r['path']} | {r['tokens_per_s']} | {r['speedup']}x | {r['ttft_ms']} | "
                         f"{r['setup_s']} | {r['peak_gb']} | {r.get('peak_vs_training', '-')} | {same} of "
                         f"{r['new_tokens']} |")
        lines.append("")
        for label, c in row["auto_choice"].items():
            lines.append(f"- auto on {label}: **{c['weights']}** ({c['reason']})")
        for name, r in row["paths"].items():
            if r.get("fell_back"):
                lines.append(f"- {name} fell back: {r['fell_back']}")
            if r.get("gemv_4bit_ms"):
                lines.append(f"- {name}: one decoding step takes {r['step_ms']} ms of GPU time; bitsandbytes' 4-bit "
                             f"kernel alone, over its {r['gemv_4bit_layers']} layers, {r['gemv_4bit_ms']} ms "
                             f"({r['gemv_4bit_gb_per_s']} GB/s of packed weights and block constants)")
            elif r.get("step_ms"):
                lines.append(f"- {name}: one decoding step takes {r['step_ms']} ms of GPU time")
        lines.append("")
    lines.append(f"Repeat: `{s['command']}`")
    return "\n".join(lines) + "\n"


def _ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1.3b,12.8b", help=f"comma-separated, of {','.join(SIZES)}")
    parser.add_argument("--paths", default="base,base_graphs,int4,dense", help=f"comma-separated, of {','.join(PATHS)}")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per answer")
    parser.add_argument("--repeats", type=int, default=3, help="timed answers per path")
    parser.add_argument("--steps", type=int, default=24, help="training steps before answering")
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate of those steps")
    parser.add_argument("--out", default="experiments/gpu", help="folder for gen_results.json and gen_results.md")
    parser.add_argument("--cache", default=str(ROOT / ".cache"), help="where the tokenizer's tiny checkpoint is kept")
    parser.add_argument("--tiny", action="store_true", help="dry run on the CPU: tiny shape, float32, few steps")
    args = parser.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [s for s in args.sizes if s not in SIZES] + [p for p in args.paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown size or path {', '.join(unknown)}")
    args.device = "cpu" if args.tiny else "cuda"
    if args.tiny:
        args.tokens, args.repeats, args.steps = min(args.tokens, 32), 1, min(args.steps, 8)
    elif not torch.cuda.is_available():
        parser.error("bench-gen needs a CUDA GPU (or --tiny for a dry run on the CPU)")
    args.command = "python -m benchmarks.gen " + " ".join(argv if argv is not None else sys.argv[1:])
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(args.device),
               "settings": {k: v for k, v in vars(args).items() if k not in ("cache",)}, "sizes": []}

    def save():
        (out / "gen_results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        (out / "gen_results.md").write_text(markdown(results))

    for size in args.sizes:
        results["sizes"].append({})
        bench_size(size, args, results["sizes"][-1], save)
        save()
    print(markdown(results))


if __name__ == "__main__":
    main()
