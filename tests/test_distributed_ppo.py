"""PPO as two processes (gloo on CPU) under DDP, DeepSpeed ZeRO-2 and ZeRO-3.

Each launch is `accelerate launch --config_file configs/accelerate/cpu_*_2proc.yaml tests/test_distributed_ppo.py
MODE ...`: run as a script, this file runs `rlhf ppo` (MODE ppo) or one PPO update on a saved rollout (MODE update)
with a `Probe` that records what each process did.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from dist_helpers import environment, launch_script, run

from rlhf import cli, runs
from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.ppo import checkpoint, distributed, model_set, rollout, train
from rlhf.models import ADAPTER_WEIGHTS
from rlhf.ppo.model_set import POLICY, VALUE
from rlhf.ppo.stage_config import PPOStageConfig
from rlhf.ppo.update import ppo_update

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STEPS, SAVE_STEPS, CRASH_AFTER = 3, 2, 2
BATCH, MINI_BATCH, NEW_TOKENS = 8, 4, 6
# fp32 throughout; layouts differ only in the order of floating-point sums (gradients all-reduced across processes,
# accumulated over micro-batches, or one batched matmul). Measured: losses agree to ~1e-7 relative, weights to
# ~2e-5 after 4 Adam steps of lr 1e-2 (Adam magnifies rounding in near-zero gradients). Averaging micro-batch means
# instead of taking the mini-batch's token mean moves weights by ~7e-2 on the same rollout.
WEIGHT_ATOL, LOSS_RTOL = 1e-4, 1e-4


def ppo_args(ppo_runs, run_dir: Path, *extra: str) -> list[str]:
    return ["--policy_path", str(ppo_runs["sft"]), "--reward_model_path", str(ppo_runs["rm"]),
            "--dataset_path", str(ppo_runs["prompts"]), "--output_dir", str(run_dir), "--max_steps", str(STEPS),
            "--batch_size", str(BATCH), "--mini_batch_size", str(MINI_BATCH), "--max_new_tokens", str(NEW_TOKENS),
            "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "0.01", "--save_steps", str(SAVE_STEPS),
            "--log_completions_steps", "1", "--value_model", "lora_head", *extra]


def launch(config: str, argv: list[str], probe_dir: Path, ok: bool = True, **env: str) -> str:
    probe_dir.mkdir(parents=True)
    return run(launch_script(config, Path(__file__), argv), environment(PROBE_DIR=str(probe_dir), **env), ok=ok)


def read_probes(probe_dir: Path) -> dict[int, dict]:
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank-*.json"))}


def trained_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Policy and value adapters and the value head of a checkpoint folder (the policy alone without a value model)."""
    from safetensors.torch import load_file

    weights = {f"{name}/{k}": v for name in (POLICY, VALUE) if (folder / name).is_dir()
               for k, v in load_file(folder / name / ADAPTER_WEIGHTS).items()}
    if (folder / checkpoint.VALUE_HEAD).is_file():
        weights.update({f"head/{k}": v for k, v in torch.load(folder / checkpoint.VALUE_HEAD).items()})
    return weights


def assert_weights_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=WEIGHT_ATOL, rtol=0, msg=name)


# ---- launches -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zero3(ppo_runs, tmp_path_factory):
    """An uninterrupted ZeRO-3 run with every parameter split (none kept whole for being small), tracked with W&B."""
    root = tmp_path_factory.mktemp("zero3")
    launch("cpu_zero3_2proc", ["ppo", *ppo_args(ppo_runs, root / "run", "--report_to", "wandb")], root / "probe",
           PROBE_SPLIT_EVERY_PARAMETER="1")
    return {"run": root / "run", "probes": read_probes(root / "probe")}


def crash_then_resume(config: str, ppo_runs, root: Path) -> dict:
    """Launch with a crash right after checkpoint-CRASH_AFTER is complete, then launch the same command again."""
    args = ["ppo", *ppo_args(ppo_runs, root / "run")]
    crashed = launch(config, args, root / "probe-crashed", ok=False, PROBE_CRASH_AFTER=str(CRASH_AFTER))
    assert f"simulated crash after checkpoint-{CRASH_AFTER}" in crashed, crashed[-4000:]
    assert not runs.is_finished(root / "run")
    resumed = launch(config, args, root / "probe-resumed")
    return {"run": root / "run", "resumed_output": resumed,
            "probes": [read_probes(root / "probe-crashed"), read_probes(root / "probe-resumed")]}


@pytest.fixture(scope="module")
def ddp(ppo_runs, tmp_path_factory):
    return crash_then_resume("cpu_ddp_2proc", ppo_runs, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def zero2(ppo_runs, tmp_path_factory):
    return crash_then_resume("cpu_zero2_2proc", ppo_runs, tmp_path_factory.mktemp("zero2"))


# ---- tests ----------------------------------------------------------------------------------------------------------


def test_zero3_generation_gathers_the_weights_once_per_rollout(zero3):
    probes = zero3["probes"]
    assert sorted(probes) == [0, 1]
    for rank, probe in probes.items():
        assert probe["world_size"] == 2 and probe["zero_stage"] == 3
        assert len(probe["generated_tokens"]) == STEPS
        assert sum(probe["generated_tokens"]) > STEPS  # several tokens per rollout: per-token gathering would show
        assert probe["whole_model_gathers"] == STEPS, rank
        assert probe["all_gathers_in_generation"] == 0, rank  # no layer gathered token by token
        assert probe["all_gathers_elsewhere"] > 0, rank  # the weights are split: scoring and training gather layers
        trainable = probe["trainable"]  # the policy and value adapters and the value head; not the base or reward
        assert any(".policy." in n for n in trainable) and any(".value." in n for n in trainable)
        assert all(".policy." in n or ".value." in n or n.startswith("value_head.") for n in trainable), trainable


def test_zero3_run_has_one_writer_and_a_final_adapter_that_plain_peft_loads(zero3, ppo_runs):
    from peft import PeftModel
    from safetensors.torch import load_file

    from rlhf.models import load_causal_lm

    run_dir = zero3["run"]
    summary = runs.read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == STEPS
    assert summary["reward"].startswith("shared base")  # the reward adapter scored on the split base
    assert [m["step"] for m in runs.MetricsFile(run_dir).read()] == list(range(1, STEPS + 1))
    completions = runs.MetricsFile(run_dir, runs.COMPLETIONS).read()
    assert [c["step"] for c in completions] == [s for s in range(1, STEPS + 1) for _ in range(train.COMPLETIONS_SHOWN)]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1

    saved = load_file(run_dir / runs.FINAL / ADAPTER_WEIGHTS)
    assert saved and all(t.numel() > 0 for t in saved.values())
    assert any("lora_B" in name and t.abs().sum() > 0 for name, t in saved.items())  # trained (lora_B starts at 0)
    tuned = PeftModel.from_pretrained(load_causal_lm(str(ppo_runs["sft"])), run_dir / runs.FINAL)
    loaded = {n: p for n, p in tuned.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")], tensor), name


def test_processes_agree_on_seeds_and_each_takes_its_own_prompts(ddp, ppo_runs):
    from rlhf.models import load_tokenizer

    texts = rollout.read_prompts(str(ppo_runs["prompts"]), load_tokenizer(str(ppo_runs["sft"])), 512).texts
    crashed, resumed = ddp["probes"]
    for probes in (crashed, resumed):
        assert probes[0]["start_weights"] == probes[1]["start_weights"]  # the same fresh adapters everywhere
    steps = [range(1, CRASH_AFTER + 1), range(CRASH_AFTER + 1, STEPS + 1)]
    for probes, launched in zip((crashed, resumed), steps):
        for step, first, second in zip(launched, probes[0]["rollout_prompts"], probes[1]["rollout_prompts"]):
            assert first + second == [texts[i] for i in train.prompt_indices(step, BATCH, len(texts), seed=0)]
        assert len(probes[0]["rollout_prompts"]) == len(launched)


@pytest.mark.parametrize("layout", ["ddp", "zero2"])
def test_resumed_run_ends_like_an_uninterrupted_one(layout, zero3, request):
    """Crash after checkpoint-2, start again: step 3 as in the uninterrupted (ZeRO-3) run, one writer throughout."""
    resumed = request.getfixturevalue(layout)
    run_dir = resumed["run"]
    assert f"resuming from {run_dir / runs.CHECKPOINTS / f'checkpoint-{CRASH_AFTER}'}" in resumed["resumed_output"]
    summary = runs.read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == STEPS
    if layout == "zero2":
        assert (run_dir / runs.CHECKPOINTS / f"checkpoint-{STEPS}" / checkpoint.DEEPSPEED).is_dir()
    metrics, uninterrupted = runs.MetricsFile(run_dir).read(), runs.MetricsFile(zero3["run"]).read()
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for got, expected in zip(metrics, uninterrupted):
        assert got["ppo/score_mean"] == pytest.approx(expected["ppo/score_mean"], rel=LOSS_RTOL)
        assert got["ppo/loss_value"] == pytest.approx(expected["ppo/loss_value"], rel=LOSS_RTOL)
    final, before = (trained_weights(run_dir / runs.CHECKPOINTS / f"checkpoint-{s}") for s in (STEPS, CRASH_AFTER))
    assert_weights_close(final, trained_weights(zero3["run"] / runs.CHECKPOINTS / f"checkpoint-{STEPS}"))
    assert any(not torch.equal(final[name], before[name]) for name in final)  # the resumed step trained


def test_a_deepspeed_config_that_disagrees_with_the_ppo_config_is_an_error():
    settings = {"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": 0.5}
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=settings)))
    with pytest.raises(ConfigError, match="sets gradient_clipping=0.5 but this PPO config needs 1.0"):
        distributed.configure_deepspeed(accelerator, 2, 1, 4, 1.0)
    settings["gradient_clipping"] = "auto"
    distributed.configure_deepspeed(accelerator, 2, 1, 4, 1.0)
    assert settings == {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 4,
                        "gradient_clipping": 1.0}


def test_a_value_head_on_the_reward_states_trains_under_ddp(ppo_runs, tmp_path):
    """value_model reward_head on 2 processes: every process receives the whole rollout with the reward model's
    states (its own rows alone would not index by the mini-batches' rows), and only the policy adapter and the
    value head are trained."""
    run_dir = tmp_path / "run"
    launch("cpu_ddp_2proc", ["ppo", *ppo_args(ppo_runs, run_dir, "--value_model", "reward_head")], tmp_path / "probe")
    summary = runs.read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["value_model"] == "reward_head"
    assert all(math.isfinite(m["ppo/loss_value"]) for m in runs.MetricsFile(run_dir).read())
    probes = read_probes(tmp_path / "probe")
    assert probes[0]["start_weights"] == probes[1]["start_weights"]
    assert all(".policy." in n or n.startswith("value_head.") for n in probes[0]["trainable"])
    saved = {p.name for p in (run_dir / runs.CHECKPOINTS / f"checkpoint-{STEPS}").iterdir()}
    assert checkpoint.VALUE_HEAD in saved and VALUE not in saved


# ---- the update alone, on a fixed rollout -----------------------------------------------------------------------------


def update_on_fixed_rollout(args: list[str], rollout_file: Path, out: Path) -> None:
    """One PPO update (ppo_epochs passes) on a saved rollout; writes checkpoint-1 and the logged losses to `out`."""
    config = load_config(PPOStageConfig, args)
    accelerator = distributed.make_accelerator(several_passes=model_set.has_value_pass(config.critic),
                                               gradient_accumulation_steps=config.gradient_accumulation_steps)
    model, optimizer, scheduler, _, normalization, _ = train.build_and_prepare(config, accelerator)
    ro = torch.load(rollout_file, weights_only=False)
    learn = train.estimate_advantages(ro, config, config.kl_coef, normalization)
    losses = ppo_update(model, optimizer, scheduler, accelerator, ro, learn.advantages, learn.returns, config.kl_coef,
                        config, step=1)
    checkpoint.save(out, 1, model, optimizer, scheduler, {}, accelerator)
    if accelerator.is_main_process:
        (out / "update.json").write_text(json.dumps({"world_size": accelerator.num_processes, **losses}))


def responses_of_many_lengths(generate):
    """`rollout.generate`, then row i cut by an EOS after i % R + 1 tokens: rows weigh differently in token means."""
    def cut(model, tokenizer, prompt_ids, *args, **kwargs):
        sampled = generate(model, tokenizer, prompt_ids, *args, **kwargs)
        prompt_length = prompt_ids.shape[1]
        for i, row in enumerate(sampled.sequences):
            end = prompt_length + i % (sampled.sequences.shape[1] - prompt_length)
            row[end], row[end + 1:] = tokenizer.eos_token_id, tokenizer.pad_token_id
        return sampled
    return cut


@pytest.fixture(scope="module")
def fixed_rollout(ppo_runs, tmp_path_factory) -> Path:
    """A saved rollout of BATCH rows with responses of every length (for GRPO: two groups of 4 rows)."""
    from rlhf.models import load_tokenizer

    root = tmp_path_factory.mktemp("rollout")
    config = load_config(PPOStageConfig, ppo_args(ppo_runs, root / "unused"))
    tokenizer = load_tokenizer(config.policy_path, padding_side="left")
    data = rollout.read_prompts(config.dataset_path, tokenizer, config.max_prompt_length)
    model, reward, _ = model_set.build(config, "cpu")
    with mock.patch.object(rollout, "generate", responses_of_many_lengths(rollout.generate)):
        settings = rollout.Settings(NEW_TOKENS, config.temperature, config.top_p, scoring_rows=BATCH)
        samples = rollout.sample(model, tokenizer, data.texts[:BATCH], settings, "cpu", nullcontext())
        ro = rollout.score(model, reward, data.prompts[:BATCH], samples, settings)
    tokens = rollout.token_ids(ro.input_ids, ro.attention_mask, ro.prompt_length, ro.mask, ro.ended_with_eos)
    prompt_lengths = ro.attention_mask[:, :ro.prompt_length].sum(1).tolist()
    ro.value_states = reward.with_states(tokens, prompt_lengths, ro.mask.shape[1])[1]  # what value_model reward_head reads
    assert len(set(ro.mask.sum(1).tolist())) == NEW_TOKENS
    torch.save(ro, root / "rollout.pt")
    return root / "rollout.pt"


@pytest.fixture(scope="module")
def updates(ppo_runs, fixed_rollout, tmp_path_factory):
    """The same saved rollout updated as 1 process x mini-batch 4, 1 process x 2 micro-batches of 2 (accumulation),
    and 2 processes x 2 rows (DDP, ZeRO-2, ZeRO-3 with activation checkpointing)."""
    root = tmp_path_factory.mktemp("updates")
    args = ppo_args(ppo_runs, root / "unused")
    on_reward = ["--reward_model_path", str(ppo_runs["rm_full"]), "--value_model", "reward_lora"]
    head_on_reward = ["--value_model", "reward_head"]
    layouts = {"1 process": ["--gradient_accumulation_steps", "1"], "1 process, accumulation": [
        "--gradient_accumulation_steps", "2"], "1 process, value on the reward model": on_reward,
        "1 process, value head on the reward states": head_on_reward}
    for name, extra in layouts.items():
        update_on_fixed_rollout([*args, *extra], fixed_rollout, root / name)
    checkpointing = ["--gradient_checkpointing", "true"]  # recomputes the same activations: the same update
    launched = {"2 processes": ("cpu_ddp_2proc", []), "2 processes, ZeRO-2": ("cpu_zero2_2proc", []),
                "2 processes, ZeRO-3, activation checkpointing": ("cpu_zero3_2proc", checkpointing),
                "2 processes, ZeRO-3, value on the reward model, activation checkpointing": (
                    "cpu_zero3_2proc", [*on_reward, *checkpointing]),
                "2 processes, ZeRO-3, value head on the reward states": ("cpu_zero3_2proc", head_on_reward)}
    for name, (accelerate_config, extra) in launched.items():
        launch(accelerate_config, ["update", str(fixed_rollout), str(root / name), *args, *extra],
               root / f"probe {name}")
    return {name: root / name for name in [*layouts, *launched]}


@pytest.mark.parametrize("layout, reference", [
    ("1 process, accumulation", "1 process"), ("2 processes", "1 process"), ("2 processes, ZeRO-2", "1 process"),
    ("2 processes, ZeRO-3, activation checkpointing", "1 process"),
    ("2 processes, ZeRO-3, value on the reward model, activation checkpointing",
     "1 process, value on the reward model"),
    ("2 processes, ZeRO-3, value head on the reward states", "1 process, value head on the reward states")])
def test_update_is_the_same_for_any_processes_and_accumulation(updates, layout, reference):
    assert_same_update(updates[layout], updates[reference], 2 if layout.startswith("2 processes") else 1)


@pytest.fixture(scope="module")
def grpo_updates(ppo_runs, fixed_rollout, tmp_path_factory):
    """The saved rollout updated with GRPO (no value model, the KL in the loss) on 1 process and 2 processes (DDP)."""
    root = tmp_path_factory.mktemp("grpo_updates")
    args = [*ppo_args(ppo_runs, root / "unused"), "--advantage_estimator", "grpo", "--num_samples_per_prompt", "4",
            "--kl_in_loss", "true"]
    update_on_fixed_rollout(args, fixed_rollout, root / "1 process")
    launch("cpu_ddp_2proc", ["update", str(fixed_rollout), str(root / "2 processes"), *args], root / "probe")
    return root


def test_grpo_update_is_the_same_on_two_processes(grpo_updates):
    assert_same_update(grpo_updates / "2 processes", grpo_updates / "1 process", 2)
    logged = json.loads((grpo_updates / "2 processes" / "update.json").read_text())
    assert "loss_kl" in logged and "loss_value" not in logged
    saved = {p.name for p in (grpo_updates / "2 processes" / runs.CHECKPOINTS / "checkpoint-1").iterdir()}
    assert POLICY in saved and not {VALUE, checkpoint.VALUE_HEAD} & saved


def assert_same_update(other: Path, reference: Path, world_size: int) -> None:
    """The logged losses and the trained weights of two updates of the fixed rollout agree (`other` ran on
    `world_size` processes)."""
    logged = {name: json.loads((folder / "update.json").read_text()) for name, folder in (("ref", reference),
                                                                                        ("other", other))}
    assert logged["other"]["world_size"] == world_size
    for name, value in logged["ref"].items():
        if name != "world_size":
            assert logged["other"][name] == pytest.approx(value, rel=LOSS_RTOL, abs=1e-7), name
    start = trained_weights(reference / runs.CHECKPOINTS / "checkpoint-1")
    assert_weights_close(trained_weights(other / runs.CHECKPOINTS / "checkpoint-1"), start)


# ---- the launched side ----------------------------------------------------------------------------------------------


def weights_hash(params) -> str:
    return hashlib.sha256(torch.cat([p.detach().reshape(-1) for p in params]).double().numpy().tobytes()).hexdigest()


class Probe:
    """Records what this process did: the prompts of each training rollout (not the starting policy's score
    statistics), a hash of the freshly built trained weights and, under ZeRO-3, the parameter gathers around
    generation (DeepSpeed all-gathers inside and outside `generate`, and gathers of the whole model). With
    PROBE_CRASH_AFTER=N every process exits once checkpoint-N is complete."""

    def __init__(self, folder: Path):
        self.file = folder / f"rank-{os.environ['RANK']}.json"
        self.record = {"world_size": int(os.environ["WORLD_SIZE"]), "rollout_prompts": [], "generated_tokens": [],
                       "whole_model_gathers": 0, "all_gathers_in_generation": 0, "all_gathers_elsewhere": 0}
        self.generating, self.in_step, self.model, self.model_parameters = False, False, None, None

    def install(self) -> None:
        build, sample, generate, save = model_set.build, rollout.sample, rollout.generate, checkpoint.save
        train_step = train.train_step

        def recording_build(config, device):
            model, reward, info = build(config, device)
            self.record["start_weights"] = weights_hash(model.trainable_parameters())
            self.model, self.model_parameters = model, len(list(model.parameters()))
            return model, reward, info

        def recording_step(*args, **kwargs):
            self.in_step = True
            try:
                return train_step(*args, **kwargs)
            finally:
                self.in_step = False

        def recording_sample(model, tokenizer, texts, *args, **kwargs):
            if self.in_step:
                self.record["rollout_prompts"].append(texts)
            return sample(model, tokenizer, texts, *args, **kwargs)

        def recording_generate(model, tokenizer, prompt_ids, *args, **kwargs):
            self.generating = True
            sampled = generate(model, tokenizer, prompt_ids, *args, **kwargs)
            self.generating = False
            if self.in_step:
                self.record["generated_tokens"].append(sampled.sequences.shape[1] - prompt_ids.shape[1])
            return sampled

        def save_then_crash(run_dir, step, *args, **kwargs):
            target = save(run_dir, step, *args, **kwargs)
            if step == int(os.environ.get("PROBE_CRASH_AFTER", "0")):
                raise SystemExit(f"probe: simulated crash after checkpoint-{step}")
            return target

        model_set.build, rollout.sample, rollout.generate, checkpoint.save, train.train_step = (
            recording_build, recording_sample, recording_generate, save_then_crash, recording_step)
        if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
            self.install_deepspeed()

    def install_deepspeed(self) -> None:
        import deepspeed
        from deepspeed.comm.torch import TorchBackend

        probe, configure = self, distributed.configure_deepspeed

        def configure_and_record(accelerator, *args):
            configure(accelerator, *args)
            self.record["zero_stage"] = distributed.zero_stage(accelerator)
            if os.environ.get("PROBE_SPLIT_EVERY_PARAMETER"):  # the tiny model's tensors are all "small"
                accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"][
                    "stage3_param_persistence_threshold"] = 0

        class CountedGather(deepspeed.zero.GatheredParameters):
            def __init__(self, params, *args, **kwargs):
                params = list(params)
                probe.record["whole_model_gathers"] += len(params) == probe.model_parameters
                super().__init__(params, *args, **kwargs)

        def counted(method):
            def all_gather(*args, **kwargs):
                probe.record["all_gathers_in_generation" if probe.generating else "all_gathers_elsewhere"] += 1
                return method(*args, **kwargs)
            return all_gather

        for name in ("all_gather", "all_gather_into_tensor", "all_gather_base", "all_gather_coalesced"):
            setattr(TorchBackend, name, counted(getattr(TorchBackend, name)))
        deepspeed.zero.GatheredParameters = CountedGather
        distributed.configure_deepspeed = configure_and_record

    def write(self) -> None:
        if self.model is not None:  # what is trainable once training is over (adapter switches flip requires_grad)
            self.record["trainable"] = [name for name, p in self.model.named_parameters() if p.requires_grad]
        self.file.write_text(json.dumps(self.record))


def child(argv: list[str]) -> int:
    probe = Probe(Path(os.environ["PROBE_DIR"]))
    probe.install()
    try:
        if argv[0] == "ppo":
            return cli.main(argv)
        update_on_fixed_rollout(argv[3:], Path(argv[1]), Path(argv[2]))
        return 0
    finally:
        probe.write()


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))

