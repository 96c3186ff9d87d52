"""The critic-free anchors of scripts/bench.py: TRL's `GRPOTrainer` and `RLOOTrainer`, from the TRL installed here.

    python scripts/bench_trl_grpo_rloo.py --spec JSON --result FILE

Uses only TRL/transformers/peft (not this project). Policy = the bench's model with a peft LoRA adapter (the
reference, loaded only when `beta` > 0, is the adapter switched off), reward = the bench's reward model merged into
a full classifier, no vLLM, on the CPU. Generation and scoring are timed by wrapping the trainer class's `_generate`,
`_calculate_rewards` and gradient-free `_get_per_token_logps_and_entropies` (reference and old log-probs); training
is the rest of each rollout's steps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from bench import Settings, lora, ppo_result, read_jsonl  # scripts/bench.py: its module level needs only the stdlib
from bench_trl_ppo import PhaseTimer, main, step_callback


def trainer_classes(estimator: str):
    """(trainer, config) classes of TRL for `estimator`."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    return {"grpo": (GRPOTrainer, GRPOConfig), "rloo": (RLOOTrainer, RLOOConfig)}[estimator]


def time_phases(trainer_class, timer: PhaseTimer) -> None:
    """Wrap the trainer class's sampling, reward and gradient-free log-prob methods with `timer`."""
    trainer_class._generate = timer.wrap(trainer_class._generate, "generation")
    trainer_class._calculate_rewards = timer.wrap(trainer_class._calculate_rewards, "scoring")
    trainer_class._get_per_token_logps_and_entropies = timer.wrap(
        trainer_class._get_per_token_logps_and_entropies, "scoring", only_without_grad=True)


def config_args(s: Settings, out: str) -> dict:
    """GRPOConfig / RLOOConfig arguments for the bench's settings: `batch_size` completions per rollout (groups of
    `num_samples`), `mini_batches` optimizer steps per pass over it, `ppo_epochs` passes, KL coefficient = `beta`."""
    return dict(
        output_dir=out, per_device_train_batch_size=s.batch_size // s.mini_batches, steps_per_generation=s.mini_batches,
        num_iterations=s.ppo_epochs, num_generations=s.num_samples, max_steps=s.steps * s.mini_batches * s.ppo_epochs,
        max_completion_length=s.response_length, temperature=1.0, top_k=0, top_p=1.0, beta=s.kl_coef,
        learning_rate=s.learning_rate, lr_scheduler_type="constant", warmup_steps=0, use_cpu=True, use_vllm=False,
        model_init_kwargs={"dtype": s.dtype}, bf16=False, gradient_checkpointing=False, disable_dropout=True, save_strategy="no", report_to="none",
        logging_steps=s.steps, disable_tqdm=True, seed=s.seed)


def run(spec: dict) -> dict:
    """One measured run of TRL's trainer for the spec's estimator: completions/s and the seconds of each phase."""
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed

    s, model = Settings(**spec["settings"]), spec["model"]
    trainer_class, config_class = trainer_classes(s.estimator)
    timer = PhaseTimer()
    time_phases(trainer_class, timer)
    rows = read_jsonl(Path(spec["data"]["prompts"]))
    prompts = [{"prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows]
    set_seed(s.seed)
    trainer = trainer_class(
        model=model, reward_funcs=spec["reward_model"],  # both loaded by TRL with config_args' model_init_kwargs
        args=config_class(**config_args(s, spec["out"])), train_dataset=Dataset.from_list(prompts),
        processing_class=AutoTokenizer.from_pretrained(model, padding_side="left"), peft_config=lora(s, "CAUSAL_LM"),
        callbacks=[step_callback(timer, every=s.mini_batches * s.ppo_epochs)])
    trainer.train()
    return ppo_result(timer.steps, s.batch_size)


if __name__ == "__main__":
    raise SystemExit(main(run, __doc__))
