"""The reward PPO optimises: a rule, the reward model as an adapter on the shared PPO base (when it was trained on
that base, checked by a fingerprint), or a separate frozen classifier; and the statistics that normalise its scores."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from reward.pairs import encode
from reward.score import classifier_scores, load_reward_model
from rlhf import runs
from rlhf.chat import format_prompt
from rlhf.config import import_function
from rlhf.errors import ConfigError
from rlhf.models import ModelSource, disable_dropout, final_states, load_tokenizer, read_adapter_config


class Reward(Protocol):
    """Scores [B] of (prompt, response) pairs. `token_ids`: each pair as the policy's token ids (prompt, then the
    response without EOS or padding), which a reward model may read instead of the text. `stats`: the reward
    model's {"mean", "std"} when known; `modules`: the modules whose weights it runs (`build` reports what they add
    to the PPO base)."""

    stats: dict[str, float] | None
    modules: list[nn.Module]

    def __call__(self, prompts: list, responses: list[str], token_ids: list[list[int]] | None = None
                 ) -> torch.Tensor: ...


class FunctionReward:
    """A rule-based reward: `fn(prompts, responses) -> list[float]` (prompts as given in the data)."""

    def __init__(self, fn: Callable[[list, list[str]], list[float]], name: str):
        self.fn, self.name = fn, name
        self.stats, self.modules = None, []

    def __call__(self, prompts, responses, token_ids=None):
        scores = self.fn(prompts, responses)
        if len(scores) != len(responses):
            raise ConfigError(f"reward_fn {self.name} returned {len(scores)} scores for {len(responses)} responses")
        return torch.tensor([float(s) for s in scores], dtype=torch.float32)


class ModelReward:
    """A reward model reading `reward.pairs.render(prompt, response)`, scored at the last non-padding token.

    `read(input_ids, attention_mask)` gives (scores [B], final hidden states [B, L, H] of the model's body).
    `tail`: the tokens its template puts after a response, when its rendering is exactly the policy's prompt tokens,
    the response tokens, then `tail` (see `template_tail`). It then reads the rollout's own tokens (as TRL does),
    skipping decode, render and re-tokenize, and scores what the policy sampled rather than a re-tokenization
    of it, which for a barely trained policy can be many tokens longer."""

    def __init__(self, tokenizer, read: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 stats: dict[str, float] | None, device, modules: list[nn.Module], tail: list[int] | None):
        self.tokenizer, self.read, self.stats, self.device = tokenizer, read, stats, device
        self.modules, self.tail = modules, tail

    def scores_of(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.read(input_ids, attention_mask)[0]

    @torch.no_grad()
    def __call__(self, prompts, responses, token_ids=None):
        if self.tail is not None and token_ids is not None:
            ids = [row + self.tail for row in token_ids]
        else:
            ids = [encode(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        return self.scores_of(*self._batch(ids)).float().cpu()

    def _batch(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def with_states(self, token_ids: list[list[int]], prompt_lengths: list[int], width: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B], final hidden states [B, width, H] where the reward model has read each row's prompt and its
        first t response tokens, t = 0..width-1): what `value_model: reward_head` reads. The states come from the
        same pass as the scores; a row's positions past its response repeat its last position (masked by PPO)."""
        if self.tail is None:
            raise ConfigError("the reward model reads text (its tokenizer or chat template differs from the "
                              "policy's), so its states are not at the policy's token positions")
        ids = [row + self.tail for row in token_ids]
        input_ids, attention_mask = self._batch(ids)
        scores, hidden = self.read(input_ids, attention_mask)
        length = input_ids.shape[1]
        # Left padding: row i starts at length - len(ids[i]); the state after its prompt and t response tokens sits
        # at start + prompt_length - 1 + t.
        starts = torch.tensor([length - len(row) + p - 1 for row, p in zip(ids, prompt_lengths)], device=hidden.device)
        positions = (starts[:, None] + torch.arange(width, device=hidden.device)).clamp(max=length - 1)
        states = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        return scores.float(), states


def template_tail(reward_tokenizer, policy_tokenizer) -> list[int] | None:
    """What the reward's template appends after a response, if the reward renders (prompt, response) as the policy's
    prompt tokens + the response's tokens + that tail; None when tokenizers or templates differ (then it reads text)."""
    same = (reward_tokenizer.get_vocab() == policy_tokenizer.get_vocab()
            and reward_tokenizer.chat_template == policy_tokenizer.chat_template)
    if not same:
        return None
    prompt = [{"role": "user", "content": "What is 2 + 3?"}] if policy_tokenizer.chat_template else "What is 2 + 3?"
    head = (policy_tokenizer(format_prompt(policy_tokenizer, prompt), add_special_tokens=False)["input_ids"]
            + reward_tokenizer(" It is 5.", add_special_tokens=False)["input_ids"])
    full = encode(reward_tokenizer, prompt, " It is 5.")
    return full[len(head):] if full[:len(head)] == head else None


def last_token_index(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """Index of each row's last non-padding token (what a transformers sequence classifier scores)."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * (input_ids != pad_token_id)).argmax(-1)


def load_reward_fn(spec: str) -> FunctionReward:
    """`module:function` -> the function, wrapped as a Reward."""
    return FunctionReward(import_function(spec, "reward_fn"), spec)


def reward_stats(reward_path: str) -> dict[str, float] | None:
    """{"mean", "std"} of the reward model's scores on its training data (from its run directory), if recorded."""
    path = Path(reward_path) / runs.REWARD_STATS
    return json.loads(path.read_text()) if path.is_file() else None


# ---- whether a reward model shares the PPO base ----------------------------------------------------


def base_fingerprint(base: str, merged: tuple[str, ...]) -> str | None:
    """Hash of the weights a base is built from (model files, then each merged adapter): the names and shapes of
    all tensors and the first rows of three of them per file. None when the weights are not local safetensors."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    for name in (base, *merged):
        folder = _local_folder(name)
        files = sorted(folder.glob("*.safetensors")) if folder else []
        if not files:
            return None
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                keys = sorted(f.keys())
                for key in keys:
                    digest.update(f"{key}{list(f.get_slice(key).get_shape())}".encode())
                for key in sorted({keys[0], keys[len(keys) // 2], keys[-1]}):
                    digest.update(f.get_slice(key)[:64].float().numpy().tobytes())
    return digest.hexdigest()


def _local_folder(name: str) -> Path | None:
    """A model folder on disk: the path itself, or a hub name's snapshot in the local cache."""
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (OSError, ValueError):  # not cached, or not a hub name: nothing on disk to fingerprint
        return None


def ppo_base_source(policy: ModelSource) -> tuple[str, tuple[str, ...]]:
    """(base, LoRA adapters merged into it) of the PPO base: the policy source with its LoRA merged."""
    if policy.adapter is None:
        return policy.base, policy.merged
    return policy.base, policy.merged + (policy.adapter,)


def shares_base(reward: ModelSource, policy: ModelSource) -> tuple[bool, str]:
    """Whether the reward model is a LoRA classifier on exactly the PPO base, and why (for the log)."""
    if reward.adapter is None:
        return False, "the reward model is a full model, not an adapter"
    config = read_adapter_config(reward.adapter)
    if config.get("peft_type") != "LORA" or config.get("task_type") != "SEQ_CLS":
        return False, f"the reward adapter is {config.get('peft_type')}/{config.get('task_type')}, not LORA/SEQ_CLS"
    ours = base_fingerprint(*ppo_base_source(policy))
    theirs = base_fingerprint(reward.base, reward.merged)
    if ours is None or theirs is None:
        return False, "the base weights are not local safetensors files, so sharing cannot be verified"
    if ours != theirs:
        return False, "the reward model was trained on different base weights than the PPO base"
    return True, "the reward adapter was trained on the PPO base"


def normalizes_scores(config, stats: dict[str, float] | None) -> bool:
    """Whether scores are normalised: `normalize_scores`; when null, for any reward model if the statistics are
    measured on the policy (`score_stats: policy`), else when the reward run recorded them."""
    if config.normalize_scores is None:
        return bool(config.reward_model_path) if config.score_stats == "policy" else stats is not None
    if config.normalize_scores and config.score_stats == "reward_data" and stats is None:
        raise ConfigError(f"normalize_scores is true but there are no reward statistics ({runs.REWARD_STATS} in the "
                          f"reward model's run directory); set score_stats: policy to measure them on the policy")
    return config.normalize_scores


def score_normalization(config, stats: dict[str, float] | None) -> dict[str, float] | None:
    """The reward run's {"mean", "std"} when scores are normalised with them (`score_stats: reward_data`), else None
    (not normalised, or measured on the policy when the run starts: see evaluation.measure_score_stats)."""
    return stats if config.score_stats == "reward_data" and normalizes_scores(config, stats) else None


def shared_reward(hidden_states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], base: nn.Module,
                  reward_path: str, score: dict[str, torch.Tensor], stats: dict[str, float] | None, device,
                  policy_tokenizer) -> ModelReward:
    """The reward as the "reward" adapter of the shared `base` plus its score head; `hidden_states(ids, mask)` runs
    the base with that adapter."""
    head = nn.Linear(score["weight"].shape[-1], 1, bias="bias" in score)
    with torch.no_grad():
        head.weight.copy_(score["weight"].reshape(1, -1))
        if "bias" in score:
            head.bias.copy_(score["bias"].reshape(1))
    head.requires_grad_(False)
    head.to(device)
    tokenizer = load_tokenizer(reward_path, padding_side="left")

    def read(input_ids, attention_mask):
        hidden = hidden_states(input_ids, attention_mask)
        rows = torch.arange(len(hidden), device=hidden.device)
        last = hidden[rows, last_token_index(input_ids, tokenizer.pad_token_id)]
        return head(last.to(head.weight.dtype)).squeeze(-1), hidden

    return ModelReward(tokenizer, read, stats, device, [base, head], template_tail(tokenizer, policy_tokenizer))


def separate_reward(reward_path: str, stats: dict[str, float] | None, device, policy_tokenizer,
                    dtype: str = "auto") -> ModelReward:
    """A frozen reward model of its own (its base differs from the PPO base), in the PPO stage's `dtype`."""
    classifier, tokenizer = load_reward_model(reward_path, dtype)
    tokenizer.padding_side = "left"
    disable_dropout(classifier)
    classifier.requires_grad_(False)
    classifier.eval().to(device)

    body = getattr(classifier, classifier.base_model_prefix)

    def read(input_ids, attention_mask):
        with adapters_off(classifier), final_states(body) as kept:
            scores = classifier_scores(classifier, input_ids, attention_mask).float()
        return scores, kept[0]

    return ModelReward(tokenizer, read, stats, device, [classifier], template_tail(tokenizer, policy_tokenizer))


@contextmanager
def adapters_off(module: nn.Module):
    """`module` as it was loaded: any LoRA put on it afterwards (the value adapter of `value_model: reward_lora`) is
    switched off inside the block."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
