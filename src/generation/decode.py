"""Greedy decoding over a static KV cache; on a GPU every step after the first is one replay of a CUDA graph.

The graph holds a whole decoding step (the model's forward for one token, the argmax, the write of the token
into the answer and the move to the next position), captured once per model and replayed for every later
token and every later answer: no Python and no kernel launches per token. With `compiled`, the step is first
compiled by inductor (the 4-bit base, unrolled, keeps bitsandbytes' own kernel and gets the rest fused), then
recorded; without it, the graph records the eager kernels, for weights the compiler traces slowly (int4). The
prompt's forward (prefill) runs uncompiled, so prompts of any length share one graph.
"""
from __future__ import annotations

import inspect
import time

import torch

STOP_CHECK_EVERY = 16  # tokens between looks for the end-of-text token (each look waits for the GPU)


class StaticDecoder:
    def __init__(self, model, max_cache_len: int, graphs: bool, compiled: bool = False):
        from transformers import StaticCache

        self.model = model
        self.max_cache_len = max_cache_len
        self.graphs = graphs and model.device.type == "cuda"
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
        params = inspect.signature(model.forward).parameters
        self.takes_cache_position = "cache_position" in params  # transformers before 5.2x
        self.takes_logits_to_keep = "logits_to_keep" in params
        device = model.device
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=device)
        self.count = torch.zeros((1,), dtype=torch.long, device=device)
        self.out = torch.zeros((max_cache_len,), dtype=torch.long, device=device)
        self.positions = torch.arange(max_cache_len, device=device)
        self.banned = None  # token ids held back (the end-of-text token for a full-length answer)
        self.banned_key = ()
        self.graph = None
        self.bool_mask = model.config._attn_implementation != "eager"
        # compiled: inductor fuses the step's small kernels; the first step compiles, the graph then records it
        self.step = torch.compile(self._step, dynamic=False) if compiled else self._step

    def _forward(self, input_ids, positions, mask):
        kwargs = dict(input_ids=input_ids, position_ids=positions.view(1, -1), attention_mask=mask,
                      past_key_values=self.cache, use_cache=True)
        if self.takes_cache_position:
            kwargs["cache_position"] = positions
        if self.takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        logits = self.model(**kwargs).logits[:, -1, :]
        if self.banned is not None:
            logits = logits.index_fill(-1, self.banned, float("-inf"))
        return logits.argmax(-1)

    def _step(self) -> None:
        """One token: attend to every position up to this one, write the next token, move on."""
        visible = (self.positions <= self.pos).view(1, 1, 1, -1)
        if not self.bool_mask:
            visible = torch.zeros(visible.shape, dtype=self.model.dtype, device=visible.device).masked_fill(
                ~visible, torch.finfo(self.model.dtype).min)
        token = self._forward(self.token, self.pos, visible)
        self.out.index_copy_(0, self.count, token)
        self.token.copy_(token.view(1, 1))
        self.pos.add_(1)
        self.count.add_(1)

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # one real step first: kernels compiled, chosen and loaded before the capture
            self.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, stop_ids=(), banned_ids=()) -> tuple[list[int], float]:
        """Greedy tokens after the prompt `input_ids` (1 x length), and the seconds to the first one."""
        prompt_len = input_ids.shape[1]
        if prompt_len + max_new_tokens > self.max_cache_len:
            raise ValueError(f"prompt ({prompt_len} tokens) and answer ({max_new_tokens}) exceed the static "
                             f"cache of {self.max_cache_len} positions")
        key = tuple(sorted(set(banned_ids)))
        if key != self.banned_key:  # the graph reads the banned ids from the tensor it was captured with
            self.graph = None
            self.banned_key = key
            self.banned = torch.tensor(key, dtype=torch.long, device=input_ids.device) if key else None
        started = time.perf_counter()
        self.cache.reset()
        first = self._forward(input_ids, torch.arange(prompt_len, device=input_ids.device), None)
        self.token.copy_(first.view(1, 1))
        self.out[0] = first[0]
        self.pos.fill_(prompt_len)
        self.count.fill_(1)
        first_id = int(first[0])  # waits for the prefill: the time to the first token
        ttft_s = time.perf_counter() - started
        stop = set(stop_ids)
        done = 1
        if first_id in stop:
            return [first_id], ttft_s
        if self.graphs and self.graph is None and done < max_new_tokens:
            self._capture()
            done += 1
        while done < max_new_tokens:
            chunk = min(STOP_CHECK_EVERY, max_new_tokens - done)
            for _ in range(chunk):
                self.graph.replay() if self.graph is not None else self.step()
            done += chunk
            if stop and stop.intersection(self.out[:done].tolist()):
                break
        tokens = self.out[:done].tolist()
        for i, token in enumerate(tokens):
            if token in stop:
                return tokens[:i + 1], ttft_s
        return tokens, ttft_s
