"""GPU benchmark: dropsweep's training beside a bare HF Trainer + peft + bitsandbytes script, per quant mode.

For a model of polyglot-ko-1.3b's architecture (random weights, model=polyglot_ko_1_3b_random) and
each quant mode, it runs `python -m src.run` (W&B offline, detector on, metrics stream, fast
generation path) and benchmarks/bare_trainer.py with the same TrainingArguments, --repeats times
each, interleaved (dropsweep, bare / bare, dropsweep, ...) to cancel drift, and prints per mode:
step time of each and their ratio, tokens/s, peak GPU memory, model FLOPs utilisation, whether the
loss fell, and plain vs fast generation.

    make bench-gpu                                              # all six modes -> experiments/gpu/
    python -m benchmarks.gpu --steps 40 --batch 8 --seq 512 --modes none,nf4_dq --out /tmp/gpu
    python -m benchmarks.gpu --gpus 4 --ablate int8              # modes side by side, one GPU each
    python -m benchmarks.gpu --tiny --out /tmp/gpu-dry          # the whole pipeline on the CPU, a tiny shape

Step time is on_step_begin -> on_step_end with torch.cuda.synchronize at the end, the median of
the steps after --warmup; the period (end to end) adds logging, callbacks and the next batch, so
the period ratio is where dropsweep's own overhead (detector, W&B, metrics file) would show. A
mode's ratio is the median of its per-repeat ratios (each repeat: dropsweep's median step over the
bare script's, run back to back on the same GPU), shown with their range. With --gpus N the modes
run side by side, each mode's repeats all on one GPU. --ablate MODES adds, for those modes, a third
run per repeat with logger=disk (no W&B), to split dropsweep's cost into W&B and the rest.
--lockstep runs each repeat's runs at once on the same GPU, taking turns one step each
(benchmarks/lockstep.py), so that run-to-run swings of the card fall on both sides. --aa puts a
second copy of the bare script in dropsweep's place: its ratios are the noise of the measurement.
`python -m benchmarks.pool FILES` pools the ratios of several results files.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import lockstep
from src.data import PROJECT_ROOT, format_example

MODES = ["none", "nf4", "nf4_dq", "fp4", "fp4_dq", "int8"]
# Dense bf16 peak (TFLOP/s, no sparsity) by the name torch.cuda.get_device_name gives; longest match wins.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "GH200": 989.0,
                    "H800": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}
TINY_SHAPE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}
FLOP_FORMULA = ("LoRA training FLOPs per token = 4*N + 12*L*S*d: forward 2*N and backward activation "
                "gradients 2*N over the N frozen matmul weights (attention qkv/dense, MLP, lm_head; the base "
                "has no weight gradients; LoRA's own r=8 matmuls are left out), plus attention scores and "
                "values 4*S*d per layer forward and twice that backward (no causal halving, no recomputation). "
                "MFU = that x tokens per step / step time / the card's dense bf16 peak.")


def peak_tflops(device_name: str) -> float | None:
    matches = [key for key in PEAK_BF16_TFLOPS if key in device_name]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def training_flops_per_token(arch: dict, seq: int) -> float:
    d, layers, ff, vocab = arch["hidden_size"], arch["num_hidden_layers"], arch["intermediate_size"], arch["vocab_size"]
    matmul_params = layers * (3 * d * d + d * d + 2 * d * ff) + vocab * d
    return 4 * matmul_params + 12 * layers * seq * d


def make_data(path: Path, tokenizer, seq: int, rows: int = 256, seed: int = 0) -> None:
    """Instruction/output rows built from the bundled facts, each at least `seq` tokens long."""
    facts = [json.loads(line) for line in (PROJECT_ROOT / "src/assets/facts.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(rows):
            question, parts = facts[i % len(facts)]["instruction"], []
            while len(tokenizer(format_example(question, " ".join(parts)))["input_ids"]) < seq + 8:
                parts.append(rng.choice(facts)["output"])
            f.write(json.dumps({"instruction": question, "output": " ".join(parts)}, ensure_ascii=False) + "\n")


def median_after(values: list, warmup: int) -> float | None:
    kept = [v for v in values[warmup:] if v is not None]
    return statistics.median(kept) if kept else None


def run_logged(cmd: list[str], log: Path, env: dict, timeout: int) -> tuple[bool, str]:
    started = time.perf_counter()
    if env.get("DROPSWEEP_BENCH_CPUS"):
        cmd = ["taskset", "-c", env["DROPSWEEP_BENCH_CPUS"], *cmd]
    try:
        with log.open("w") as f:
            proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    gpu = env.get("CUDA_VISIBLE_DEVICES")
    print(f"    {'ok ' if ok else 'FAILED'} {time.perf_counter() - started:6.1f} s  {log.name}"
          f"{f' (GPU {gpu})' if gpu is not None else ''}", flush=True)
    return ok, " | ".join(tail) if not ok else ""


def _cpu_ranges(text: str) -> list[list[int]]:
    """'0-47,96-143' -> [[0..47], [96..143]]."""
    ranges = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        ranges.append(list(range(int(low), int(high or low) + 1)))
    return ranges


def cpu_shares(gpus: list[str]) -> dict[str, str]:
    """A disjoint set of CPU cores per GPU for side-by-side runs, from each GPU's own NUMA node
    (`nvidia-smi topo -m`'s CPU Affinity; GPUs of one node split each of its ranges, so SMT siblings
    stay together), else an even split of this process's cores. A run's launch thread then never
    waits behind a neighbour's model loading or compilation."""
    affinity = {}
    try:
        topo = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30).stdout
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).split("\t") for line in topo.splitlines() if line.strip()]
        header = [c.strip() for c in lines[0]]
        column = header.index("CPU Affinity") + (header[0] != "")  # rows start with the GPU's name
        for cells in lines[1:]:
            name = cells[0].strip()
            if name.startswith("GPU") and name[3:].isdigit() and name[3:] in gpus:
                affinity[name[3:]] = cells[column].strip()
                _cpu_ranges(affinity[name[3:]])  # a CPU list, or ValueError
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        affinity = {}
    if set(affinity) != set(gpus):
        cores = sorted(os.sched_getaffinity(0))
        affinity = {gpu: f"{cores[i * len(cores) // len(gpus)]}-{cores[(i + 1) * len(cores) // len(gpus) - 1]}"
                    for i, gpu in enumerate(gpus)}
    shares = {}
    for text in set(affinity.values()):
        sharing = [gpu for gpu in gpus if affinity[gpu] == text]
        for j, gpu in enumerate(sharing):
            parts = [r[j * len(r) // len(sharing):(j + 1) * len(r) // len(sharing)] for r in _cpu_ranges(text)]
            shares[gpu] = ",".join(f"{p[0]}-{p[-1]}" for p in parts if p)
    return shares


def ratio(a, b):
    return a / b if a and b else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.out = Path(args.out)
        self.logs = self.work / "logs"  # per-run logs stay beside the runs; results.* go to --out
        self.logs.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false",
                                 "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
        self.env.pop("WANDB_API_KEY", None)
        self.pin = {}  # GPU -> its CPU cores, for side-by-side runs (taskset)
        self.model_overrides = ["model=polyglot_ko_1_3b_random", f"model.max_length={args.seq}"]
        if args.tiny:
            self.model_overrides += [f"model.arch_config.{k}={v}" for k, v in TINY_SHAPE.items()]
        if args.cache:
            self.model_overrides.append(f"cache_dir={args.cache}")
        self.lock = threading.Lock()

    def overrides(self, mode: str) -> list[str]:
        a = self.args
        return [*self.model_overrides, f"quant={mode}", f"quant.compute_dtype={a.dtype}", f"device={a.device}",
                "data=facts", f"data.path={self.data}", "data.eval_size=0", f"train.max_steps={a.steps}",
                f"train.batch_size={a.batch}", "logger=wandb", "logger.mode=offline",
                f"train.generation.max_new_tokens={a.gen_tokens}", f"train.generation.fast={not a.no_fast}",
                # the bare script syncs at each step end too; OwnTime times dropsweep's own callbacks
                "train.profile=true", "train.callbacks=[{_target_:benchmarks.owntime.OwnTime}]"]

    def prepare(self) -> None:
        """The checkpoint (built once, as dropsweep builds it), the data file, and the settings both runs share."""
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf
        from transformers import AutoTokenizer

        from src.models import checkpoint_path, lora_targets

        self.data = self.work / f"rows-{self.args.seq}.jsonl"
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=self.overrides("nf4"))
        started = time.perf_counter()
        self.checkpoint = checkpoint_path(cfg)
        print(f"checkpoint {self.checkpoint} ({time.perf_counter() - started:.1f} s)", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
        if not self.data.exists():
            make_data(self.data, tokenizer, self.args.seq)
        train = cfg.train
        if train.warmup_steps or train.weight_decay or train.grad_accum != 1 or train.gradient_checkpointing:
            raise SystemExit("bench-gpu's bare script mirrors warmup 0, weight decay 0, grad_accum 1 and no "
                             "gradient checkpointing; reset those train.* settings.")
        self.arch = OmegaConf.to_container(cfg.model.arch_config)
        self.bare_settings = ["--lr", str(train.lr), "--scheduler", train.scheduler, "--optim", train.optimizer,
                              "--seed", str(train.seed), "--max-grad-norm", str(train.max_grad_norm),
                              "--lora-r", str(cfg.lora.r), "--lora-alpha", str(cfg.lora.alpha),
                              "--lora-dropout", str(cfg.lora.dropout), "--targets", ",".join(lora_targets(cfg))]
        self.prompt = cfg.train.generation.prompt

    def run_dropsweep(self, mode: str, rep: int, env: dict, name: str = "dropsweep") -> dict:
        run_dir = self.work / "runs" / mode / f"{name}-r{rep}"
        # one trial answer per mode; none in lockstep, where it would share the GPU with the other's steps
        extra = [] if rep == 0 and not self.args.lockstep else ["train.generation.max_new_tokens=0"]
        if name == "dropsweep_disk":
            extra.append("logger=disk")
        ok, error = run_logged([*self.launcher(env), "-m", "src.run", *self.overrides(mode), *extra,
                                f"hydra.run.dir={run_dir}"],
                               self.logs / f"{mode}-{name}-r{rep}.log", env, self.args.timeout)
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                if line.strip()] if (run_dir / "metrics.jsonl").exists() else []
        rows = [r for r in rows if "loss" in r]
        return {"ok": ok and summary.get("status") == "completed", "error": error or summary.get("error"),
                "step_times": [r.get("step_time_s") for r in rows],
                "step_periods": self.held(env) or [r.get("step_period_s") for r in rows],
                "losses": [r["loss"] for r in rows], "peak_mem_gb": summary.get("train_peak_mem_gb"),
                "summary": summary}

    def run_bare(self, mode: str, rep: int, env: dict, name: str = "bare") -> dict:
        a = self.args
        result_path = self.work / "runs" / mode / f"{name}-r{rep}.json"
        result_path.parent.mkdir(parents=True, exist_ok=True)
        result_path.unlink(missing_ok=True)
        ok, error = run_logged(
            [*self.launcher(env), str(PROJECT_ROOT / "benchmarks/bare_trainer.py"), "--model", self.checkpoint,
             "--data", str(self.data), "--quant", mode, "--compute-dtype", a.dtype, "--steps", str(a.steps),
             "--batch", str(a.batch), "--seq", str(a.seq), "--device", a.device, *self.bare_settings,
             "--json", str(result_path)],
            self.logs / f"{mode}-{name}-r{rep}.log", env, self.args.timeout)
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        return {"ok": ok and bool(result), "error": error, "step_times": result.get("step_times", []),
                "step_periods": self.held(env) or result.get("step_periods", []), "losses": result.get("losses", []),
                "peak_mem_gb": result.get("peak_mem_gb"), "result": result, "summary": {}}

    @staticmethod
    def launcher(env: dict) -> list[str]:
        return [sys.executable, "-m", "benchmarks.lockstep"] if env.get(lockstep.ENV_SOCKET) else [sys.executable]

    @staticmethod
    def held(env: dict) -> list[float] | None:
        """In lockstep, how long each step held the GPU: the period, timed with the other run idle."""
        path = env.get(lockstep.ENV_OUT)
        if not path or not os.path.exists(path):
            return None
        return json.loads(Path(path).read_text())["held_s"] or None

    def in_lockstep(self, runners: list[tuple], mode: str, rep: int, env: dict) -> dict:
        """All of a repeat's runs at once on one GPU, taking turns step by step (benchmarks/lockstep.py)."""
        sock = str(self.work / f"lockstep-{os.getpid()}-{mode}-{rep}.sock")
        referee = lockstep.Referee(sock, expected=len(runners))

        def one(name, runner):
            out = self.work / "runs" / mode / f"{name}-r{rep}.turns.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            try:
                return runner(rep, env | {lockstep.ENV_SOCKET: sock, lockstep.ENV_OUT: str(out)})
            finally:
                referee.finished()

        try:
            with ThreadPoolExecutor(max_workers=len(runners)) as pool:
                futures = {name: pool.submit(one, name, runner) for name, runner in runners}
                return {name: future.result() for name, future in futures.items()}
        finally:
            referee.close()

    def measure(self, mode: str, index: int, gpu: str | None = None) -> tuple[dict, dict]:
        """--repeats back-to-back pairs (plus the W&B-off run for --ablate modes) on one GPU; who goes
        first alternates from repeat to repeat, so drift (clocks, heat, caches) falls on both.
        Returns the mode's row and its first repeat's runs (their summaries name the card and versions)."""
        env = self.env | ({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})
        if gpu in self.pin:
            cores = sum(len(r) for r in _cpu_ranges(self.pin[gpu]))
            env |= {"DROPSWEEP_BENCH_CPUS": self.pin[gpu], "OMP_NUM_THREADS": str(cores)}
        print(f"[{mode}]{f' on GPU {gpu}' if gpu is not None else ''}", flush=True)
        runners = [("dropsweep", lambda rep, env: self.run_dropsweep(mode, rep, env)),
                   ("bare", lambda rep, env: self.run_bare(mode, rep, env))]
        if self.args.aa:  # A/A control: the bare script against a second copy of itself, in dropsweep's place
            runners[0] = ("dropsweep", lambda rep, env: self.run_bare(mode, rep, env, "bare_again"))
        if mode in self.args.ablate:
            runners.append(("dropsweep_disk", lambda rep, env: self.run_dropsweep(mode, rep, env, "dropsweep_disk")))
        repeats = []
        for rep in range(self.args.repeats):
            order = runners if (index + rep) % 2 == 0 else runners[::-1]
            if self.args.lockstep:  # the order is who is launched first; the first to reach training gets the first turn
                repeats.append({"first": order[0][0]} | self.in_lockstep(order, mode, rep, env))
                continue
            repeats.append({"first": order[0][0]} | {name: runner(rep, env) for name, runner in order})
        return self.row(mode, repeats), repeats[0]

    def pooled(self, runs: list[dict]) -> dict:
        """One side (dropsweep or bare) over the repeats: steps after warm-up pooled, the first repeat's curve."""
        a = self.args
        tokens_per_step = a.batch * a.seq
        steps = [t for run in runs for t in run["step_times"][a.warmup:] if t is not None]
        periods = [t for run in runs for t in run["step_periods"][a.warmup:] if t is not None]
        step = statistics.median(steps) if steps else None
        losses = runs[0]["losses"]
        peak = self.peak_tflops_of(runs)
        flops_per_step = training_flops_per_token(self.arch, a.seq) * tokens_per_step
        side = {
            "p10_step_s": statistics.quantiles(steps, n=10)[0] if len(steps) >= 2 else step,
            "ok": all(run["ok"] for run in runs), "error": next((run["error"] for run in runs if run["error"]), None),
            "step_s": step, "period_s": statistics.median(periods) if periods else None,
            "tokens_per_s": tokens_per_step / step if step else None,
            "mfu": flops_per_step / step / (peak * 1e12) if step and peak else None,
            "peak_mem_gb": max((run["peak_mem_gb"] for run in runs if run["peak_mem_gb"]), default=None),
            "loss_first": statistics.mean(losses[:3]) if losses else None,
            "loss_last": statistics.mean(losses[-3:]) if losses else None,
            "step_times": [run["step_times"] for run in runs], "losses": losses}
        side["loss_falls"] = all(run["losses"] and statistics.mean(run["losses"][-3:]) < statistics.mean(run["losses"][:3])
                                 for run in runs)
        return side

    def peak_tflops_of(self, runs: list[dict]) -> float | None:
        if self.args.device != "cuda":
            return None
        names = [run.get("summary", {}).get("device_name") or run.get("result", {}).get("device_name") for run in runs]
        return next((peak_tflops(n) for n in names if n), None)

    def row(self, mode: str, repeats: list[dict]) -> dict:
        a = self.args
        row = {"mode": mode}
        names = [n for n in ("dropsweep", "bare", "dropsweep_disk") if n in repeats[0]]
        for name in names:
            row[name] = self.pooled([rep[name] for rep in repeats])
        row["repeats"] = []
        for rep in repeats:
            medians = {name: (median_after(rep[name]["step_times"], a.warmup),
                              median_after(rep[name]["step_periods"], a.warmup)) for name in names}
            entry = {"first": rep["first"], "step_s": {n: m[0] for n, m in medians.items()},
                     "ratio_step": ratio(medians["dropsweep"][0], medians["bare"][0]),
                     "ratio_period": ratio(medians["dropsweep"][1], medians["bare"][1])}
            if "dropsweep_disk" in names:
                entry["ratio_step_disk"] = ratio(medians["dropsweep_disk"][0], medians["bare"][0])
                entry["ratio_period_disk"] = ratio(medians["dropsweep_disk"][1], medians["bare"][1])
            row["repeats"].append(entry)
        for key in ("ratio_step", "ratio_period", "ratio_step_disk", "ratio_period_disk"):
            values = [r[key] for r in row["repeats"] if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
            row[key + "_range"] = [min(values), max(values)] if values else None
        # the floor: interference (a neighbour's compile, clocks) only ever adds time, so the fastest
        # tenth of each side's pooled steps is what each costs undisturbed
        row["ratio_p10"] = ratio(row["dropsweep"]["p10_step_s"], row["bare"]["p10_step_s"])
        if "dropsweep_disk" in names:
            row["ratio_p10_disk"] = ratio(row["dropsweep_disk"]["p10_step_s"], row["bare"]["p10_step_s"])
        own = [rep["dropsweep"]["summary"].get("own_ms_per_step") for rep in repeats]
        own = [v for v in own if v is not None]
        row["own_ms_per_step"] = statistics.median(own) if own else None  # time in dropsweep's callbacks
        row["own_fraction"] = (row["own_ms_per_step"] / 1000 / row["bare"]["step_s"]
                               if own and row["bare"]["step_s"] else None)
        summary = repeats[0]["dropsweep"]["summary"]
        row["detector_events"] = len(summary.get("events", []))
        row["wandb_mode"] = (summary.get("wandb") or {}).get("mode")
        row["gen"] = {k.removeprefix("gen_"): v for k, v in summary.items() if k.startswith("gen_")}
        row["device_name"] = summary.get("device_name")
        return row

    def meta(self, rows: list[dict]) -> dict:
        a = self.args
        first = next((summary for summary in self.summaries if summary), {})
        bare = self.first_bare or {}
        card = first.get("device_name") or bare.get("device_name")
        return {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "card": card, "peak_bf16_tflops": peak_tflops(card or ""),
            "versions": (first.get("versions") or bare.get("versions") or {})  # the bare script's under --aa
            | {"bitsandbytes": first.get("bnb_version") or (bare.get("versions") or {}).get("bitsandbytes"),
               "cuda": bare.get("cuda")},
            "git": _git_describe(),
            "model": "polyglot_ko_1_3b_random" + (" (tiny shape)" if a.tiny else ""), "arch": self.arch,
            "settings": {"steps": a.steps, "warmup": a.warmup, "batch": a.batch, "seq": a.seq, "dtype": a.dtype,
                         "device": a.device, "gen_new_tokens": a.gen_tokens, "prompt": self.prompt,
                         "repeats": a.repeats, "lockstep": a.lockstep, "aa": a.aa, "bare_settings": " ".join(self.bare_settings)},
            "gpus_side_by_side": a.gpus,
            "flop_formula": FLOP_FORMULA,
            "flops_per_token": training_flops_per_token(self.arch, a.seq),
            "modes_completed": sum(1 for r in rows if r["dropsweep"]["ok"]),
        }

    def earlier_rows(self) -> list[dict]:
        """Rows of other modes from an earlier call into the same --out with the same settings: a run
        split over two calls (--modes none,nf4,nf4_dq then --modes fp4,fp4_dq,int8) makes one table."""
        path = self.out / "results.json"
        if not path.exists():
            return []
        earlier = json.loads(path.read_text())
        if earlier["meta"]["settings"] != self.meta([])["settings"] or earlier["meta"]["arch"] != self.arch:
            return []
        return [r for r in earlier["rows"] if r["mode"] not in self.args.modes and "repeats" in r]

    def main(self) -> list[dict]:
        started = time.perf_counter()
        self.prepare()
        self.summaries, self.first_bare = [], None
        kept = self.earlier_rows()
        rows = []
        gpus = [str(g) for g in range(self.args.gpus)] if self.args.gpus > 1 else [None]
        if self.args.gpus > 1 and shutil.which("taskset"):
            self.pin = cpu_shares(gpus)
            print("CPU cores per GPU: " + "; ".join(f"GPU {g}: {c}" for g, c in self.pin.items()), flush=True)
        free = list(gpus)

        def task(index: int, mode: str) -> None:
            with self.lock:
                gpu = free.pop(0)
            try:
                row, first = self.measure(mode, index, gpu)
            finally:
                with self.lock:
                    free.append(gpu)
            with self.lock:
                rows.append(row)
                self.summaries.append(first["dropsweep"]["summary"])
                self.first_bare = self.first_bare or first["bare"]["result"] or None
                so_far = sorted(kept + rows, key=lambda r: MODES.index(r["mode"]))
                write_results(self.out, so_far, self.meta(so_far) | {"wall_s": time.perf_counter() - started})

        # the modes with an extra (ablation) run first, so the longest queue starts earliest
        order = sorted(enumerate(self.args.modes), key=lambda im: im[1] not in self.args.ablate)
        with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
            for future in [pool.submit(task, i, mode) for i, mode in order]:
                future.result()
        rows_so_far = sorted(kept + rows, key=lambda r: MODES.index(r["mode"]))
        print("\n" + markdown_table(rows_so_far))
        print(f"\nresults: {self.out / 'results.md'}, {self.out / 'results.json'} "
              f"({time.perf_counter() - started:.0f} s)")
        return rows_so_far


def _git_describe() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{commit}{' (dirty)' if dirty else ''}" or None
    except (OSError, subprocess.SubprocessError):
        return None


def _f(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _ratio_cell(row: dict, key: str) -> str:
    value, spread = row.get(key), row.get(key + "_range")
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" ({spread[0]:.3f}–{spread[1]:.3f})" if spread and spread[0] != spread[1] else "")


def markdown_table(rows: list[dict]) -> str:
    head = ("| mode | step s dropsweep | step s bare | ratio (range) | period ratio (range) | p10 ratio "
            "| ratio, W&B off (p10) | own ms/step (% of step) "
            "| tokens/s | peak GiB (ds / bare) | MFU | loss first → last | plain gen tok/s (s/answer) "
            "| fast gen tok/s (s/answer) | speedup | same tokens |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        d, b, g = r["dropsweep"], r["bare"], r["gen"]
        if not d["ok"] and not b["ok"]:
            lines.append(f"| {r['mode']} | failed: {d['error'] or b['error']} |" + " |" * 14)
            continue
        same = g.get("fast_same_tokens")
        same = "—" if same is None else ("yes" if same else f"no (from token {g.get('fast_first_divergence')})")
        lines.append(
            f"| {r['mode']} | {_f(d['step_s'], '.4f')} | {_f(b['step_s'], '.4f')} | {_ratio_cell(r, 'ratio_step')} "
            f"| {_ratio_cell(r, 'ratio_period')} | {_f(r.get('ratio_p10'), '.3f')} "
            f"| {_ratio_cell(r, 'ratio_step_disk')} ({_f(r.get('ratio_p10_disk'), '.3f')}) "
            f"| {_f(r.get('own_ms_per_step'), '.3f')} ({_f(r.get('own_fraction'), '.2%')}) "
            f"| {_f(d['tokens_per_s'], ',.0f')} "
            f"| {_f(d['peak_mem_gb'], '.2f')} / {_f(b['peak_mem_gb'], '.2f')} | {_f(d['mfu'], '.1%')} "
            f"| {_f(d['loss_first'], '.3f')} → {_f(d['loss_last'], '.3f')} "
            f"| {_f(g.get('tokens_per_s'), '.1f')} ({_f(g.get('s_per_answer'), '.2f')}) "
            f"| {_f(g.get('fast_tokens_per_s'), '.1f')} ({_f(g.get('fast_s_per_answer'), '.2f')}) "
            f"| {_f(g.get('fast_speedup'), '.1f')}x | {same} |")
    return "\n".join(lines)


def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
    s = meta["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    speedups = [r["gen"].get("fast_speedup") for r in rows if r["gen"].get("fast_speedup")]
    worst = max(rows, key=lambda r: r["ratio_step"] or 0, default=None)
    worst_period = max((r["ratio_period"] or 0 for r in rows), default=0)
    checks = [
        f"- dropsweep / bare step time (median of {s['repeats']} interleaved repeats), worst mode: "
        + (f"{worst['mode']} {_ratio_cell(worst, 'ratio_step')}" if worst else "—")
        + f" (begin → end); {worst_period:.3f} end to end, with logging, detector and W&B (target <= 1.02)",
        f"- the same at the floor (10th percentile of each side's pooled steps), worst mode: "
        f"{max((r.get('ratio_p10') or 0 for r in rows), default=0):.3f}",
        f"- time spent in dropsweep's own callbacks (metrics stream, disk, W&B hand-off, detector), worst mode: "
        f"{max((r.get('own_fraction') or 0 for r in rows), default=0):.2%} of the bare step",
        f"- loss fell in every mode and run: {all(r['dropsweep']['loss_falls'] and r['bare']['loss_falls'] for r in rows)}",
        f"- fast generation speed-up over plain `generate`: "
        + (f"{min(speedups):.1f}x to {max(speedups):.1f}x (target >= 5x)" if speedups else "not measured"),
    ]
    errors = [f"- {r['mode']}: {name}: {r[name]['error']}" for r in rows
              for name in ("dropsweep", "bare", "dropsweep_disk") if name in r and not r[name]["ok"]]
    failures = [f"- {r['mode']}: fast path compile error: {r['gen']['fast_compile_error']}" for r in rows
                if r["gen"].get("fast_compile_error")]
    side = (f"; the modes ran side by side on {meta['gpus_side_by_side']} GPUs, each mode's runs on one GPU"
            if meta.get("gpus_side_by_side", 1) > 1 else "")
    control = ("\n- A/A CONTROL: the dropsweep columns are a second copy of the bare script, so every ratio here is "
               "the measurement's own noise" if s.get("aa") else "")
    pairing = ("at once on one GPU in lockstep, taking turns step by step (benchmarks/lockstep.py); the period is "
               "the time a step held the GPU" if s.get("lockstep") else "back to back (who goes first alternates)")
    text = f"""# GPU benchmark: dropsweep vs bare HF Trainer + peft + bitsandbytes

- card: {meta['card']} (dense bf16 peak {_f(meta['peak_bf16_tflops'], '.0f')} TFLOP/s), date {meta['date']}
- versions: {versions}; dropsweep {meta['git']}
- model: {meta['model']}: {json.dumps(meta['arch'])}
- per mode: {s['repeats']} repeats of dropsweep and the bare script {pairing}{side};
  each run {s['steps']} steps, its median step after the first {s['warmup']}; the ratio is the median of the
  per-repeat ratios, their range in brackets; batch {s['batch']} x {s['seq']} tokens, compute {s['dtype']}, LoRA and
  optimizer as `{s['bare_settings']}`; dropsweep with W&B offline, the detector and the metrics stream
  ("W&B off": the same with logger=disk, where measured); p10 ratio: the 10th percentiles of each side's
  pooled steps, the undisturbed cost, since interference only adds time; own ms/step: wall time inside
  dropsweep's callbacks on the training thread (summary.json's own_ms_per_step), against the bare step
- generation (the first repeat only): batch 1, greedy, {s['gen_new_tokens']} new tokens; plain = `generate` on the
  LoRA-wrapped model as training leaves it; fast = src/generate.py (adapter merged into a dense dequantized bf16
  copy, static KV cache, decoding compiled with mode reduce-overhead); warm-up and compilation excluded
  (set-up time in results.json){control}
- {meta['flop_formula']} ({meta['flops_per_token'] / 1e9:.2f} GFLOP per token here)

{markdown_table(rows)}

{chr(10).join(checks)}
{chr(10).join(errors + failures)}
"""
    (out / "results.md").write_text(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the median")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--dtype", default="bfloat16", help="quant.compute_dtype for every mode")
    parser.add_argument("--gen-tokens", type=int, default=64, help="new tokens per generated answer")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast generation path")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="experiments/gpu", help="results.md, results.json and logs/")
    parser.add_argument("--work", default="/tmp/dropsweep-bench-gpu", help="data file and run dirs")
    parser.add_argument("--cache", default=None, help="cache_dir for the built checkpoint (default dropsweep's)")
    parser.add_argument("--timeout", type=int, default=420, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3, help="dropsweep/bare pairs per mode, interleaved")
    parser.add_argument("--gpus", type=int, default=1, help="run this many modes side by side, one GPU each")
    parser.add_argument("--ablate", default="", help="modes that also run dropsweep with logger=disk (no W&B)")
    parser.add_argument("--aa", action="store_true",
                        help="A/A control: run the bare script against itself, to show the noise of the ratio")
    parser.add_argument("--lockstep", action="store_true",
                        help="run each repeat's runs at once on one GPU, taking turns step by step (no generation)")
    parser.add_argument("--tiny", action="store_true",
                        help="dry run on the CPU: tiny shape, float32, few steps (tests the pipeline, not speed)")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.ablate = [m.strip() for m in args.ablate.split(",") if m.strip()]
    unknown = [m for m in args.modes + args.ablate if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {', '.join(unknown)}; use some of {','.join(MODES)}")
    if args.tiny:
        args.device, args.dtype = "cpu", "float32"
        args.steps, args.warmup, args.batch, args.seq, args.gen_tokens = 6, 2, 2, 64, 8
    if args.repeats < 1 or args.gpus < 1:
        parser.error("--repeats and --gpus must be at least 1")
    return args


def main(argv=None) -> None:
    Bench(parse_args(argv)).main()


if __name__ == "__main__":
    main()
