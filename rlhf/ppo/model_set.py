"""The PPO model set on one base in memory: policy, reference, value and reward.

The base is the SFT model (an SFT LoRA adapter is merged into it once). On top of it, one peft model holds
  policy    = base + LoRA "policy" (trained)
  reference = the same base with adapters disabled (no second copy of the weights)
  value     = base + LoRA "value" + a scalar head (trained), or a scalar head on the policy's hidden states
  reward    = base + LoRA "reward" + the reward model's score head (frozen), when the reward model was trained
              on this same base (checked by a fingerprint of the weight files); otherwise a separate frozen
              classifier, or a Python function for rule-based rewards.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from rlhf.errors import ConfigError
from rlhf.chat import format_prompt
from rlhf.models import ModelSource, disable_dropout, load_causal_lm, load_tokenizer, resolve

POLICY, VALUE, REWARD = "policy", "value", "reward"
VALUE_MODELS = ("lora_head", "policy_head")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
REWARD_STATS = "reward_stats.json"


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (left padding), as `generate` counts them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyValueModel(nn.Module):
    """The trained part: one forward gives the policy's logits and the values at every response position.

    All trainable weights (policy LoRA, value LoRA, value head) take part in every forward, so one optimizer
    and DDP see one module. Switching adapters in peft flips `requires_grad`; `_use` restores the fixed set.
    """

    def __init__(self, peft_model, value_head: nn.Linear, value_model: str):
        super().__init__()
        self.peft = peft_model
        self.value_head = value_head
        self.value_model = value_model
        adapters = (POLICY, VALUE) if value_model == "lora_head" else (POLICY,)
        self._trainable = [p for name in adapters for p in adapter_parameters(peft_model, name)]
        self._trainable += list(value_head.parameters())
        self._use(POLICY)

    @property
    def causal_lm(self):
        return self.peft.get_base_model()

    @property
    def config(self):
        """The causal LM's config (accelerate reads `hidden_size` from it to fill DeepSpeed's "auto" sizes)."""
        return self.causal_lm.config

    def _use(self, adapter: str) -> None:
        self.peft.base_model.set_adapter(adapter, inference_mode=True)  # freezes every adapter...
        for param in self._trainable:  # ...then the trained ones are trainable again
            param.requires_grad_(True)

    @contextmanager
    def adapter(self, adapter: str | None):
        """Run with one adapter active (None: all disabled, i.e. the reference), then back to the policy."""
        try:
            if adapter is None:
                with self.peft.disable_adapter():
                    yield
            else:
                self._use(adapter)
                yield
        finally:
            self._use(POLICY)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self._trainable)

    def logits(self, adapter: str | None, input_ids, attention_mask, prompt_length: int, with_hidden: bool = False):
        """(logits [B, R, V] at the R positions that predict the response, their final hidden states or None).

        The causal LM's own forward computes the logits (with any model-specific scaling), as in generation."""
        with self.adapter(adapter):
            out = self.causal_lm(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids(attention_mask), use_cache=False,
                                 logits_to_keep=input_ids.shape[1] - prompt_length + 1,
                                 output_hidden_states=with_hidden)
        hidden = out.hidden_states[-1][:, prompt_length - 1:-1] if with_hidden else None
        return out.logits[:, :-1], hidden

    def hidden_states(self, adapter: str | None, input_ids, attention_mask) -> torch.Tensor:
        """Final hidden states [B, L, H] of the transformer body (what a sequence classifier's head reads)."""
        with self.adapter(adapter):
            return self.body(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state

    @property
    def body(self) -> nn.Module:
        """The transformer body under the LM head (its output is what value and score heads read)."""
        return getattr(self.causal_lm, self.causal_lm.base_model_prefix)

    def values_from(self, hidden: torch.Tensor) -> torch.Tensor:
        """Values [B, R] from final hidden states [B, R, H]."""
        return self.value_head(hidden.float()).squeeze(-1)

    def training_passes(self) -> tuple[str, ...]:
        """The forward/backward passes of one micro-batch. With its own adapter the value model is a second pass
        of the base: it runs after the policy's backward, so only one pass's activations are held at a time."""
        return (POLICY, VALUE) if self.value_model == "lora_head" else (POLICY,)

    def forward(self, input_ids, attention_mask, prompt_length: int, part: str = "both"):
        """(policy logits [B, R, V] or None, values [B, R] or None) at the R positions that predict the response.
        part: "both"; "policy" (logits, and the values too when they are read off the policy's states); "value"."""
        logits = values = None
        if part in ("both", POLICY):
            logits, hidden = self.logits(POLICY, input_ids, attention_mask, prompt_length,
                                         with_hidden=self.value_model == "policy_head")
            values = None if hidden is None else self.values_from(hidden)
        if part in ("both", VALUE) and self.value_model == "lora_head":
            values = self.values_from(self.hidden_states(VALUE, input_ids, attention_mask)[:, prompt_length - 1:-1])
        return logits, values

    @torch.no_grad()
    def reference_logits(self, input_ids, attention_mask, prompt_length: int) -> torch.Tensor:
        """The SFT model's logits [B, R, V]: the same base with every adapter disabled."""
        return self.logits(None, input_ids, attention_mask, prompt_length)[0]

    @torch.no_grad()
    def generate(self, **kwargs):
        with self.adapter(POLICY):
            return self.peft.generate(**kwargs)


def adapter_parameters(peft_model, adapter: str) -> list[nn.Parameter]:
    """The parameters of one named LoRA adapter, in module order."""
    from peft.tuners.lora import LoraLayer

    params = []
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for layer_name in module.adapter_layer_names:
                holder = getattr(module, layer_name)
                if adapter in holder:
                    item = holder[adapter]
                    params += [item] if isinstance(item, nn.Parameter) else list(item.parameters())
    return params


# ---- rewards ---------------------------------------------------------------------------------------


class Reward(Protocol):
    """Scores [B] of (prompt, response) pairs. `token_ids`: each pair as the policy's token ids (prompt, then the
    response without EOS or padding), which a reward model may read instead of the text. `stats`: the reward
    model's {"mean", "std"} when known; `modules`: the modules whose weights it uses."""

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

    `tail`: the tokens its template puts after a response, when its rendering is exactly the policy's prompt tokens,
    the response tokens, then `tail` (see `template_tail`). It then reads the rollout's own tokens (as TRL does),
    skipping decode, render and re-tokenize, and scores what the policy sampled rather than a re-tokenization
    of it, which for a barely trained policy can be many tokens longer."""

    def __init__(self, tokenizer, scores_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 stats: dict[str, float] | None, device, modules: list[nn.Module], shares_base: bool,
                 tail: list[int] | None):
        self.tokenizer, self.scores_of, self.stats, self.device = tokenizer, scores_of, stats, device
        self.modules, self.shares_base, self.tail = modules, shares_base, tail

    @torch.no_grad()
    def __call__(self, prompts, responses, token_ids=None):
        from reward.pairs import encode

        if self.tail is not None and token_ids is not None:
            ids = [row + self.tail for row in token_ids]
        else:
            ids = [encode(self.tokenizer, p, r) for p, r in zip(prompts, responses)]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(self.device)
        return self.scores_of(batch["input_ids"], batch["attention_mask"]).float().cpu()


def template_tail(reward_tokenizer, policy_tokenizer) -> list[int] | None:
    """What the reward's template appends after a response, if the reward renders (prompt, response) as the policy's
    prompt tokens + the response's tokens + that tail; None when tokenizers or templates differ (then it reads text)."""
    from reward.pairs import encode

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
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward_fn '{spec}' must be written module:function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward_fn '{spec}': {e}") from e
    return FunctionReward(fn, spec)


def reward_stats(reward_path: str) -> dict[str, float] | None:
    """{"mean", "std"} of the reward model's scores on its training data (from its run directory), if recorded."""
    path = Path(reward_path) / REWARD_STATS
    return json.loads(path.read_text()) if path.is_file() else None


# ---- checking that two models share a base ----------------------------------------------------------


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
    config = json.loads((Path(reward.adapter) / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA" or config.get("task_type") != "SEQ_CLS":
        return False, f"the reward adapter is {config.get('peft_type')}/{config.get('task_type')}, not LORA/SEQ_CLS"
    ours = base_fingerprint(*ppo_base_source(policy))
    theirs = base_fingerprint(reward.base, reward.merged)
    if ours is None or theirs is None:
        return False, "the base weights are not local safetensors files, so sharing cannot be verified"
    if ours != theirs:
        return False, "the reward model was trained on different base weights than the PPO base"
    return True, "the reward adapter was trained on the PPO base"


# ---- building the set ------------------------------------------------------------------------------


def lora_config(config, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=config.lora_target_modules, task_type=task_type)


def load_base(policy_path: str, dtype: str):
    """The PPO base: the SFT model with its LoRA merged, frozen, dropout off."""
    from peft import PeftModel

    base = load_causal_lm(policy_path, dtype)
    if isinstance(base, PeftModel):
        raise ConfigError(f"policy_path {policy_path}: a {base.peft_config['default'].peft_type.value} adapter cannot "
                          f"be merged; train SFT with LoRA or full weights, or `rlhf export` it first")
    disable_dropout(base)
    base.requires_grad_(False)
    base.generation_config = sampling_defaults(base.generation_config)
    return base


def sampling_defaults(shipped):
    """A generation config holding only the special tokens: a model's shipped sampling defaults (top_k,
    repetition penalty, ...) would change the distribution PPO's log-probs assume."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=shipped.bos_token_id, eos_token_id=shipped.eos_token_id,
                            pad_token_id=shipped.pad_token_id)


@dataclass
class RewardAdapter:
    """A SEQ_CLS reward adapter taken apart to sit on the causal LM: its LoRA and its score head."""

    where: str
    config: Any  # LoraConfig, for a causal LM
    lora: dict[str, torch.Tensor]  # peft state dict of the LoRA weights
    score: dict[str, torch.Tensor]  # {"weight"[, "bias"]} of the score head


def reward_adapter(adapter_dir: str) -> RewardAdapter:
    from peft import LoraConfig
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(adapter_dir)
    heads = tuple(config.modules_to_save or ())
    weights = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    lora, head = {}, {}
    for key, tensor in weights.items():
        module = key.removeprefix("base_model.model.")
        if module.split(".")[0] in heads:
            head[module.split(".")[-1]] = tensor
        else:
            lora[key] = tensor
    config = copy.deepcopy(config)
    config.modules_to_save, config.task_type = None, "CAUSAL_LM"
    return RewardAdapter(adapter_dir, config, lora, head)


def add_lora(peft_model, name: str, adapter: RewardAdapter) -> None:
    peft_model.add_adapter(name, copy.deepcopy(adapter.config))
    load_adapter_weights(peft_model, name, adapter.lora, adapter.where)


def load_adapter_weights(peft_model, adapter: str, weights: dict[str, torch.Tensor], where: str) -> None:
    """Set one adapter's weights from a peft state dict; every key must land on a LoRA weight of that adapter."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(peft_model, weights, adapter_name=adapter)
    missing = [k for k in result.missing_keys if f".{adapter}." in k and "lora_" in k]
    if result.unexpected_keys or missing:
        raise ConfigError(f"{where}: adapter weights do not fit the PPO base "
                          f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")


def value_head(hidden_size: int, score: dict[str, torch.Tensor] | None, stats: dict[str, float] | None) -> nn.Linear:
    """Scalar head on hidden states. Zero at the start, or the reward model's score head (rescaled to the
    normalised score PPO sees when `stats` is given), so that the first values already predict the reward."""
    head = nn.Linear(hidden_size, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        if score is not None:
            scale, shift = (1.0 / stats["std"], -stats["mean"] / stats["std"]) if stats else (1.0, 0.0)
            head.weight.copy_(score["weight"].float().reshape(1, -1) * scale)
            head.bias.fill_(float(score["bias"].reshape(())) * scale + shift if "bias" in score else shift)
    return head


def normalisation(config, stats: dict[str, float] | None) -> dict[str, float] | None:
    """The {"mean", "std"} to normalise scores with, or None. `normalize_scores: null` = when the reward model
    has statistics."""
    if config.normalize_scores is None:
        return stats
    if config.normalize_scores and stats is None:
        raise ConfigError(f"normalize_scores is true but there are no reward statistics ({REWARD_STATS} in the "
                          f"reward model's run directory)")
    return stats if config.normalize_scores else None


def build(config, device) -> tuple[PolicyValueModel, Reward, dict[str, Any]]:
    """(policy+value model, reward, facts for the log and summary) for a PPO config."""
    from peft import get_peft_model

    policy_tokenizer = load_tokenizer(config.policy_path)

    policy_source = resolve(config.policy_path)
    base = load_base(config.policy_path, config.dtype)
    peft_model = get_peft_model(base, lora_config(config), adapter_name=POLICY)
    peft_model.peft_config[POLICY].base_model_name_or_path = config.policy_path  # final/ resolves to the SFT run
    info: dict[str, Any] = {"reward": f"function {config.reward_fn}"}
    stats, shared = None, None  # shared: the reward adapter, when the reward model shares the base
    if config.reward_model_path:
        reward_source = resolve(config.reward_model_path)
        stats = reward_stats(config.reward_model_path)
        sharing, why = shares_base(reward_source, policy_source)
        info["reward"] = f"{'shared base' if sharing else 'separate model'}: {why}"
        if sharing:
            shared = reward_adapter(reward_source.adapter)
            add_lora(peft_model, REWARD, shared)
    if config.value_model == "lora_head":
        if shared:  # the value model starts as the reward model (adapter and head)
            add_lora(peft_model, VALUE, shared)
        else:
            peft_model.add_adapter(VALUE, lora_config(config))
    head = value_head(base.config.hidden_size, shared.score if shared else None, normalisation(config, stats))
    model = PolicyValueModel(peft_model, head, config.value_model)
    if config.reward_fn:
        reward: Reward = load_reward_fn(config.reward_fn)
    elif shared:
        reward = shared_reward(model, config.reward_model_path, shared.score, stats, device, policy_tokenizer)
    else:
        reward = separate_reward(config.reward_model_path, stats, device, policy_tokenizer)
    if isinstance(reward, ModelReward):
        info["reward"] += ("; it reads the rollout's tokens" if reward.tail is not None
                           else "; its tokenizer or template differs from the policy's, so it re-tokenizes text")
    info["trainable_parameters"] = sum(p.numel() for p in model.trainable_parameters())
    return model, reward, info


def shared_reward(model: PolicyValueModel, reward_path: str, score: dict[str, torch.Tensor],
                  stats: dict[str, float] | None, device, policy_tokenizer) -> ModelReward:
    """The reward as the "reward" adapter of the shared base plus its score head."""
    head = nn.Linear(score["weight"].shape[-1], 1, bias="bias" in score)
    with torch.no_grad():
        head.weight.copy_(score["weight"].reshape(1, -1))
        if "bias" in score:
            head.bias.copy_(score["bias"].reshape(1))
    head.requires_grad_(False)
    head.to(device)
    tokenizer = load_tokenizer(reward_path, padding_side="left")

    def scores_of(input_ids, attention_mask):
        hidden = model.hidden_states(REWARD, input_ids, attention_mask)
        rows = torch.arange(len(hidden), device=hidden.device)
        last = hidden[rows, last_token_index(input_ids, tokenizer.pad_token_id)]
        return head(last.to(head.weight.dtype)).squeeze(-1)

    return ModelReward(tokenizer, scores_of, stats, device, [model, head], shares_base=True,
                       tail=template_tail(tokenizer, policy_tokenizer))


def separate_reward(reward_path: str, stats: dict[str, float] | None, device, policy_tokenizer) -> ModelReward:
    """A frozen reward model of its own (its base differs from the PPO base)."""
    from reward.score import load_reward_model

    classifier, tokenizer = load_reward_model(reward_path)
    tokenizer.padding_side = "left"
    disable_dropout(classifier)
    classifier.requires_grad_(False)
    classifier.eval().to(device)

    def scores_of(input_ids, attention_mask):
        out = classifier(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
        return out.logits[:, 0]

    return ModelReward(tokenizer, scores_of, stats, device, [classifier], shares_base=False,
                       tail=template_tail(tokenizer, policy_tokenizer))
