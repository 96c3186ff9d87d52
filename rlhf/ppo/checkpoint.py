"""PPO checkpoints (only what training changes, written atomically, resumed exactly) and the final policy adapter."""

from __future__ import annotations

import copy
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf import runs
from rlhf.ppo import distributed
from rlhf.models import ADAPTER_WEIGHTS
from rlhf.ppo.model_set import POLICY, PolicyValueModel, load_adapter_weights

# A checkpoint holds the trained adapters and value head (neither value adapter nor head without a value model), the
# optimizer, the LR scheduler, the KL controller, every process's RNG states and the step (which fixes the data
# position). Under DeepSpeed the optimizer is DeepSpeed's own checkpoint of the trained weights (one shard per
# process), which resume reads; the adapter folders are then for people and tools. It is written to
# `checkpoint-N.tmp`, renamed, and then marked COMPLETE; the last `KEEP` are kept.

KEEP = 2
VALUE_HEAD = "value_head.pt"
DEEPSPEED = "deepspeed"  # DeepSpeed's folder in a checkpoint
STATE = "trainer_state.json"


def save_adapter(model: PolicyValueModel, adapter: str, folder: Path) -> None:
    """One adapter as a peft folder (config + weights) that loads on the PPO base."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    peft_model = model.peft_of(adapter)
    weights = get_peft_model_state_dict(peft_model, adapter_name=adapter, save_embedding_layers=False)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(folder / ADAPTER_WEIGHTS))
    config = copy.deepcopy(peft_model.peft_config[adapter])
    config.inference_mode = True
    config.save_pretrained(str(folder))


def load_adapter(model: PolicyValueModel, adapter: str, folder: Path) -> None:
    from safetensors.torch import load_file

    load_adapter_weights(model.peft_of(adapter), adapter, load_file(str(folder / ADAPTER_WEIGHTS)), str(folder))


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, model, optimizer, scheduler, state: dict[str, Any], accelerator) -> Path:
    """Write checkpoint-`step` of the prepared `model` atomically; every process takes part (RNG states, ZeRO-3
    gathering, DeepSpeed's optimizer shards), the main process writes the rest."""
    target = run_dir / runs.CHECKPOINTS / f"checkpoint-{step}"
    tmp = runs.staging_dir(target) if accelerator.is_main_process else target.with_name(target.name + ".tmp")
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
    policy = accelerator.unwrap_model(model)
    with distributed.full_parameters(policy.trainable_parameters(), accelerator):
        if accelerator.is_main_process:
            for adapter in policy.adapters:
                save_adapter(policy, adapter, tmp / adapter)
            if policy.value_head is not None:
                torch.save(policy.value_head.state_dict(), tmp / VALUE_HEAD)
    if distributed.uses_deepspeed(accelerator):  # optimizer states (and fp32 weights) split across processes
        model.save_checkpoint(str(tmp), tag=DEEPSPEED, exclude_frozen_parameters=True, save_latest=False)
    elif accelerator.is_main_process:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE).write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        runs.replace_dir(tmp, target)
        runs.mark_complete(target)
        for old in runs.complete_checkpoints(run_dir)[:-KEEP]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return target


def load(path: Path, model, optimizer, scheduler, accelerator) -> dict[str, Any]:
    """Restore a checkpoint into the prepared objects; returns its trainer state ({"step", ...}).
    RNG states are restored too, so call this last before the training loop."""
    if distributed.uses_deepspeed(accelerator):  # trained weights, optimizer shards and DeepSpeed's fp32 copies
        model.load_checkpoint(str(path), tag=DEEPSPEED, load_module_strict=False, load_lr_scheduler_states=False)
    else:
        policy = accelerator.unwrap_model(model)
        for adapter in policy.adapters:
            load_adapter(policy, adapter, path / adapter)
        if policy.value_head is not None:
            policy.value_head.load_state_dict(torch.load(path / VALUE_HEAD, map_location="cpu"))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
    set_rng_state(torch.load(path / f"rng_state_{accelerator.process_index}.pt", weights_only=False))
    return json.loads((path / STATE).read_text())


def save_final(run_dir: Path, model: PolicyValueModel, tokenizer) -> Path:
    """`final/`: the policy adapter (its config names the PPO base, e.g. the SFT run) and the tokenizer."""
    final = run_dir / runs.FINAL
    with runs.atomic_dir(final) as tmp:
        save_adapter(model, POLICY, tmp)
        tokenizer.save_pretrained(str(tmp))
    return final
