"""`python -m src.generate RUN_DIR "prompt"`: the answer of a finished run's model, by the fast path."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .fast import FastPath
from .plain import first_divergence, plain_generate
from .weights import WEIGHTS


def load_run(run_dir: Path, device: str | None = None):
    """The model of a finished run: its base, quantized as in training, with the saved adapter."""
    from omegaconf import OmegaConf
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    from ..models import load_model_and_tokenizer
    from ..versions import resolve_device

    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise SystemExit(f"{run_dir} has no adapter/ (runs save it when training ends); "
                         f"give the run directory of a completed job.")
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    device = resolve_device(device or cfg.device)
    model, tokenizer = load_model_and_tokenizer(cfg, device)  # the same LoRA shape, freshly initialised
    set_peft_model_state_dict(model, load_peft_weights(str(adapter), device=device))
    return model, tokenizer, cfg


def _strip(out: dict) -> dict:
    return {k: v for k, v in out.items() if k != "token_ids"}


def main(argv=None) -> None:
    from ..data import PROMPT_TEMPLATE

    parser = argparse.ArgumentParser(description="Generate with the model a run fine-tuned (fast path by default).")
    parser.add_argument("run_dir", type=Path, help="a run directory (with adapter/ and .hydra/)")
    parser.add_argument("prompt", help="the question; wrapped in the training template unless it already is")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's train.generation")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: the run's device setting)")
    parser.add_argument("--weights", default="auto", choices=["auto", *WEIGHTS],
                        help="auto: for a base trained in 4-bit, the base as trained with the adapter beside it, "
                             "compiled (merged bf16 instead for models under 4B weights where it fits); for others, "
                             "merged bf16 where it fits in the free GPU memory, else merged int4, else the base "
                             "(default auto)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="choose the weights as if the GPU had this many GB in all (e.g. 24)")
    parser.add_argument("--compare", action="store_true", help="also run the plain path first; compare speed and tokens")
    parser.add_argument("--no-compile", action="store_true", help="static cache without CUDA graphs or torch.compile")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    model, tokenizer, cfg = load_run(args.run_dir, args.device)
    prompt = args.prompt
    if "###" not in prompt:
        prompt = PROMPT_TEMPLATE.format(instruction=prompt.strip(), output="").rstrip()
    n = args.max_new_tokens or int(cfg.train.generation.max_new_tokens)
    plain = plain_generate(model, tokenizer, prompt, n) if args.compare else None
    positions = n + len(tokenizer(prompt)["input_ids"])
    fast_path = FastPath(model, tokenizer, weights=args.weights, compile=False if args.no_compile else None,
                         in_place=True, memory_gb=args.memory_gb, positions=positions)
    del model  # used up by the conversion
    fast = fast_path.answer(prompt, n)
    fast["setup_s"] = fast_path.convert_s + fast["warmup_s"]
    out = {"fast": _strip(fast)}
    if plain:
        out["plain"] = _strip(plain)
        out["first_divergence"] = first_divergence(plain["token_ids"], fast["token_ids"])
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return
    print(fast["answer"])
    print(f"\n[{fast['path']}: {fast['new_tokens']} tokens in {fast['seconds']:.2f} s, "
          f"{fast['tokens_per_s']:.1f} tokens/s, first token after {fast['ttft_s']:.2f} s; "
          f"set-up {fast['setup_s']:.1f} s]")
    print(f"[weights {fast['weights']}: {fast['reason']}]")
    if "compile_error" in fast:
        print(f"[fell back: {fast['compile_error']}]")
    if plain:
        same = "same tokens" if out["first_divergence"] is None else f"first divergence at token {out['first_divergence']}"
        print(f"[plain generate: {plain['tokens_per_s']:.1f} tokens/s, {plain['seconds']:.2f} s; "
              f"fast is {fast['tokens_per_s'] / plain['tokens_per_s']:.1f}x; {same}]")
