"""Rollouts: `sample` responses (recording the policy's log-probs as they are sampled), then `score` them with one
forward pass per remaining model (reference, value adapter, reward; below float32 the policy too)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from rlhf.errors import DataError
from rlhf.chat import format_prompt, prompt_of_row
from rlhf.datafiles import read_rows
from rlhf.models import final_states
from rlhf.ppo import core
from rlhf.ppo.model_set import POLICY, VALUE, reads_reward_states
from rlhf.sampling import generate_ids

# `generate` is the only function that samples (through rlhf.sampling.generate_ids, as every command does); `sample`
# runs it inside the caller's `generation_weights` context
# (under ZeRO-3, one that gathers the parameters once per rollout rather than once per generated token).


@dataclass
class Prompts:
    prompts: list[Any]  # as in the data: a string (one user turn) or a message list
    texts: list[str]  # through the chat template, with the generation prompt
    too_long: int  # rows dropped for being longer than max_prompt_length tokens


def read_prompts(path: str, tokenizer, max_prompt_length: int) -> Prompts:
    """Prompts from `{"prompt"}` rows (string or messages) or `{"messages"}` rows ending before the assistant's turn."""
    prompts, texts, too_long = [], [], 0
    for row in read_rows(path):
        prompt = prompt_of_row(row)
        text = format_prompt(tokenizer, prompt)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) > max_prompt_length:
            too_long += 1
            continue
        prompts.append(prompt)
        texts.append(text)
    if not prompts:
        raise DataError(path, f"no usable prompts ({too_long} longer than max_prompt_length={max_prompt_length})")
    return Prompts(prompts, texts, too_long)


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
    ref_logprobs: torch.Tensor | None  # [B, R] reference (SFT) log-probs at the sampling temperature; None at kl_coef 0
    values: torch.Tensor | None  # [B, R]; None without a value model (the critic-free estimators)
    entropy: torch.Tensor  # [B, R] of the policy's sampling distribution
    scores: torch.Tensor  # [B] the reward model's scores, before any penalty or normalisation
    value_states: torch.Tensor | None = None  # [B, R, H] the reward model's states the values are read (reward_head)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length:]


@dataclass
class Sampled:
    """What `generate` returns: the sequences and, read off the forward passes that sampled them, the policy's
    log-probs and entropy at every response position (and the final hidden states there, when asked)."""

    sequences: torch.Tensor  # [B, P + R]
    logprobs: torch.Tensor | None  # [B, R] of each sampled token under softmax(logits / temperature); None unrecorded
    entropy: torch.Tensor | None  # [B, R]; None unrecorded
    hidden: torch.Tensor | None  # [B, R, H] final hidden states at the positions that predict each response token


class SamplingRecord:
    """A logits processor placed first in `generate`'s list, so it sees the raw logits of every step: it keeps the
    step's log-softmax at the sampling temperature, takes the sampled token's entry once the next step shows which
    token it was, and the entropy. In float32 PPO's "old" log-probs thus cost no scoring pass (Huang et al. 2024 note
    that generation and a later forward agree up to rounding; the update's first ratio is 1 up to that)."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.logprobs: list[torch.Tensor] = []
        self.entropy: list[torch.Tensor] = []
        self._pending: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._pending is not None:
            self._take(input_ids[:, -1])
        z = scores.float() / self.temperature
        self._pending = torch.log_softmax(z, dim=-1)
        self.entropy.append(core.entropy_from_logits(z))
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        self.logprobs.append(self._pending.gather(-1, tokens[:, None])[:, 0])
        self._pending = None

    def result(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, R] log-probs, [B, R] entropy), once `generate` has returned `sequences`."""
        self._take(sequences[:, -1])
        return torch.stack(self.logprobs, 1), torch.stack(self.entropy, 1)


def generate(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens: int, temperature: float, top_p: float,
             keep_hidden: bool = False, top_k: int = 0, record: bool = True) -> Sampled:
    """Sampled continuations (KV cache, stop at EOS) from the policy, with their log-probs recorded on the way
    (unless not `record`: below float32 scoring recomputes them, and a log-softmax over the vocabulary at every
    step would be wasted).

    `generate_ids` puts the recorder before the temperature, top-k and top-p warpers, so it sees the raw logits."""
    recorder = [SamplingRecord(temperature)] if record else []
    with final_states(model.body) if keep_hidden else nullcontext([]) as steps:
        sequences = generate_ids(model, prompt_ids, prompt_mask, max_new_tokens, temperature, top_p, top_k,
                                 tokenizer.eos_token_id, tokenizer.pad_token_id, extra_processors=recorder)
    logprobs, entropy = recorder[0].result(sequences) if record else (None, None)
    hidden = torch.stack([step[:, -1] for step in steps], 1) if keep_hidden else None  # each step's last position
    return Sampled(sequences, logprobs, entropy, hidden)


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


def token_ids(input_ids, attention_mask, prompt_length: int, mask, ended_with_eos) -> list[list[int]]:
    """Each row's prompt and response tokens, without padding or the closing EOS (what a reward model may read)."""
    lengths = (mask.sum(1).long() - ended_with_eos.long()).tolist()
    prompt_lengths = attention_mask[:, :prompt_length].sum(1).long().tolist()
    return [row[prompt_length - p:prompt_length + n]
            for row, p, n in zip(input_ids.tolist(), prompt_lengths, lengths)]


@dataclass(frozen=True)
class Settings:
    """How PPO samples (the stage config's sampling keys) and how many rows each scoring pass takes."""

    max_new_tokens: int
    temperature: float
    top_p: float
    scoring_rows: int
    top_k: int = 0


@dataclass
class Samples:
    """What sampling gives, before scoring: the sequences and masks, the response texts, and the policy's log-probs,
    entropy (and, when asked, final hidden states) recorded on the way."""

    responses: list[str]
    sampled: Sampled
    attention_mask: torch.Tensor  # [B, P + R]
    prompt_length: int
    mask: torch.Tensor  # [B, R]
    ended_with_eos: torch.Tensor  # [B]


def sample(model, tokenizer, texts: list[str], settings: Settings, device,
           generation_weights: AbstractContextManager) -> Samples:
    """Responses to prompt `texts` (sampled inside `generation_weights`), with their masks and decoded texts."""
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    recorded = records_match_forward(model)
    with generation_weights:
        sampled = generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], settings.max_new_tokens,
                           settings.temperature, settings.top_p, top_k=settings.top_k,
                           keep_hidden=model.value_model == "policy_head" and recorded, record=recorded)
    prompt_length = batch["input_ids"].shape[1]
    mask, ended = response_mask(sampled.sequences[:, prompt_length:], tokenizer.eos_token_id)
    responses = decode_responses(tokenizer, sampled.sequences[:, prompt_length:], mask)  # .tolist() waits
    attention_mask = torch.cat([batch["attention_mask"], mask.long()], dim=1)
    return Samples(responses, sampled, attention_mask, prompt_length, mask, ended)


def records_match_forward(model) -> bool:
    """Whether what sampling records equals a forward pass over the finished sequences. In float32 it does up to
    rounding; in bf16 the cached steps of generation and one full forward differ by up to 0.15 nats/token."""
    return all(p.dtype == torch.float32 for p in model.parameters())


@torch.no_grad()
def score(model, reward, prompts: list, samples: Samples, settings: Settings, with_values: bool = True,
          with_reference: bool = True) -> Rollout:
    """The rollout: what sampling did not already give, `scoring_rows` rows at a time: reference log-probs (the base
    with adapters off), values (the value adapter's pass, the head on the policy states kept while sampling, or the
    head on the reward model's states from its own pass; none without a value model) and the reward's scores. Below
    float32 the policy's own log-probs, entropy and values come from a forward pass too (as in OpenRLHF), so that the
    update's first ratio is 1 and its first values are the old ones. `with_values=False` (the held-out evaluation,
    which reads no values) skips the value pass; `with_reference=False` (training without a KL term) skips the
    reference pass."""
    recorded = records_match_forward(model)
    critic = with_values and model.value_model is not None
    on_reward = critic and reads_reward_states(model.value_model)
    names = (("scores",) + (("ref_logprobs",) if with_reference else ()) + (("values",) if critic else ())
             + (("value_states",) if on_reward else ()) + (() if recorded else ("logprobs", "entropy")))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in names}
    sampled, p, mask = samples.sampled, samples.prompt_length, samples.mask
    for start in range(0, len(mask), settings.scoring_rows):
        rows = slice(start, start + settings.scoring_rows)
        ids, attn = sampled.sequences[rows], samples.attention_mask[rows]
        if not recorded:
            logits, values = model(ids, attn, p, part="both" if critic else POLICY)
            parts["logprobs"].append(core.logprobs_from_logits(logits, ids[:, p:], settings.temperature))
            parts["entropy"].append(core.entropy_from_logits(logits, settings.temperature))
            del logits
        elif critic and sampled.hidden is not None:
            values = model.values_from(sampled.hidden[rows])
        elif critic and not on_reward:
            values = model(ids, attn, p, part=VALUE)[1]
        if with_reference:
            ref_logits = model.reference_logits(ids, attn, p)
            parts["ref_logprobs"].append(core.logprobs_from_logits(ref_logits, ids[:, p:], settings.temperature))
            del ref_logits
        tokens = token_ids(ids, attn, p, mask[rows], samples.ended_with_eos[rows])
        if on_reward:  # one reward pass gives the scores and the states the values are read from
            scores, states = reward.with_states(tokens, attn[:, :p].sum(1).tolist(), mask.shape[1])
            values = model.values_from(states)
            parts["value_states"].append(states)
        else:
            scores = reward(prompts[rows], samples.responses[rows], tokens)
        parts["scores"].append(scores.to(ids.device))
        if critic:
            parts["values"].append(values.float() * mask[rows])
    scored = {"logprobs": sampled.logprobs, "entropy": sampled.entropy, **{k: torch.cat(v) for k, v in parts.items()}}
    return Rollout(prompts, samples.responses, sampled.sequences, samples.attention_mask, p, mask,
                   samples.ended_with_eos, logprobs=scored["logprobs"] * mask, entropy=scored["entropy"],
                   ref_logprobs=scored["ref_logprobs"] * mask if with_reference else None, values=scored.get("values"),
                   value_states=scored.get("value_states"), scores=scored["scores"])
