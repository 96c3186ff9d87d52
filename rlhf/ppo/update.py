"""The PPO update: `ppo_epochs` passes of clipped policy and value losses (and, with `kl_in_loss`, a KL term) over
shuffled mini-batches of a rollout."""

from __future__ import annotations

from collections import defaultdict

import torch

from rlhf.ppo import core, distributed
from rlhf.ppo.rollout import Rollout
from rlhf.ppo.stage_config import PPOStageConfig


def pass_loss(model, part: str, ro: Rollout, rows, advantages, returns, kl_coef: float, config: PPOStageConfig):
    """(loss, its logged parts) of one training pass over `rows`: the policy loss (+ kl_coef * the KL term with
    `kl_in_loss`), the value loss, or both, as the pass computes logits, values or both."""
    states = None if ro.value_states is None else ro.value_states[rows]  # reward_head: the states the rollout kept
    logits, values = model(ro.input_ids[rows], ro.attention_mask[rows], ro.prompt_length, part, reward_states=states)
    loss, logged = 0.0, {}
    if logits is not None:
        logprobs = core.logprobs_from_logits(logits, ro.response_ids[rows], config.temperature)
        pg_loss, stats = core.policy_loss(logprobs, ro.logprobs[rows], advantages[rows], ro.mask[rows],
                                          config.clip_range)
        loss, logged = loss + pg_loss, {**logged, "loss_policy": pg_loss, **stats}
        if config.kl_in_loss and ro.ref_logprobs is not None:
            kl = core.kl_loss(logprobs, ro.ref_logprobs[rows], ro.mask[rows])
            loss, logged = loss + kl_coef * kl, {**logged, "loss_kl": kl}
    if values is not None:
        vf_loss, stats = core.value_loss(values, ro.values[rows], returns[rows], ro.mask[rows], config.clip_range_value)
        loss, logged = loss + config.vf_coef * vf_loss, {**logged, "loss_value": vf_loss, **stats}
    return loss, logged


def ppo_update(model, optimizer, scheduler, accelerator, ro: Rollout, advantages, returns, kl_coef: float,
               config: PPOStageConfig, step: int) -> dict[str, float]:
    """`ppo_epochs` passes over the whole rollout in shuffled mini-batches, an optimizer step each (`returns`: the
    value targets, None without a value model; `kl_coef`: this step's, for `kl_in_loss`). Every process
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
                        with policy.training_pass(part):
                            loss, logged = pass_loss(model, part, ro, rows, advantages, returns, kl_coef, config)
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
