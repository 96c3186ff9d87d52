"""The PPO model set on one base in memory: policy, reference and value (and the reward's adapter, see rewards.py)."""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf.errors import ConfigError
from rlhf.models import ADAPTER_WEIGHTS, disable_dropout, load_causal_lm, load_tokenizer, position_ids, resolve
from rlhf.ppo import rewards

# The base is the SFT model (an SFT LoRA adapter is merged into it once). On top of it, one peft model holds
#   policy    = base + LoRA "policy" (trained)
#   reference = the same base with adapters disabled (no second copy of the weights)
#   value     = base + LoRA "value" + a scalar head (trained), or a scalar head on the policy's hidden states, or a
#               scalar head on the reward model's hidden states from the reward's own scoring pass (reward_head);
#               none at all for the critic-free advantage estimators (config.critic is None)
#   reward    = base + LoRA "reward" + the reward model's score head (frozen), when the reward model shares the base
# A reward model of its own (fully fine-tuned, or on another base) is a frozen classifier beside it; with
# `value_model: reward_lora` the value is that classifier + LoRA "value" + a head started as its score head, so the
# value starts as the reward model without a trainable copy of it (OpenRLHF initialises a full critic copy).

POLICY, VALUE, REWARD = "policy", "value", "reward"
VALUE_MODELS = ("lora_head", "policy_head", "reward_lora", "reward_head")


def has_value_pass(value_model: str | None) -> bool:
    """Whether the value model is a pass of its own (an adapter), rather than a head on the policy's or the reward's
    states, or none."""
    return value_model in ("lora_head", "reward_lora")


def reads_reward_states(value_model: str | None) -> bool:
    """Whether the values are a head on the reward model's final hidden states (`reward_head`): the reward's scoring
    pass gives them, and the update trains the head alone on the states the rollout kept (no pass of the base)."""
    return value_model == "reward_head"


class PolicyValueModel(nn.Module):
    """The trained part: one forward gives the policy's logits and the values at every response position.

    All trainable weights (policy LoRA, value LoRA, value head) take part in every forward, so one optimizer
    and DDP see one module. Switching adapters in peft flips `requires_grad`; `_use` restores the fixed set.
    With `value_model` None (the critic-free estimators) there is no value adapter or head, and no values.
    """

    def __init__(self, peft_model, value_head: nn.Linear | None, value_model: str | None, reward_peft=None):
        super().__init__()
        self.peft = peft_model
        self.reward_peft = reward_peft  # reward_lora: the separate reward classifier, holding the value adapter
        self.value_head = value_head
        self.value_model = value_model
        self._trainable = [p for name in self.adapters for p in adapter_parameters(self.peft_of(name), name)]
        self._trainable += list(value_head.parameters()) if value_head is not None else []
        self._active = POLICY
        self._use(POLICY)

    @property
    def adapters(self) -> tuple[str, ...]:
        """The trained adapters."""
        return (POLICY, VALUE) if has_value_pass(self.value_model) else (POLICY,)

    def peft_of(self, adapter: str):
        """The peft model holding `adapter`."""
        return self.reward_peft if adapter == VALUE and self.reward_peft is not None else self.peft

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
        self._active = adapter

    @contextmanager
    def adapter(self, adapter: str | None):
        """Run with one adapter active (None: all disabled, i.e. the reference), then back to the one before."""
        before = self._active
        try:
            if adapter is None:
                with self.peft.disable_adapter():
                    yield
            else:
                self._use(adapter)
                yield
        finally:
            self._use(before)

    @contextmanager
    def training_pass(self, part: str):
        """Keep a training pass's adapter active through its backward, where activation checkpointing recomputes
        the layers (under the policy adapter, the value pass would get the policy's activations)."""
        if self.peft_of(part) is self.peft:
            with self.adapter(part):
                yield
        else:  # the value adapter on a reward classifier of its own: the only adapter that model trains
            yield

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self._trainable)

    def logits(self, adapter: str | None, input_ids, attention_mask, prompt_length: int, with_hidden: bool = False):
        """(logits [B, R, V] at the R positions that predict the response, their final hidden states or None).

        The causal LM's own forward computes the logits (with any model-specific scaling), as in generation. The
        kept positions go as an index tensor, not a count: indexing copies the hidden states into one contiguous
        [B, R + 1, H] block, whereas the slice a count gives makes the LM head a batched matmul that copies its
        weight once per row (in bf16 on the CPU a whole scoring pass's time)."""
        kept = torch.arange(prompt_length - 1, input_ids.shape[1], device=input_ids.device)
        with self.adapter(adapter):
            out = self.causal_lm(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids(attention_mask), use_cache=False,
                                 logits_to_keep=kept, output_hidden_states=with_hidden)
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

    def value_states(self, input_ids, attention_mask) -> torch.Tensor:
        """Final hidden states [B, L, H] of the value adapter's pass: on the PPO base, or on the reward classifier."""
        if self.reward_peft is None:
            return self.hidden_states(VALUE, input_ids, attention_mask)
        classifier = self.reward_peft.get_base_model()
        body = getattr(classifier, classifier.base_model_prefix)
        return body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                    use_cache=False).last_hidden_state

    def values_from(self, hidden: torch.Tensor) -> torch.Tensor:
        """Values [B, R] (float32) from final hidden states [B, R, H]."""
        # In the head's dtype: float32, unless DeepSpeed's bf16 (`mixed_precision: bf16` of the GPU launcher configs)
        # has cast the whole trained module, head included.
        return self.value_head(hidden.to(self.value_head.weight.dtype)).float().squeeze(-1)

    def training_passes(self) -> tuple[str, ...]:
        """The forward/backward passes of one micro-batch. With its own adapter the value model is a second pass
        of the base: it runs after the policy's backward, so only one pass's activations are held at a time."""
        return self.adapters

    def forward(self, input_ids, attention_mask, prompt_length: int, part: str = "both", reward_states=None):
        """(policy logits [B, R, V] or None, values [B, R] or None) at the R positions that predict the response.
        part: "both"; "policy" (logits, and the values too when they are read off the policy's states, or off
        `reward_states` [B, R, H], the reward model's states the rollout kept for `reward_head`); "value"."""
        logits = values = None
        if part in ("both", POLICY):
            logits, hidden = self.logits(POLICY, input_ids, attention_mask, prompt_length,
                                         with_hidden=self.value_model == "policy_head")
            hidden = reward_states if reads_reward_states(self.value_model) else hidden
            values = None if hidden is None else self.values_from(hidden)
        if part in ("both", VALUE) and has_value_pass(self.value_model):
            values = self.values_from(self.value_states(input_ids, attention_mask)[:, prompt_length - 1:-1])
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


# ---- building the set ------------------------------------------------------------------------------


def lora_config(config, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=config.lora_target_modules, task_type=task_type)


def load_base(policy_path: str, dtype: str, gradient_checkpointing: bool = False):
    """The PPO base: the SFT model with its LoRA merged, frozen, dropout off (and, when asked, recomputing its
    layers' activations in the backward of the update, the only pass that runs in train mode)."""
    from peft import PeftModel

    base = load_causal_lm(policy_path, dtype)
    if isinstance(base, PeftModel):
        raise ConfigError(f"policy_path {policy_path}: a {base.peft_config['default'].peft_type.value} adapter cannot "
                          f"be merged; train SFT with LoRA or full weights, or `rlhf export` it first")
    disable_dropout(base)
    base.requires_grad_(False)
    base.generation_config = sampling_defaults(base.generation_config)
    if gradient_checkpointing:
        checkpoint_activations(base)
    return base


def checkpoint_activations(model) -> None:
    """transformers' activation checkpointing of each layer, non-reentrant: it needs no input that requires grad
    (the frozen base's embeddings give none) and recomputes the same values, so the gradients are unchanged."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


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


def value_head(hidden_size: int, score: dict[str, torch.Tensor] | None) -> nn.Linear:
    """Scalar head on hidden states: zero at the start, or the reward model's score head, so that the first values
    already predict the reward (`normalise_head` then puts them on the normalised scale PPO sees)."""
    head = nn.Linear(hidden_size, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        if score is not None:
            head.weight.copy_(score["weight"].float().reshape(1, -1))
            head.bias.fill_(float(score["bias"].reshape(())) if "bias" in score else 0.0)
    return head


@torch.no_grad()
def normalise_head(head: nn.Linear, stats: dict[str, float]) -> None:
    """Rescale a head copied from the reward model to predict (score - mean) / std."""
    head.weight.div_(stats["std"])
    head.bias.sub_(stats["mean"]).div_(stats["std"])


def with_value_model(config):
    """`config` with `value_model: auto` resolved: `reward_head` when a reward model reads the policy's tokens (its
    states then sit at the policy's positions: the value costs no pass of the base), else `lora_head` (a rule reward,
    or a reward model with another tokenizer or chat template)."""
    if config.value_model != "auto":
        return config
    reads_tokens = bool(config.reward_model_path) and rewards.template_tail(
        load_tokenizer(config.reward_model_path), load_tokenizer(config.policy_path)) is not None
    return dataclasses.replace(config, value_model="reward_head" if reads_tokens else "lora_head")


def build(config, device) -> tuple[PolicyValueModel, rewards.Reward, dict[str, Any]]:
    """(policy+value model, reward, facts for the log and summary) for a PPO config; with no value model
    (`config.critic` None) the policy alone."""
    from peft import get_peft_model

    config = with_value_model(config)

    policy_tokenizer = load_tokenizer(config.policy_path)

    policy_source = resolve(config.policy_path)
    base = load_base(config.policy_path, config.dtype, config.gradient_checkpointing)
    peft_model = get_peft_model(base, lora_config(config), adapter_name=POLICY)
    peft_model.peft_config[POLICY].base_model_name_or_path = config.policy_path  # final/ resolves to the SFT run
    info: dict[str, Any] = {"reward": f"function {config.reward_fn}"}
    stats, shared = None, None  # shared: the reward adapter, when the reward model shares the base
    if config.reward_model_path:
        reward_source = resolve(config.reward_model_path)
        stats = rewards.reward_stats(config.reward_model_path)
        sharing, why = rewards.shares_base(reward_source, policy_source)
        info["reward"] = f"{'shared base' if sharing else 'separate model'}: {why}"
        if sharing:
            shared = reward_adapter(reward_source.adapter)
            add_lora(peft_model, REWARD, shared)
    value_model = config.critic
    if value_model == "lora_head":
        if shared:  # the value model starts as the reward model (adapter and head)
            add_lora(peft_model, VALUE, shared)
        else:
            peft_model.add_adapter(VALUE, lora_config(config))
    if config.reward_fn:
        reward: rewards.Reward = rewards.load_reward_fn(config.reward_fn)
    elif shared:
        reward = rewards.shared_reward(lambda ids, mask: model.hidden_states(REWARD, ids, mask), peft_model,
                                       config.reward_model_path, shared.score, stats, device, policy_tokenizer)
    else:
        reward = rewards.separate_reward(config.reward_model_path, stats, device, policy_tokenizer, config.dtype)
    reward_peft, head = None, None
    score = shared.score if shared and value_model else None  # what the value head starts as
    hidden_size = base.config.hidden_size
    if value_model == "reward_lora":
        reward_peft, score = value_on_reward_model(config, reward, shared is not None)
        hidden_size = reward_peft.config.hidden_size
    if reads_reward_states(value_model):
        score, hidden_size = head_on_reward_model(config, reward, shared)
    if value_model:
        head = value_head(hidden_size, score)
    known = rewards.score_normalization(config, stats)  # the reward run's statistics, when they normalise
    if score is not None and known:
        normalise_head(head, known)
    model = PolicyValueModel(peft_model, head, value_model, reward_peft)
    if isinstance(reward, rewards.ModelReward):
        info["reward"] += ("; it reads the rollout's tokens" if reward.tail is not None
                           else "; its tokenizer or template differs from the policy's, so it re-tokenizes text")
    info["value_model"] = value_model
    info["value_from_reward"] = score is not None  # the value head starts as the reward's score head
    info["trainable_parameters"] = sum(p.numel() for p in model.trainable_parameters())
    info["reward_parameters"] = added_parameters(reward.modules, model)
    return model, reward, info


def head_on_reward_model(config, reward, shared: RewardAdapter | None) -> tuple[dict[str, torch.Tensor], int]:
    """(the reward model's score head, its hidden size): where the value head of `reward_head` starts. The reward
    model must read the policy's tokens, so that its states sit at the policy's positions."""
    if not isinstance(reward, rewards.ModelReward):
        raise ConfigError("value_model reward_head reads the reward model's states: set reward_model_path (a rule "
                          "reward_fn has none; use value_model lora_head or policy_head)")
    if reward.tail is None:
        raise ConfigError(f"value_model reward_head: the reward model {config.reward_model_path} has another "
                          f"tokenizer or chat template than the policy, so its states are not at the policy's token "
                          f"positions; use value_model lora_head or reward_lora")
    if shared:
        return shared.score, len(shared.score["weight"].reshape(-1))
    classifier = reward.modules[0]
    score = {k: v.detach().float().clone() for k, v in classifier.score.state_dict().items()}
    return score, classifier.config.hidden_size


def value_on_reward_model(config, reward: rewards.ModelReward, shared: bool) -> tuple[Any, dict[str, torch.Tensor]]:
    """(the separate reward classifier with a new LoRA "value", its score head): the value model of `reward_lora`.
    The reward itself reads the classifier with that adapter off (rewards.separate_reward)."""
    from peft import get_peft_model

    if shared:
        raise ConfigError(f"value_model reward_lora is for a reward model of its own; {config.reward_model_path} "
                          f"is a LoRA on the PPO base, from which value_model lora_head starts already")
    if reward.tail is None:
        raise ConfigError(f"value_model reward_lora: the reward model {config.reward_model_path} has another "
                          f"tokenizer or chat template than the policy, so it cannot read the policy's tokens")
    classifier = reward.modules[0]
    score = {k: v.detach().clone() for k, v in classifier.score.state_dict().items()}
    lora = lora_config(config, task_type=None)
    lora.exclude_modules = ["score"]  # the value reads the body; its own head replaces the classifier's
    if config.gradient_checkpointing:
        checkpoint_activations(classifier)
    return get_peft_model(classifier, lora, adapter_name=VALUE), score


def added_parameters(modules: list[nn.Module], model: nn.Module) -> int:
    """Parameters that `modules` hold in memory beyond those of `model` (0 for a reward on the shared base but its
    head; a whole second model for a separate reward model)."""
    held = {p.untyped_storage().data_ptr() for p in model.parameters()}
    extra = {p.untyped_storage().data_ptr(): p.numel() for m in modules for p in m.parameters()
             if p.untyped_storage().data_ptr() not in held}
    return sum(extra.values())


