"""`rlhf ppo --config FILE.yaml [--key value ...]`: PPO against a reward model (or a rule-based reward).

Each step samples responses to `batch_size` prompts (recording the policy's log-probs), scores them (reference
log-probs, values, reward), turns the scores into per-token rewards with a KL penalty to the SFT policy, estimates
advantages (GAE), then runs `ppo_epochs` passes of clipped policy and value updates over shuffled mini-batches.
Runs under plain `python`, `accelerate launch` (DDP) and DeepSpeed ZeRO-2/3 (see `distributed.py`): each process
samples its own slice of the prompts, then every process holds the whole rollout and computes its share of each
mini-batch.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf import runs
from rlhf.config import config_to_dict, key, load_config, save_config, wants_help
from rlhf.errors import ConfigError
from rlhf.models import load_tokenizer
from rlhf.ppo import checkpoint, core, distributed, model_set, rollout

SCHEDULERS = ("constant", "linear", "cosine")
COMPLETIONS = "completions.jsonl"
COMPLETIONS_SHOWN = 4  # rows per logged completions table


@dataclass
class PPOConfig:
    """PPO stage keys (see docs/ppo.md)."""

    policy_path: str | None = key(None, "SFT run directory or model: where the policy starts, and the reference")
    reward_model_path: str | None = key(None, "reward run directory or model")
    reward_fn: str | None = key(None, "module:function(prompts, responses) -> scores, instead of a reward model")
    dataset_path: str | None = key(None, "prompts: {\"prompt\"} (string or messages) or {\"messages\"} rows")
    output_dir: str = key("runs/ppo", "run directory (started again, it resumes from its last checkpoint)")
    max_steps: int = key(100, "PPO steps (one rollout and its update each)")
    seed: int = key(0, "seed for sampling, data order and adapter initialisation")
    report_to: Any = key("none", "none | wandb | tensorboard, or a list")
    batch_size: int = key(16, "prompts per rollout, all processes together")
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
    kl_coef: float = key(0.05, "KL penalty coefficient (the start value when kl_target is set)")
    kl_target: float | None = key(None, "adaptive KL: target KL per sequence in nats (null: fixed kl_coef)")
    kl_horizon: int = key(10000, "adaptive KL horizon, in rollout rows")
    kl_estimator: str = key("k1", "per-token KL estimate: k1 (log ratio) | k3 (non-negative, lower variance)")
    gamma: float = key(1.0, "discount")
    lam: float = key(0.95, "GAE lambda")
    clip_range: float = key(0.2, "policy ratio clip")
    clip_range_value: float = key(0.2, "value clip around the rollout's values")
    vf_coef: float = key(0.1, "weight of the value loss")
    whiten_rewards: bool = key(False, "rescale per-token rewards to unit variance before GAE")
    normalize_scores: bool | None = key(None, "normalise scores with the reward model's mean/std (null: when known)")
    score_clip: float | None = key(None, "clip (normalised) scores to [-score_clip, score_clip]")
    missing_eos_penalty: float | None = key(None, "subtracted from the score of responses cut off without EOS")
    lora_r: int = key(16, "policy (and fresh value) LoRA rank")
    lora_alpha: int = key(32, "LoRA alpha (scale = alpha / r)")
    lora_target_modules: Any = key("all-linear", "module names, or 'all-linear'")
    value_model: str = key("lora_head", "lora_head (own LoRA + head) | policy_head (head on the policy's states)")
    save_steps: int = key(50, "checkpoint every this many steps (and at the last one)")
    log_completions_steps: int = key(10, "sample completions to completions.jsonl (and W&B) every this many steps")
    dtype: str = key("auto", "auto (bf16 on a GPU that has it, else fp32) | bfloat16 | float16 | float32")

    def __post_init__(self):
        for name in ("policy_path", "dataset_path"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is not set")
        if bool(self.reward_model_path) == bool(self.reward_fn):
            raise ConfigError("set exactly one of reward_model_path and reward_fn")
        positive = ("max_steps", "batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs",
                    "max_new_tokens", "save_steps", "log_completions_steps", "max_prompt_length", "lora_r")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.mini_batch_size:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by mini_batch_size "
                              f"{self.mini_batch_size}")
        if self.mini_batch_size % self.gradient_accumulation_steps:
            raise ConfigError(f"mini_batch_size {self.mini_batch_size} is not divisible by "
                              f"gradient_accumulation_steps {self.gradient_accumulation_steps}")
        choices = {"lr_scheduler": SCHEDULERS, "value_model": model_set.VALUE_MODELS, "kl_estimator": ("k1", "k3"),
                   "dtype": ("auto", "bfloat16", "float16", "float32")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} '{getattr(self, name)}' is not one of {', '.join(allowed)}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive (PPO samples), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ConfigError(f"kl_target must be positive, got {self.kl_target}")
        if min(self.kl_coef, self.clip_range, self.clip_range_value, self.vf_coef, self.learning_rate) < 0:
            raise ConfigError("kl_coef, clip ranges, vf_coef and learning_rate must not be negative")

    def per_process(self, num_processes: int) -> tuple[int, int]:
        """(rollout rows, micro-batch rows) of each process."""
        micro = self.mini_batch_size // self.gradient_accumulation_steps
        if self.batch_size % num_processes or micro % num_processes:
            raise ConfigError(f"batch_size {self.batch_size} and mini_batch_size / gradient_accumulation_steps "
                              f"{micro} must be divisible by the {num_processes} processes")
        return self.batch_size // num_processes, micro // num_processes

    def optimizer_steps(self) -> int:
        return self.max_steps * self.ppo_epochs * (self.batch_size // self.mini_batch_size)


def trackers(report_to: Any) -> list[str]:
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [t for t in targets if t != "none"]


def prompt_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """The prompts of a step (1-based): consecutive passes over the data, each pass in its own seeded order.
    A function of the step alone, so every process agrees and a resumed run continues where it stopped."""
    orders: dict[int, list[int]] = {}
    out = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, offset = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append(orders[epoch][offset])
    return out


def advantages_and_returns(ro: rollout.Rollout, config: PPOConfig, kl_coef: float, stats: dict | None):
    """(scores after penalties [B], token rewards [B, R], per-token KL [B, R], advantages [B, R], returns [B, R])."""
    scores = core.score_with_penalties(
        ro.scores, ro.ended_with_eos, config.missing_eos_penalty,
        reward_mean=stats["mean"] if stats else 0.0, reward_std=stats["std"] if stats else 1.0,
        normalize=stats is not None, clip=config.score_clip)
    rewards, kl = core.token_rewards(scores, ro.logprobs, ro.ref_logprobs, ro.mask, kl_coef, config.kl_estimator)
    if config.whiten_rewards:
        rewards = core.masked_whiten(rewards, ro.mask, shift_mean=False)
    advantages, returns = core.gae(rewards, ro.values, ro.mask, config.gamma, config.lam)
    return scores, rewards, kl, core.masked_whiten(advantages, ro.mask), returns


def pass_loss(model, part: str, ro: rollout.Rollout, rows, advantages, returns, config: PPOConfig):
    """(loss, its logged parts) of one training pass over `rows`: the policy loss, the value loss, or both, as
    the pass computes logits, values or both."""
    logits, values = model(ro.input_ids[rows], ro.attention_mask[rows], ro.prompt_length, part)
    loss, logged = 0.0, {}
    if logits is not None:
        logprobs = core.logprobs_from_logits(logits, ro.response_ids[rows], config.temperature)
        pg_loss, stats = core.policy_loss(logprobs, ro.logprobs[rows], advantages[rows], ro.mask[rows],
                                          config.clip_range)
        loss, logged = loss + pg_loss, {**logged, "loss_policy": pg_loss, **stats}
    if values is not None:
        vf_loss, stats = core.value_loss(values, ro.values[rows], returns[rows], ro.mask[rows], config.clip_range_value)
        loss, logged = loss + config.vf_coef * vf_loss, {**logged, "loss_value": vf_loss, **stats}
    return loss, logged


def ppo_update(model, optimizer, scheduler, accelerator, ro: rollout.Rollout, advantages, returns,
               config: PPOConfig, step: int) -> dict[str, float]:
    """`ppo_epochs` passes over the whole rollout in shuffled mini-batches, an optimizer step each. Every process
    computes its share of each micro-batch, and losses are token means over the whole mini-batch: the update is the
    same for any number of processes and accumulation steps."""
    order_rng = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    copies = accelerator.num_processes * config.gradient_accumulation_steps  # gradients are averaged over these
    sums: dict[str, torch.Tensor] = defaultdict(float)
    policy = accelerator.unwrap_model(model)
    model.train()
    for _ in range(config.ppo_epochs):
        order = torch.randperm(len(ro.mask), generator=order_rng).to(ro.mask.device)
        for mini in order.split(config.mini_batch_size):
            tokens = ro.mask[mini].sum()
            for micro in mini.split(config.mini_batch_size // config.gradient_accumulation_steps):
                rows = micro.chunk(accelerator.num_processes)[accelerator.process_index]
                share = ro.mask[rows].sum() / tokens  # of the mini-batch's tokens
                with accelerator.accumulate(model):
                    passes = policy.training_passes()
                    for part in passes:  # a backward after each pass: one pass's activations held at a time
                        loss, logged = pass_loss(model, part, ro, rows, advantages, returns, config)
                        core.check_finite("loss", loss, step)
                        distributed.backward(accelerator, loss * share * copies, last=part == passes[-1])
                        for name, value in logged.items():
                            sums[name] += value.detach().float() * share
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
    model.eval()
    mini_batches = config.ppo_epochs * len(ro.mask) // config.mini_batch_size
    return {name: (accelerator.reduce(total, "sum") / mini_batches).item() for name, total in sums.items()}


def rollout_metrics(ro: rollout.Rollout, rewards, kl) -> dict[str, float]:
    """Step metrics over the whole rollout."""
    return {"ppo/score_mean": ro.scores.float().mean().item(), "ppo/reward_mean": rewards.sum(1).mean().item(),
            "ppo/kl": kl.sum(1).mean().item(), "ppo/entropy": ((ro.entropy * ro.mask).sum() / ro.mask.sum()).item(),
            "ppo/response_length": ro.mask.sum(1).mean().item(),
            "ppo/eos_fraction": ro.ended_with_eos.float().mean().item()}


def log_completions(run_dir: Path, step: int, ro: rollout.Rollout, scores, accelerator, report_to: list[str]) -> None:
    """A few samples of the rollout, to completions.jsonl and (if used) a W&B table."""
    shown = [{"prompt": p if isinstance(p, str) else json.dumps(p, ensure_ascii=False), "response": r,
              "score": float(s), "score_after_penalties": float(a)}
             for p, r, s, a in zip(ro.prompts, ro.responses, ro.scores, scores)][:COMPLETIONS_SHOWN]
    log = runs.MetricsFile(run_dir, COMPLETIONS)
    for row in shown:
        log.log(step, row)
    if "wandb" in report_to or "all" in report_to:
        import wandb

        columns = ["step", *shown[0]]
        table = wandb.Table(columns=columns, data=[[step, *row.values()] for row in shown])
        accelerator.get_tracker("wandb").log({"completions": table}, step=step)


def prepare_run_dir(config: PPOConfig, accelerator) -> tuple[Path, Path | None]:
    """Write config.yaml and tracker settings, drop half-written checkpoints, find the one to resume from."""
    run_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        for broken in runs.discard_incomplete_checkpoints(run_dir):
            print(f"removed incomplete checkpoint {broken}")
    accelerator.wait_for_everyone()
    return run_dir, runs.last_checkpoint(run_dir)


def build_and_prepare(config: PPOConfig, accelerator):
    """(prepared model, optimizer, scheduler, reward, facts for the log): the model set built alike on every process,
    then handed to accelerate (and DeepSpeed) together with its optimizer."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    set_seed(config.seed)  # the same fresh adapters on every process
    with distributed.whole_models(accelerator):
        model, reward, info = model_set.build(config, accelerator.device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.learning_rate)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=0,
                              num_training_steps=config.optimizer_steps())
    distributed.configure_deepspeed(accelerator, config.per_process(accelerator.num_processes)[1],
                                    config.gradient_accumulation_steps, config.mini_batch_size, config.max_grad_norm)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.unwrap_model(model).eval()
    return model, optimizer, scheduler, reward, info


def run(config: PPOConfig) -> dict[str, Any]:
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    if runs.is_finished(config.output_dir) and runs.read_summary(config.output_dir)["global_step"] >= config.max_steps:
        print(f"{config.output_dir} is already finished (summary.json); nothing to do")
        return runs.read_summary(config.output_dir)
    runs.setup_tracking(config.report_to, config.output_dir, "ppo")
    accelerator = distributed.make_accelerator(
        several_passes=config.value_model == "lora_head",
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=trackers(config.report_to) or None,
        step_scheduler_with_optimizer=False,  # the scheduler steps once per optimizer step, on any process count
        project_config=ProjectConfiguration(project_dir=config.output_dir,
                                            logging_dir=str(Path(config.output_dir) / "tensorboard")))
    local_rows, micro = config.per_process(accelerator.num_processes)
    tokenizer = load_tokenizer(config.policy_path, padding_side="left")
    data = rollout.read_prompts(config.dataset_path, tokenizer, config.max_prompt_length)  # bad rows fail here
    run_dir, resume = prepare_run_dir(config, accelerator)

    model, optimizer, scheduler, reward, info = build_and_prepare(config, accelerator)
    policy = accelerator.unwrap_model(model)
    stats = model_set.normalisation(config, reward.stats)
    kl_control = core.kl_controller(config.kl_coef, config.kl_target, config.kl_horizon)
    set_seed(config.seed, device_specific=True)  # each process samples from its own stream
    start = 0
    if resume:
        state = checkpoint.load(resume, model, optimizer, scheduler, accelerator)
        kl_control.load_state_dict(state["kl_controller"])
        start = state["step"]
    if accelerator.is_main_process:
        print(f"reward: {info['reward']}; {len(data.prompts)} prompts ({data.too_long} too long, dropped); "
              f"{info['trainable_parameters']:,} trainable parameters; {accelerator.num_processes} process(es)"
              + (f"; resuming from {resume}" if resume else ""))
        runs.MetricsFile(run_dir).truncate_after(start)
        runs.MetricsFile(run_dir, COMPLETIONS).truncate_after(start)
        (run_dir / runs.SUMMARY).unlink(missing_ok=True)  # a finished run extended to more steps is unfinished again
    hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config_to_dict(config).items()}
    accelerator.init_trackers(os.environ.get("WANDB_PROJECT", "rlhf"), config=hparams)  # TensorBoard: scalars only

    metrics: dict[str, float] = {}
    progress = tqdm(total=config.max_steps, initial=start, disable=not accelerator.is_main_process, desc="ppo")
    for step in range(start + 1, config.max_steps + 1):
        indices = prompt_indices(step, config.batch_size, len(data.prompts), config.seed)
        mine = indices[accelerator.process_index * local_rows:(accelerator.process_index + 1) * local_rows]
        ro, timings = rollout.collect(policy, reward, tokenizer, [data.prompts[i] for i in mine],
                                      [data.texts[i] for i in mine], config.max_new_tokens, config.temperature,
                                      config.top_p, micro, accelerator.device,
                                      distributed.weights_for_generation(model, accelerator))
        ro = distributed.gather_rollout(ro, accelerator, tokenizer.pad_token_id)  # every process: the whole batch
        for name in ("scores", "logprobs", "ref_logprobs", "values"):
            core.check_finite(name, getattr(ro, name), step)
        kl_coef = kl_control.value
        scores, rewards, kl, advantages, returns = advantages_and_returns(ro, config, kl_coef, stats)
        train_start = time.perf_counter()
        train_stats = ppo_update(model, optimizer, scheduler, accelerator, ro, advantages, returns, config, step)
        metrics = rollout_metrics(ro, rewards, kl)
        kl_control.update(metrics["ppo/kl"], config.batch_size)
        metrics.update({"ppo/kl_coef": kl_coef, **{f"ppo/{k}": v for k, v in train_stats.items()},
                        "ppo/lr": scheduler.get_last_lr()[0], **{f"time/{k}": v for k, v in timings.items()},
                        "time/training_s": time.perf_counter() - train_start})
        if accelerator.is_main_process:
            runs.MetricsFile(run_dir).log(step, metrics)
            if step % config.log_completions_steps == 0:
                log_completions(run_dir, step, ro, scores, accelerator, trackers(config.report_to))
        accelerator.log(metrics, step=step)
        progress.update(1)
        progress.set_postfix(score=f"{metrics['ppo/score_mean']:.3f}", kl=f"{metrics['ppo/kl']:.3f}")
        if step % config.save_steps == 0 or step == config.max_steps:
            checkpoint.save(run_dir, step, model, optimizer, scheduler,
                            {"prompts_seen": step * config.batch_size, "kl_controller": kl_control.state_dict()},
                            accelerator)
    progress.close()

    with distributed.full_parameters(policy.trainable_parameters(), accelerator):
        if accelerator.is_main_process:
            checkpoint.save_final(run_dir, policy, tokenizer)
    summary = {"global_step": config.max_steps, "world_size": accelerator.num_processes, "reward": info["reward"],
               "prompts": len(data.prompts), "prompts_too_long": data.too_long, **metrics}
    if accelerator.is_main_process:
        runs.write_summary(run_dir, summary)
    accelerator.end_training()
    return summary


def main(argv: list[str]) -> int:
    if wants_help(argv, PPOConfig, __doc__.splitlines()[0]):
        return 0
    summary = run(load_config(PPOConfig, argv))
    print({k: v for k, v in summary.items() if k.startswith(("ppo/score", "ppo/kl", "global_step"))})
    return 0
