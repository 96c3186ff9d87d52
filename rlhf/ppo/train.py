"""`rlhf ppo --config FILE.yaml [--key value ...]`: PPO against a reward model (or a rule-based reward).

`run` is `setup`, `train_step` per step (sample, score, advantages, update), and `finish`, for any process count."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhf import runs
from rlhf.config import command_main, config_to_dict
from rlhf.models import load_tokenizer
from rlhf.ppo import checkpoint, core, distributed, evaluation, model_set, rollout
from rlhf.ppo.rewards import Reward, normalizes_scores, score_normalization
from rlhf.ppo.stage_config import PPOStageConfig
from rlhf.ppo.update import ppo_update

COMPLETIONS_SHOWN = 4  # rows per logged completions table


@dataclass
class PPORun:
    """What every step reads, built once by `setup`."""

    config: PPOStageConfig
    accelerator: Any
    run_dir: Path
    tokenizer: Any
    data: rollout.Prompts
    model: Any  # the PolicyValueModel as prepared by accelerate (DDP / DeepSpeed wrapped)
    optimizer: Any
    scheduler: Any
    reward: Reward
    normalization: dict[str, float] | None  # {"mean", "std"} the scores are normalised with, or None
    kl_control: Any
    settings: rollout.Settings
    start: int  # the last step already done (when resuming)
    info: dict[str, Any]
    held_out: evaluation.HeldOut | None  # the held-out evaluation, when eval_dataset_path is set

    @property
    def policy(self) -> model_set.PolicyValueModel:
        return self.accelerator.unwrap_model(self.model)

    def probe(self) -> evaluation.Probe:
        """Sampling for the held-out evaluation, with the prepared model's weights whole while generating."""
        return evaluation.Probe(self.policy, self.reward, self.tokenizer, self.settings, self.accelerator.device,
                                self.accelerator.process_index, self.accelerator.num_processes,
                                lambda: distributed.weights_for_generation(self.model, self.accelerator))

    def state(self, step: int) -> dict[str, Any]:
        """What a checkpoint keeps besides weights and optimizer, for an exact resume."""
        return {"prompts_seen": step * self.config.prompts_per_step(), "kl_controller": self.kl_control.state_dict(),
                "score_normalization": self.normalization,
                "eval_baseline_gold": self.held_out.baseline_gold if self.held_out else None}


@dataclass
class Advantages:
    """What PPO learns from, per rollout row and response token."""

    scores: torch.Tensor  # [B] after normalisation, clipping and the missing-EOS penalty
    rewards: torch.Tensor  # [B, R] -kl_coef * KL_t on each token (0 with kl_in_loss), plus the score on the last one
    kl: torch.Tensor | None  # [B, R] per-token KL estimate; None without a reference pass (kl_coef 0)
    advantages: torch.Tensor  # [B, R] by advantage_estimator (gae, reinforce_pp: whitened over the batch)
    returns: torch.Tensor | None  # [B, R] value targets; None without a value model


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


def rollout_prompts(step: int, config: PPOStageConfig, n: int) -> list[int]:
    """The prompt of each rollout row of a step: `prompts_per_step` prompts (`prompt_indices`), each repeated
    num_samples_per_prompt times in a row, so that a prompt's samples form one group on one process."""
    k = config.num_samples_per_prompt
    return [i for i in prompt_indices(step, config.prompts_per_step(), n, config.seed) for _ in range(k)]


def estimate_advantages(ro: rollout.Rollout, config: PPOStageConfig, kl_coef: float,
                        normalization: dict[str, float] | None) -> Advantages:
    """Scores -> per-token rewards with the KL penalty (none with kl_in_loss: the loss has it) -> advantages by
    `advantage_estimator`, and GAE's returns (the one place they are made)."""
    scores = core.score_with_penalties(
        ro.scores, ro.ended_with_eos, config.missing_eos_penalty,
        reward_mean=normalization["mean"] if normalization else 0.0,
        reward_std=normalization["std"] if normalization else 1.0,
        normalize=normalization is not None, clip=config.score_clip)
    if ro.ref_logprobs is None:  # kl_coef 0: no KL term, no reference pass
        rewards, kl = core.terminal_rewards(scores, ro.mask, ro.logprobs.dtype), None
    else:
        penalty = 0.0 if config.kl_in_loss else kl_coef
        rewards, kl = core.token_rewards(scores, ro.logprobs, ro.ref_logprobs, ro.mask, penalty, config.kl_estimator)
    return Advantages(scores, rewards, kl, *token_advantages(rewards, ro, config))


def token_advantages(rewards: torch.Tensor, ro: rollout.Rollout,
                     config: PPOStageConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(advantages [B, R], value targets [B, R] or None) of the per-token rewards: GAE on the values; REINFORCE++'s
    whitened returns; or RLOO's / GRPO's advantage of each sequence reward within its group, on all its tokens."""
    estimator, k = config.advantage_estimator, config.num_samples_per_prompt
    if estimator == "gae":
        gae_rewards = core.masked_whiten(rewards, ro.mask, shift_mean=False) if config.whiten_rewards else rewards
        advantages, returns = core.gae(gae_rewards, ro.values, ro.mask, config.gamma, config.gae_lambda)
        return core.masked_whiten(advantages, ro.mask), returns
    if estimator == "reinforce_pp":
        return core.reinforce_pp_advantages(rewards, ro.mask, config.gamma), None
    sequence = (core.rloo_advantages(rewards.sum(1), k) if estimator == "rloo"
                else core.grpo_advantages(rewards.sum(1), k, config.scale_rewards))
    return core.per_token(sequence, ro.mask), None


def build_and_prepare(config: PPOStageConfig, accelerator, measure: bool = True):
    """(prepared model, optimizer, scheduler, reward, score normalisation, facts for the log): the model set built
    alike on every process, the score statistics measured on it when `measure` (a resumed run reads them from its
    checkpoint), then handed to accelerate (and DeepSpeed) together with its optimizer."""
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    set_seed(config.seed)  # the same fresh adapters on every process
    with distributed.whole_models(accelerator):
        model, reward, info = model_set.build(config, accelerator.device)
    normalization = score_normalization(config, reward.stats)
    if measure and config.score_stats == "policy" and normalizes_scores(config, reward.stats):
        normalization = starting_score_stats(config, model.to(accelerator.device), reward, accelerator)
        if info["value_from_reward"]:
            model_set.normalise_head(model.value_head, normalization)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.learning_rate)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=0,
                              num_training_steps=config.optimizer_steps())
    distributed.configure_deepspeed(accelerator, config.per_process(accelerator.num_processes)[1],
                                    config.gradient_accumulation_steps, config.mini_batch_size, config.max_grad_norm)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.unwrap_model(model).eval()
    return model, optimizer, scheduler, reward, normalization, info


def starting_score_stats(config: PPOStageConfig, model, reward, accelerator) -> dict[str, float]:
    """The reward's mean and std on the starting policy's samples of the PPO prompts (before any update)."""
    tokenizer = load_tokenizer(config.policy_path, padding_side="left")
    prompts = rollout.read_prompts(config.dataset_path, tokenizer, config.max_prompt_length).prompts
    probe = evaluation.Probe(model, reward, tokenizer, sampling_settings(config, accelerator.num_processes),
                             accelerator.device, accelerator.process_index, accelerator.num_processes)
    stats = evaluation.measure_score_stats(probe, prompts, config.score_stats_rows, config.seed)
    if accelerator.is_main_process:
        print(f"score statistics on {stats['rows']} samples of the starting policy: mean {stats['mean']:.4g}, "
              f"std {stats['std']:.4g}")
    return stats


def sampling_settings(config: PPOStageConfig, num_processes: int) -> rollout.Settings:
    """How the policy samples, the same for training rollouts, score statistics and held-out evaluation."""
    return rollout.Settings(config.max_new_tokens, config.temperature, config.top_p,
                            scoring_rows=config.per_process(num_processes)[1], top_k=config.top_k)


def setup(config: PPOStageConfig) -> PPORun:
    """Accelerator, prompts, run directory, the model set with its optimizer, and the resumed state if any."""
    from accelerate.utils import ProjectConfiguration, set_seed

    config = model_set.with_value_model(config)  # `auto` resolved: what ran is what config.yaml records
    runs.setup_tracking(config.report_to, config.output_dir, "ppo")
    accelerator = distributed.make_accelerator(
        several_passes=model_set.has_value_pass(config.critic),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=runs.trackers(config.report_to) or None,
        step_scheduler_with_optimizer=False,  # the scheduler steps once per optimizer step, on any process count
        project_config=ProjectConfiguration(project_dir=config.output_dir,
                                            logging_dir=str(Path(config.output_dir) / "tensorboard")))
    tokenizer = load_tokenizer(config.policy_path, padding_side="left")
    data = rollout.read_prompts(config.dataset_path, tokenizer, config.max_prompt_length)  # bad rows fail here
    held_out = evaluation.held_out(config, tokenizer)
    run_dir = Path(config.output_dir)
    resume = runs.prepare(run_dir, config, accelerator.is_main_process, accelerator.wait_for_everyone)

    model, optimizer, scheduler, reward, normalization, info = build_and_prepare(config, accelerator,
                                                                                 measure=not resume)
    kl_control = core.kl_controller(config.kl_coef, config.kl_target, config.kl_horizon)
    set_seed(config.seed, device_specific=True)  # each process samples from its own stream
    start = 0
    if resume:
        state = checkpoint.load(resume, model, optimizer, scheduler, accelerator)
        kl_control.load_state_dict(state["kl_controller"])
        normalization, start = state["score_normalization"], state["step"]
        if held_out:
            held_out.baseline_gold = state["eval_baseline_gold"]
    if accelerator.is_main_process:
        value_model = f"{info['value_model']} (GAE lam {config.gae_lambda})" if info["value_model"] else "none"
        print(f"value model: {value_model}; reward: {info['reward']}; "
              f"it adds {info['reward_parameters']:,} parameters to the base; "
              f"{len(data.prompts)} prompts ({data.too_long} too long, dropped); "
              f"{info['trainable_parameters']:,} trainable parameters; {accelerator.num_processes} process(es)")
        runs.MetricsFile(run_dir, runs.COMPLETIONS).truncate_after(start)
        (run_dir / runs.SUMMARY).unlink(missing_ok=True)  # a finished run extended to more steps is unfinished again
    hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config_to_dict(config).items()}
    accelerator.init_trackers(os.environ.get("WANDB_PROJECT", "rlhf"), config=hparams)  # TensorBoard: scalars only
    return PPORun(config, accelerator, run_dir, tokenizer, data, model, optimizer, scheduler, reward,
                  normalization, kl_control, sampling_settings(config, accelerator.num_processes), start, info,
                  held_out)


def train_step(ppo: PPORun, step: int) -> tuple[dict[str, float], rollout.Rollout, Advantages]:
    """One PPO step; returns its metrics, the rollout and what was learnt from it."""
    config, accelerator = ppo.config, ppo.accelerator

    # Step 1: sample responses to this process's share of the step's prompts (whole groups of
    # num_samples_per_prompt rows), recording the policy's log-probs.
    started = time.perf_counter()
    local_rows = config.batch_size // accelerator.num_processes
    mine = rollout_prompts(step, config, len(ppo.data.prompts))[
        accelerator.process_index * local_rows:(accelerator.process_index + 1) * local_rows]
    samples = rollout.sample(ppo.policy, ppo.tokenizer, [ppo.data.texts[i] for i in mine], ppo.settings, accelerator.device,
                             distributed.weights_for_generation(ppo.model, accelerator))
    sampled = time.perf_counter()

    # Step 2: score them (reference log-probs, values if there is a value model, reward), then give every process
    # the whole batch.
    ro = rollout.score(ppo.policy, ppo.reward, [ppo.data.prompts[i] for i in mine], samples, ppo.settings,
                       with_reference=config.uses_reference)
    scored = time.perf_counter()
    ro = distributed.gather_rollout(ro, accelerator, ppo.tokenizer.pad_token_id)
    for name in ("scores", "logprobs", "ref_logprobs", "values"):
        if getattr(ro, name) is not None:
            core.check_finite(name, getattr(ro, name), step)

    # Step 3: per-token rewards with the KL penalty, then advantages (and GAE's returns).
    kl_coef = ppo.kl_control.value
    learn = estimate_advantages(ro, config, kl_coef, ppo.normalization)
    updating = time.perf_counter()

    # Step 4: the clipped policy (and value) updates, `ppo_epochs` passes over shuffled mini-batches.
    train_stats = ppo_update(ppo.model, ppo.optimizer, ppo.scheduler, accelerator, ro, learn.advantages, learn.returns,
                             kl_coef, config, step)

    # Step 5: the step's metrics; the adaptive KL coefficient follows the KL just measured.
    metrics = {"ppo/score_mean": ro.scores.float().mean().item(), "ppo/reward_mean": learn.rewards.sum(1).mean().item(),
               **({"ppo/kl": learn.kl.sum(1).mean().item()} if learn.kl is not None else {}),
               "ppo/entropy": ((ro.entropy * ro.mask).sum() / ro.mask.sum()).item(),
               "ppo/response_length": ro.mask.sum(1).mean().item(),
               "ppo/eos_fraction": ro.ended_with_eos.float().mean().item()}
    if learn.kl is not None:  # a fixed kl_coef of 0 measures no KL and has nothing to adapt
        ppo.kl_control.update(metrics["ppo/kl"], config.batch_size)
    metrics.update({"ppo/kl_coef": kl_coef, **{f"ppo/{k}": v for k, v in train_stats.items()},
                    "ppo/lr": ppo.scheduler.get_last_lr()[0], "time/generation_s": sampled - started,
                    "time/scoring_s": scored - sampled, "time/training_s": time.perf_counter() - updating})
    return metrics, ro, learn


def log_metrics(ppo: PPORun, step: int, metrics: dict[str, float]) -> None:
    """A step's metrics to metrics.jsonl and the trackers."""
    if ppo.accelerator.is_main_process:
        runs.MetricsFile(ppo.run_dir).log(step, metrics)
    ppo.accelerator.log(metrics, step=step)


def log_completions(ppo: PPORun, step: int, ro: rollout.Rollout, scores: torch.Tensor) -> None:
    """A few samples of the rollout, to completions.jsonl and (if used) a W&B table."""
    shown = [{"prompt": p if isinstance(p, str) else json.dumps(p, ensure_ascii=False), "response": text,
              "score": float(s), "score_after_penalties": float(a)}
             for p, text, s, a in zip(ro.prompts, ro.responses, ro.scores, scores)][:COMPLETIONS_SHOWN]
    log = runs.MetricsFile(ppo.run_dir, runs.COMPLETIONS)
    for row in shown:
        log.log(step, row)
    targets = runs.trackers(ppo.config.report_to)
    if "wandb" in targets or "all" in targets:
        import wandb

        table = wandb.Table(columns=["step", *shown[0]], data=[[step, *row.values()] for row in shown])
        ppo.accelerator.get_tracker("wandb").log({"completions": table}, step=step)


def finish(ppo: PPORun, metrics: dict[str, float]) -> dict[str, Any]:
    """`final/` (the policy adapter and tokenizer), then summary.json; closes the trackers."""
    with distributed.full_parameters(ppo.policy.trainable_parameters(), ppo.accelerator):
        if ppo.accelerator.is_main_process:
            checkpoint.save_final(ppo.run_dir, ppo.policy, ppo.tokenizer)
    summary = {"global_step": ppo.config.max_steps, "world_size": ppo.accelerator.num_processes,
               "value_model": ppo.info["value_model"], "reward": ppo.info["reward"], "prompts": len(ppo.data.prompts),
               "prompts_too_long": ppo.data.too_long, **metrics}
    if ppo.accelerator.is_main_process:
        runs.write_summary(ppo.run_dir, summary)
    ppo.accelerator.end_training()
    return summary


def run(config: PPOStageConfig) -> dict[str, Any]:
    """The PPO stage: every step from the last checkpoint to `max_steps`, then the final adapter and summary."""
    from tqdm.auto import tqdm

    if runs.is_finished(config.output_dir) and runs.read_summary(config.output_dir)["global_step"] >= config.max_steps:
        print(f"{config.output_dir} is already finished (summary.json); nothing to do")
        return runs.read_summary(config.output_dir)
    ppo = setup(config)
    main_process = ppo.accelerator.is_main_process
    metrics: dict[str, float] = {}
    if ppo.held_out and ppo.start == 0:  # the starting policy: KL 0, and the gold scores later steps are compared with
        start_metrics, rows = ppo.held_out.evaluate(ppo.probe())
        ppo.held_out.baseline_gold = [r["gold"] for r in rows] if ppo.held_out.judge else None
        log_metrics(ppo, 0, start_metrics)
    progress = tqdm(total=config.max_steps, initial=ppo.start, disable=not main_process, desc="ppo")
    for step in range(ppo.start + 1, config.max_steps + 1):
        metrics, ro, learn = train_step(ppo, step)
        if ppo.held_out and (step == config.max_steps or (config.eval_steps and step % config.eval_steps == 0)):
            metrics.update(ppo.held_out.evaluate(ppo.probe())[0])
        log_metrics(ppo, step, metrics)
        if main_process and step % config.log_completions_steps == 0:
            log_completions(ppo, step, ro, learn.scores)
        progress.update(1)
        progress.set_postfix({k: f"{metrics[f'ppo/{k}']:.3f}" for k in ("score_mean", "kl") if f"ppo/{k}" in metrics})
        if step % config.save_steps == 0 or step == config.max_steps:
            checkpoint.save(ppo.run_dir, step, ppo.model, ppo.optimizer, ppo.scheduler, ppo.state(step),
                            ppo.accelerator)
    progress.close()
    return finish(ppo, metrics)


def print_summary(summary: dict[str, Any]) -> None:
    print({k: v for k, v in summary.items() if k.startswith(("ppo/score", "ppo/kl", "eval/", "global_step"))})


def main(argv: list[str]) -> int:
    return command_main(argv, PPOStageConfig, __doc__, lambda config: print_summary(run(config)))
