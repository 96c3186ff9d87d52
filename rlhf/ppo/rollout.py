"""Rollouts: sample responses to a batch of prompts, then score them with one forward pass per model.

`generate` is the only function that samples; `collect` runs it inside the caller's `generation_weights` context (under
ZeRO-3, one that gathers the parameters once per rollout rather than once per generated token).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.demos import check_messages
from rlhf.errors import DataError
from rlhf.generation import format_prompt
from rlhf.io import Row, read_rows
from rlhf.ppo import core


@dataclass
class Prompts:
    prompts: list[Any]  # as in the data: a string (one user turn) or a message list
    texts: list[str]  # through the chat template, with the generation prompt
    too_long: int  # rows dropped for being longer than max_prompt_length tokens


def read_prompts(path: str, tokenizer, max_prompt_length: int) -> Prompts:
    """Prompts from `{"prompt"}` rows (string or messages) or `{"messages"}` rows ending before the assistant's turn."""
    prompts, texts, too_long = [], [], 0
    for row in read_rows(path):
        prompt = _prompt(row)
        text = format_prompt(tokenizer, prompt)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > max_prompt_length:
            too_long += 1
            continue
        prompts.append(prompt)
        texts.append(text)
    if not prompts:
        raise DataError(path, f"no usable prompts ({too_long} longer than max_prompt_length={max_prompt_length})")
    return Prompts(prompts, texts, too_long)


def _prompt(row: Row) -> Any:
    field = "prompt" if "prompt" in row.data else "messages" if "messages" in row.data else None
    if field is None:
        raise DataError(row.where, f"no 'prompt' or 'messages' field (found: {', '.join(sorted(row.data)) or 'none'})",
                        field="prompt")
    value = row.data[field]
    if isinstance(value, str) and field == "prompt":
        if not value.strip():
            raise DataError(row.where, "empty prompt", field=field)
        return value
    messages = check_messages(value, row.where, field, need_assistant=False)
    if messages[-1]["role"] == "assistant":
        raise DataError(row.where, "the last message is the assistant's; a prompt ends before the assistant's turn",
                        field=field)
    return messages


@dataclass
class Rollout:
    """One batch of sampled responses with everything PPO needs about them (B rows, P prompt + R response tokens)."""

    prompts: list[Any]
    responses: list[str]
    input_ids: torch.Tensor  # [B, P + R] left-padded prompt, then the response
    attention_mask: torch.Tensor  # [B, P + R] 0 on prompt padding and after each response's EOS
    prompt_length: int  # P
    mask: torch.Tensor  # [B, R] 1 on response tokens up to and including the first EOS
    ended_with_eos: torch.Tensor  # [B] bool
    logprobs: torch.Tensor  # [B, R] policy log-probs at the sampling temperature
    ref_logprobs: torch.Tensor  # [B, R] reference (SFT) log-probs at the sampling temperature
    values: torch.Tensor  # [B, R]
    entropy: torch.Tensor  # [B, R] of the policy's sampling distribution
    scores: torch.Tensor  # [B] the reward model's scores, before any penalty or normalisation

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length:]


def generate(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens: int, temperature: float, top_p: float):
    """Sampled continuations (KV cache, stop at EOS) from the policy: [B, P + R] token ids."""
    return model.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens, do_sample=True,
        temperature=temperature, top_p=top_p, top_k=0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, R]: 1 up to and including the first EOS, whether each row has an EOS [B])."""
    is_eos = response_ids == eos_token_id
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS tokens strictly before t
    return (eos_before == 0).float(), is_eos.any(dim=1)


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Response texts without EOS and padding."""
    lengths = mask.sum(1).long().tolist()
    rows = [ids[:n] for ids, n in zip(response_ids.tolist(), lengths)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


@torch.no_grad()
def score(model, reward, rollout_prompts: list, responses: list[str], input_ids, attention_mask, prompt_length: int,
          mask, temperature: float, chunk: int) -> dict[str, torch.Tensor]:
    """One pass per model over prompt + response, `chunk` rows at a time: log-probs, reference log-probs,
    values, entropy and reward scores."""
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logprobs", "ref_logprobs", "values", "entropy", "scores")}
    for start in range(0, len(input_ids), chunk):
        rows = slice(start, start + chunk)
        ids, attn = input_ids[rows], attention_mask[rows]
        tokens = ids[:, prompt_length:]
        logits, values = model(ids, attn, prompt_length)
        parts["logprobs"].append(core.logprobs_from_logits(logits, tokens, temperature))
        parts["entropy"].append(core.entropy_from_logits(logits, temperature))
        parts["values"].append(values.float() * mask[rows])
        del logits
        ref_logits = model.reference_logits(ids, attn, prompt_length)
        parts["ref_logprobs"].append(core.logprobs_from_logits(ref_logits, tokens, temperature))
        del ref_logits
        parts["scores"].append(reward(rollout_prompts[rows], responses[rows]).to(ids.device))
    out = {k: torch.cat(v) for k, v in parts.items()}
    for name in ("logprobs", "ref_logprobs"):
        out[name] = out[name] * mask
    return out


def collect(model, reward, tokenizer, prompts: list, texts: list[str], max_new_tokens: int, temperature: float,
            top_p: float, chunk: int, device, generation_weights: AbstractContextManager
            ) -> tuple[Rollout, dict[str, float]]:
    """Sample responses to `texts` (inside `generation_weights`), then score them; returns the rollout and its
    timings in seconds."""
    started = time.perf_counter()
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with generation_weights:
        sequences = generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens,
                             temperature, top_p)
    prompt_length = batch["input_ids"].shape[1]
    mask, ended = response_mask(sequences[:, prompt_length:], tokenizer.eos_token_id)
    responses = decode_responses(tokenizer, sequences[:, prompt_length:], mask)  # .tolist() waits for the device
    generated = time.perf_counter()
    attention_mask = torch.cat([batch["attention_mask"], mask.long()], dim=1)
    scored = score(model, reward, prompts, responses, sequences, attention_mask, prompt_length, mask, temperature,
                   chunk)
    rollout = Rollout(prompts, responses, sequences, attention_mask, prompt_length, mask, ended, **scored)
    timings = {"generation_s": generated - started, "scoring_s": time.perf_counter() - generated}
    return rollout, timings
