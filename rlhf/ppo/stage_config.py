"""The PPO stage's keys (`rlhf ppo --help`, docs/ppo.md), checked when the config is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.config import key
from rlhf.errors import ConfigError
from rlhf.ppo.model_set import VALUE_MODELS

SCHEDULERS = ("constant", "linear", "cosine")
ESTIMATORS = ("gae", "rloo", "grpo", "reinforce_pp")  # all but gae are critic-free: no value model
GROUP_ESTIMATORS = ("rloo", "grpo")  # their baseline is the other samples of the same prompt


@dataclass
class PPOStageConfig:
    """PPO stage keys (see docs/ppo.md)."""

    policy_path: str | None = key(None, "SFT run directory or model: where the policy starts, and the reference")
    reward_model_path: str | None = key(None, "reward run directory or model")
    reward_fn: str | None = key(None, "module:function(prompts, responses) -> scores, instead of a reward model")
    dataset_path: str | None = key(None, "prompts: {\"prompt\"} (string or messages) or {\"messages\"} rows")
    output_dir: str = key("runs/ppo", "run directory (started again, it resumes from its last checkpoint)")
    max_steps: int = key(100, "PPO steps (one rollout and its update each)")
    seed: int = key(0, "seed for sampling, data order and adapter initialisation")
    report_to: Any = key("none", "none | wandb | tensorboard, or a list")
    batch_size: int = key(16, "completions per rollout, all processes together")
    num_samples_per_prompt: int = key(1, "completions sampled per prompt (a group; at least 2 for rloo and grpo)")
    mini_batch_size: int = key(4, "rollout rows per optimizer step, all processes together")
    gradient_accumulation_steps: int = key(1, "micro-batches each mini-batch is split into")
    ppo_epochs: int = key(2, "passes over each rollout")
    learning_rate: float = key(5e-5, "AdamW learning rate")
    lr_scheduler: str = key("constant", "constant | linear | cosine (over all optimizer steps)")
    max_grad_norm: float = key(1.0, "gradient clipping")
    max_prompt_length: int = key(512, "prompts longer than this many tokens are dropped (and counted)")
    max_new_tokens: int = key(64, "response length limit")
    temperature: float = key(1.0, "sampling temperature (log-probs are taken at the same temperature)")
    top_p: float = key(1.0, "nucleus sampling; below 1 the samples no longer follow the log-probs PPO uses")
    top_k: int = key(0, "sample from the k most likely tokens only; 0 = the full distribution (what the log-probs follow)")
    kl_coef: float = key(0.05, "KL penalty coefficient (the start value when kl_target is set)")
    kl_target: float | None = key(None, "adaptive KL: target KL per sequence in nats (null: fixed kl_coef)")
    kl_horizon: int = key(10000, "adaptive KL horizon, in rollout rows")
    kl_estimator: str = key("k1", "per-token KL estimate: k1 (log ratio) | k3 (non-negative, lower variance)")
    advantage_estimator: str = key("gae", "gae (PPO with a value model) | rloo | grpo | reinforce_pp (critic-free: "
                                          "no value model)")
    scale_rewards: bool = key(True, "grpo: divide by the group's std (false: Dr. GRPO)")
    kl_in_loss: bool = key(False, "the KL as a k3 term in the policy loss (as GRPO), not a per-token reward penalty")
    gamma: float = key(1.0, "discount")
    lam: float | None = key(None, "GAE lambda (null: 1.0 with value_model reward_head, which must not be bootstrapped "
                                  "on, docs/ppo.md; else 0.95)")
    clip_range: float = key(0.2, "policy ratio clip")
    clip_range_value: float = key(0.2, "value clip around the rollout's values")
    vf_coef: float = key(0.1, "weight of the value loss")
    whiten_rewards: bool = key(False, "rescale per-token rewards to unit variance before GAE")
    normalize_scores: bool | None = key(None, "normalise scores to mean 0, std 1 (null: for a reward model)")
    score_stats: str = key("policy", "normalising mean/std: policy (measured on the starting policy's samples of the "
                                     "PPO prompts when the run starts) | reward_data (the reward run's reward_stats.json)")
    score_stats_rows: int = key(256, "samples the policy's score statistics are measured on")
    score_clip: float | None = key(None, "clip (normalised) scores to [-score_clip, score_clip]")
    missing_eos_penalty: float | None = key(None, "subtracted from the score of responses cut off without EOS")
    lora_r: int = key(16, "policy (and fresh value) LoRA rank")
    lora_alpha: int = key(32, "LoRA alpha (scale = alpha / r)")
    lora_target_modules: Any = key("all-linear", "module names, or 'all-linear'")
    value_model: str = key("auto", "gae only: auto (reward_head when the reward model reads the policy's tokens, "
                                   "else lora_head) | reward_head (head on the reward model's states: no pass of its "
                                   "own) | lora_head (own LoRA + head) | policy_head (head on the policy's states) | "
                                   "reward_lora (LoRA + head on a separate reward model)")
    save_steps: int = key(50, "checkpoint every this many steps (and at the last one)")
    eval_dataset_path: str | None = key(None, "held-out prompts evaluated during training (eval/* metrics)")
    eval_steps: int = key(0, "evaluate the held-out prompts at the start and every this many steps (0: only at the end)")
    gold_judge: str | None = key(None, "module:function(prompt, response) -> gold score, for eval/gold_score and "
                                       "eval/win_rate against the starting policy")
    log_completions_steps: int = key(10, "sample completions to completions.jsonl (and W&B) every this many steps")
    dtype: str = key("auto", "auto (bf16 on a GPU that has it, else fp32) | bfloat16 | float16 | float32")
    gradient_checkpointing: bool = key(False, "recompute each layer's activations in the update's backward: far less "
                                              "memory for one more forward pass per micro-batch")

    def __post_init__(self):
        for name in ("policy_path", "dataset_path"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is not set")
        if bool(self.reward_model_path) == bool(self.reward_fn):
            raise ConfigError("set exactly one of reward_model_path and reward_fn")
        positive = ("max_steps", "batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs",
                    "max_new_tokens", "save_steps", "log_completions_steps", "max_prompt_length", "lora_r",
                    "score_stats_rows", "num_samples_per_prompt")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by mini_batch_size "
                              f"{self.mini_batch_size}")
        if self.mini_batch_size % self.gradient_accumulation_steps:
            raise ConfigError(f"mini_batch_size {self.mini_batch_size} is not divisible by "
                              f"gradient_accumulation_steps {self.gradient_accumulation_steps}")
        choices = {"lr_scheduler": SCHEDULERS, "value_model": ("auto", *VALUE_MODELS), "kl_estimator": ("k1", "k3"),
                   "advantage_estimator": ESTIMATORS,
                   "score_stats": ("policy", "reward_data"),
                   "dtype": ("auto", "bfloat16", "float16", "float32")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} '{getattr(self, name)}' is not one of {', '.join(allowed)}")
        self.check_groups()
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive (PPO samples), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must not be negative (0 = the full distribution), got {self.top_k}")
        if self.eval_steps < 0:
            raise ConfigError(f"eval_steps must not be negative, got {self.eval_steps}")
        if self.gold_judge and not self.eval_dataset_path:
            raise ConfigError("gold_judge is set but eval_dataset_path (the held-out prompts it judges) is not")
        if self.critic in ("reward_lora", "reward_head") and not self.reward_model_path:
            raise ConfigError(f"value_model {self.critic} reads the reward model: set reward_model_path")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ConfigError(f"kl_target must be positive, got {self.kl_target}")
        if self.kl_target is not None and self.kl_coef == 0:
            raise ConfigError("kl_target adapts kl_coef by multiplying it, so kl_coef (its start) must be positive, "
                              "not 0")
        for name in ("gamma", "lam"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if min(self.kl_coef, self.clip_range, self.clip_range_value, self.vf_coef, self.learning_rate) < 0:
            raise ConfigError("kl_coef, clip ranges, vf_coef and learning_rate must not be negative")

    def check_groups(self) -> None:
        """The estimator's needs of the samples per prompt: a group of at least 2 for a group baseline, whole
        groups in every rollout."""
        k = self.num_samples_per_prompt
        if self.advantage_estimator in GROUP_ESTIMATORS and k < 2:
            raise ConfigError(f"advantage_estimator {self.advantage_estimator} compares each prompt's samples with "
                              f"each other: num_samples_per_prompt must be at least 2, got {k}")
        if self.batch_size % k:
            raise ConfigError(f"batch_size {self.batch_size} counts completions: it is not divisible by "
                              f"num_samples_per_prompt {k}")
        if not self.scale_rewards and self.advantage_estimator != "grpo":
            raise ConfigError(f"scale_rewards false (Dr. GRPO) is for advantage_estimator grpo, not "
                              f"{self.advantage_estimator}")

    @property
    def critic(self) -> str | None:
        """The value model trained beside the policy: `value_model` for GAE, None for the critic-free estimators
        (no value adapter, head, pass, loss or checkpoint file). The one place that decides whether there is one."""
        return self.value_model if self.advantage_estimator == "gae" else None

    @property
    def gae_lambda(self) -> float:
        """`lam`, or where it is null the value model's: 1.0 for `reward_head`, whose values stay near the frozen
        reward model's score of each unfinished prefix, so GAE must not bootstrap on them (docs/ppo.md, "Which value
        model"); 0.95 for the critics trained toward the returns."""
        if self.lam is not None:
            return self.lam
        if self.value_model == "auto":  # the choice depends on which value model auto becomes
            raise ConfigError("lam null needs value_model auto resolved first (model_set.with_value_model)")
        return 1.0 if self.value_model == "reward_head" else 0.95

    @property
    def uses_reference(self) -> bool:
        """Whether training needs the reference's log-probs: not with `kl_coef: 0` (there is no KL term), where the
        rollouts skip the reference pass. The held-out evaluation always runs it, to report the KL."""
        return self.kl_coef > 0

    def per_process(self, num_processes: int) -> tuple[int, int]:
        """(rollout rows, micro-batch rows) of each process; a process's rows hold whole groups of samples."""
        micro = self.mini_batch_size // self.gradient_accumulation_steps
        if self.batch_size % num_processes or micro % num_processes:
            raise ConfigError(f"batch_size {self.batch_size} and mini_batch_size / gradient_accumulation_steps "
                              f"{micro} must be divisible by the {num_processes} processes")
        k = self.num_samples_per_prompt
        if self.batch_size // num_processes % k:
            raise ConfigError(f"each process samples all num_samples_per_prompt {k} completions of its prompts, so "
                              f"batch_size {self.batch_size} must be divisible by {k} x {num_processes} processes "
                              f"= {k * num_processes}")
        return self.batch_size // num_processes, micro // num_processes

    def prompts_per_step(self) -> int:
        """Distinct prompts in a rollout: each is sampled num_samples_per_prompt times."""
        return self.batch_size // self.num_samples_per_prompt

    def optimizer_steps(self) -> int:
        """Optimizer steps over the whole run (the LR schedule's length)."""
        return self.max_steps * self.ppo_epochs * (self.batch_size // self.mini_batch_size)
