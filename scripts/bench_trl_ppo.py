"""The PPO anchor of scripts/bench.py: TRL 1.12's `trl.experimental.ppo.PPOTrainer`, run in its own venv.

    python scripts/bench_trl_ppo.py --spec JSON --result FILE

Uses only TRL/transformers/peft (not this project). Policy = the bench model with a LoRA adapter (the
reference is the same model with the adapter disabled), value model = a full copy of the bench model as a
classifier, reward model = the bench's reward model merged into a full classifier, as in TRL's PPO example.
Generation and scoring are timed by wrapping the trainer module's `batch_generation`, `forward` (without
gradients) and `get_reward`; training is the rest of each step.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench import ppo_result  # scripts/bench.py: its module level needs only the standard library


class PhaseTimer:
    """Seconds spent in the wrapped functions of the trainer module, per step."""

    def __init__(self):
        self.current = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.step_started = 0.0

    def wrap(self, fn, phase: str, only_without_grad: bool = False):
        def timed(*args, **kwargs):
            if only_without_grad and torch.is_grad_enabled():
                return fn(*args, **kwargs)
            started = time.perf_counter()
            out = fn(*args, **kwargs)
            self.current[phase] += time.perf_counter() - started
            return out

        return timed

    def end_step(self) -> None:
        now = time.perf_counter()
        generation, scoring = self.current["generation"], self.current["scoring"]
        self.steps.append({"generation": generation, "scoring": scoring,
                           "training": now - self.step_started - generation - scoring})
        self.current, self.step_started = defaultdict(float), now


def step_callback(timer: PhaseTimer, every: int = 1):
    """A TrainerCallback ending the timer's step every `every` optimizer steps (one rollout's updates)."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            timer.step_started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0:
                timer.end_step()

    return StepTimes()


def prompts_dataset(path: Path, tokenizer):
    """Tokenized prompts ({"input_ids"}), each one user turn through the chat template with the generation prompt."""
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                           add_generation_prompt=True) for row in rows]
    return Dataset.from_list([{"input_ids": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts])


def run(spec: dict) -> dict:
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    s, model = spec["settings"], spec["model"]
    dtype = getattr(torch, s["dtype"])
    timer = PhaseTimer()
    ppo_module.batch_generation = timer.wrap(ppo_module.batch_generation, "generation")
    ppo_module.forward = timer.wrap(ppo_module.forward, "scoring", only_without_grad=True)
    ppo_module.get_reward = timer.wrap(ppo_module.get_reward, "scoring")

    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    dataset = prompts_dataset(Path(spec["data"]["prompts"]), tokenizer)
    set_seed(s["seed"])
    args = PPOConfig(
        output_dir=spec["out"], per_device_train_batch_size=s["batch_size"], gradient_accumulation_steps=1,
        num_mini_batches=s["mini_batches"], num_ppo_epochs=s["ppo_epochs"], total_episodes=s["batch_size"] * s["steps"],
        local_rollout_forward_batch_size=s["batch_size"], response_length=s["response_length"], temperature=1.0,
        learning_rate=s["learning_rate"], kl_coef=s["kl_coef"], stop_token="eos", num_sample_generations=0,
        save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False, seed=s["seed"],
        logging_steps=s["steps"], disable_tqdm=True)
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=AutoModelForCausalLM.from_pretrained(model, dtype=dtype),
        ref_model=None, reward_model=AutoModelForSequenceClassification.from_pretrained(spec["reward_model"],
                                                                                         num_labels=1, dtype=dtype),
        value_model=AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype=dtype),
        train_dataset=dataset, eval_dataset=dataset,
        peft_config=LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=0.0,
                               target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[step_callback(timer)])
    trainer.train()
    return ppo_result(timer.steps, s["batch_size"])


def main(run_spec=run, description: str = __doc__) -> int:
    """An anchor worker's command line: `run_spec(--spec)` written to --result."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON from scripts/bench.py")
    parser.add_argument("--result", required=True, help="where to write the result JSON")
    args = parser.parse_args()
    Path(args.result).write_text(json.dumps(run_spec(json.loads(args.spec))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
