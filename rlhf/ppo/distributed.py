"""PPO across processes: the Accelerator, DeepSpeed settings, ZeRO-3 gathering, one rollout for all processes.

Kept out of the loop so that train.py reads the same for one process, DDP and ZeRO-2/3; no-ops on one process."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace

import torch

from rlhf.config import on_gpu
from rlhf.errors import ConfigError
from rlhf.runs import launched_processes
from rlhf.ppo.rollout import Rollout


def make_accelerator(several_passes: bool = False, **kwargs):
    """An Accelerator joining every launched process. Without GPUs, DDP runs on accelerate's CPU backend and
    DeepSpeed on its CPU accelerator, both over gloo; ending up with fewer processes than launched is an error.
    `several_passes`: each micro-batch runs the model more than once (policy, then value), each pass using only
    some of the trained weights, which DDP must be told."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    several_cpu = not on_gpu() and launched_processes() > 1
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=several_passes)]
    if several_cpu and deepspeed:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(cpu=several_cpu and not deepspeed, kwargs_handlers=handlers, **kwargs)
    if accelerator.num_processes != launched_processes():
        raise ConfigError(f"{launched_processes()} processes were launched but PPO runs as "
                          f"{accelerator.num_processes}; see docs/distributed.md")
    return accelerator


def uses_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def zero_stage(accelerator) -> int:
    """The DeepSpeed ZeRO stage, 0 without DeepSpeed."""
    return accelerator.state.deepspeed_plugin.zero_stage if uses_deepspeed(accelerator) else 0


def configure_deepspeed(accelerator, micro_rows: int, gradient_accumulation_steps: int, mini_batch_size: int,
                        max_grad_norm: float) -> None:
    """Give DeepSpeed PPO's batch sizes and gradient clipping (DeepSpeed clips inside its own step; accelerate
    finds batch sizes on data loaders, which PPO does not use). A DeepSpeed config that says otherwise is an error."""
    if not uses_deepspeed(accelerator):
        return
    settings = accelerator.state.deepspeed_plugin.deepspeed_config
    values = {"train_micro_batch_size_per_gpu": micro_rows, "gradient_accumulation_steps": gradient_accumulation_steps,
              "train_batch_size": mini_batch_size, "gradient_clipping": max_grad_norm}
    for name, value in values.items():
        if settings.get(name, "auto") not in ("auto", value):
            raise ConfigError(f"the DeepSpeed config sets {name}={settings[name]} but this PPO config needs {value}; "
                              f"set it to 'auto'")
        settings[name] = value


@contextmanager
def whole_models(accelerator):
    """Load models unsplit even when ZeRO-3 would split them while loading (`zero3_init_flag`): an SFT LoRA is
    merged into the base, adapters are added to it, and a separate reward model (which DeepSpeed never wraps) must
    be whole. `accelerator.prepare` splits the PPO model afterwards; generation holds it whole anyway."""
    if zero_stage(accelerator) != 3:
        yield
        return
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # transformers' switch for splitting while loading
    try:
        yield
    finally:
        set_hf_deepspeed_config(accelerator.state.deepspeed_plugin.dschf)


@contextmanager
def weights_for_generation(model, accelerator):
    """Under ZeRO-3, gather the prepared model's weights once for a whole `generate` call, with DeepSpeed's
    per-module hooks off: otherwise every layer is gathered and released again for every new token."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        remove_hooks(model)
        try:
            yield
        finally:
            add_hooks(model)


@contextmanager
def full_parameters(params, accelerator):
    """The full values of `params` inside the block (ZeRO-3 keeps a slice on each process). Every process enters."""
    if zero_stage(accelerator) != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params)):
        yield


def gather_rollout(ro: Rollout, accelerator, pad_token_id: int) -> Rollout:
    """The whole batch on every process, each process's rows in process order (prompts left-padded, responses
    right-padded to the longest of all). Every process then computes the same advantages, whitened over the whole
    batch, and takes its share of every mini-batch: the update does not depend on the process count."""
    if accelerator.num_processes == 1:
        return ro
    from accelerate.utils import gather_object

    def gathered(tensor: torch.Tensor, pad, left: bool = False) -> torch.Tensor:
        return accelerator.gather(accelerator.pad_across_processes(tensor, dim=1, pad_index=pad, pad_first=left))

    p = ro.prompt_length
    prompt_ids = gathered(ro.input_ids[:, :p], pad_token_id, left=True)
    prompt_mask = gathered(ro.attention_mask[:, :p], 0, left=True)
    per_token = {name: gathered(getattr(ro, name), 0)
                 for name in ("mask", "logprobs", "ref_logprobs", "values", "entropy", "value_states")
                 if getattr(ro, name) is not None}
    return replace(
        ro, prompts=gather_object(ro.prompts), responses=gather_object(ro.responses),
        input_ids=torch.cat([prompt_ids, gathered(ro.response_ids, pad_token_id)], dim=1),
        attention_mask=torch.cat([prompt_mask, gathered(ro.attention_mask[:, p:], 0)], dim=1),
        prompt_length=prompt_ids.shape[1], ended_with_eos=accelerator.gather(ro.ended_with_eos.long()).bool(),
        scores=accelerator.gather(ro.scores), **per_token)


def backward(accelerator, loss: torch.Tensor, last: bool) -> None:
    """`accelerator.backward`, for one of several backward passes of a micro-batch (policy, then value). Under
    DeepSpeed, accelerate's backward also steps the engine at an accumulation boundary, so the passes before the last
    call the engine's own backward outside any boundary. ZeRO counts micro-batches by backward passes, and
    overwrites (rather than adds to) a gradient first set in micro-batch 0: a value gradient arriving in a second
    pass would land on the last step's stale one. Marking the pass as not yet ended keeps the micro-batch's passes
    on one count, which is how DeepSpeed treats the phases of one backward (tested against one process)."""
    if last or not uses_deepspeed(accelerator):
        accelerator.backward(loss)
        return
    engine = accelerator.deepspeed_engine_wrapped.engine
    engine.set_gradient_accumulation_boundary(is_boundary=False)
    engine.backward(loss)
    engine.optimizer._epilogue_ran_this_backward = False
