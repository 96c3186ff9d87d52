"""SFT -> reward -> PPO on the real SmolLM2-135M-Instruct, in a few small steps each: the SFT loss falls, the reward
model shares the PPO base, responses end at the first `<|im_end|>` (pad == eos), the frozen base is untouched by PPO
and the reference is the SFT model."""

import hashlib
import json

import pytest
import torch

from conftest import SMOLLM2, needs_smollm2
from reward import train as reward_train
from rlhf import runs, sft
from rlhf.config import load_config
from rlhf.models import load_causal_lm, position_ids
from rlhf.ppo import core, model_set, train
from rlhf.ppo.stage_config import PPOStageConfig

pytestmark = [pytest.mark.slow, needs_smollm2]

# (question, a right short answer, a wrong one): demonstrations, preference pairs and PPO prompts.
FACTS = [
    ("What is the capital of France?", "Paris.", "Berlin."),
    ("What color is the sky on a clear day?", "Blue.", "Green."),
    ("How many legs does a spider have?", "Eight.", "Six."),
    ("What do bees make?", "Honey.", "Milk."),
    ("Which planet do we live on?", "Earth.", "Mars."),
    ("What is two plus two?", "Four.", "Five."),
    ("What is frozen water called?", "Ice.", "Steam."),
    ("Which animal barks?", "A dog.", "A cat."),
    ("How many days are in a week?", "Seven.", "Ten."),
    ("What gas do plants take in?", "Carbon dioxide.", "Helium."),
    ("What is the largest ocean?", "The Pacific.", "The Arctic."),
    ("Which season comes after winter?", "Spring.", "Autumn."),
]
IM_END = "<|im_end|>"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Demonstrations (chat messages), preference pairs (right over wrong answer) and prompts, as files."""
    root = tmp_path_factory.mktemp("real-data")
    return {
        "demos": write_jsonl(root / "demos.jsonl", [
            {"messages": [{"role": "user", "content": f"{q} Answer in a few words."},
                          {"role": "assistant", "content": right}]} for q, right, _ in FACTS]),
        "pairs": write_jsonl(root / "pairs.jsonl", [
            {"prompt": q, "chosen": right, "rejected": wrong} for q, right, wrong in FACTS]),
        "prompts": write_jsonl(root / "prompts.jsonl", [
            {"prompt": f"{q} Answer in a few words."} for q, _, _ in FACTS]),
    }


SMALL = dict(val_ratio=0.0, test_ratio=0.0, per_device_train_batch_size=4, logging_steps=1, save_steps=1000,
             report_to="none", dtype="float32")


@pytest.fixture(scope="module")
def sft_run(smollm2, data, tmp_path_factory):
    """A LoRA SFT run: 6 steps over the 12 demonstrations (two epochs)."""
    out = tmp_path_factory.mktemp("real") / "sft"
    sft.run(load_config(sft.SFTStageConfig, [], dict(
        model_name_or_path=SMOLLM2, dataset_path=data["demos"], output_dir=str(out), max_steps=6,
        learning_rate=1e-3, lora_r=8, lora_alpha=16, **SMALL)))
    return out


@pytest.fixture(scope="module")
def reward_run(sft_run, data):
    """A LoRA reward model on the SFT run (so that it can share the PPO base): 3 steps."""
    out = sft_run.parent / "rm"
    reward_train.run(load_config(reward_train.RewardStageConfig, [], dict(
        model_name_or_path=str(sft_run), dataset_path=data["pairs"], output_dir=str(out), max_steps=3,
        learning_rate=1e-3, lora_r=4, lora_alpha=8, **SMALL)))
    return out


def base_parameters(model) -> dict[str, torch.Tensor]:
    """The frozen base weights of the PPO model set (everything in its peft model but the LoRA adapters)."""
    return {name: p for name, p in model.peft.named_parameters() if "lora_" not in name}


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """A hash of the tensors' names and bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def ppo(sft_run, reward_run, data):
    """Two PPO steps through `train.run`, recording the run, each step's rollout and the base's hash before the
    first step and after the run."""
    seen = {"rollouts": []}
    step = train.train_step

    def recording_step(ppo_run, n):
        if n == 1:
            seen.update(run=ppo_run, base_before=digest(base_parameters(ppo_run.policy)),
                        trained_before=[p.detach().clone() for p in ppo_run.policy.trainable_parameters()])
        metrics, ro, learn = step(ppo_run, n)
        seen["rollouts"].append(ro)
        return metrics, ro, learn

    config = PPOStageConfig(policy_path=str(sft_run), reward_model_path=str(reward_run), dataset_path=data["prompts"],
                            output_dir=str(sft_run.parent / "ppo"), max_steps=2, batch_size=4, mini_batch_size=2,
                            max_new_tokens=16, lora_r=4, lora_alpha=8, learning_rate=1e-4, score_stats="reward_data",
                            log_completions_steps=1, dtype="float32")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "train_step", recording_step)
        seen["summary"] = train.run(config)
    seen["base_after"] = digest(base_parameters(seen["run"].policy))
    return seen


def test_sft_training_loss_falls(sft_run):
    losses = [m["train/loss"] for m in runs.MetricsFile(sft_run).read() if "train/loss" in m]
    assert len(losses) == 6
    assert sum(losses[3:]) < sum(losses[:3]), losses  # the second epoch below the first


def test_the_reward_model_shares_the_ppo_base(ppo, reward_run):
    assert runs.read_summary(reward_run)["global_step"] == 3 and (reward_run / runs.REWARD_STATS).is_file()
    assert ppo["run"].info["reward"].startswith("shared base"), ppo["run"].info["reward"]
    assert ppo["run"].info["reward_parameters"] == sum(p.numel() for p in ppo["run"].reward.modules[1].parameters())
    assert ppo["summary"]["global_step"] == 2 and ppo["summary"]["reward"] == ppo["run"].info["reward"]


def test_responses_end_at_the_first_im_end_with_pad_equal_to_eos(ppo):
    tokenizer = ppo["run"].tokenizer
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos and tokenizer.convert_ids_to_tokens(eos) == IM_END
    padded = 0  # stopped rows followed by padding (eos again), which the mask must leave out
    for ro in ppo["rollouts"]:
        for ids, mask, ended in zip(ro.response_ids, ro.mask, ro.ended_with_eos):
            stops = (ids == eos).nonzero().flatten()
            assert bool(ended) == (len(stops) > 0)
            length = int(stops[0]) + 1 if len(stops) else len(ids)
            assert mask.tolist() == [1.0] * length + [0.0] * (len(ids) - length)
            padded += length < len(ids)
        assert torch.equal(ro.attention_mask[:, ro.prompt_length:], ro.mask.long())
    assert any(ro.ended_with_eos.any() for ro in ppo["rollouts"]) and padded > 0
    logged = runs.MetricsFile(ppo["run"].run_dir, runs.COMPLETIONS).read()
    assert [c["step"] for c in logged] == [1] * 4 + [2] * 4
    assert [c["response"] for c in logged[4:]] == ppo["rollouts"][1].responses
    assert all(IM_END not in c["response"] and c["response"].strip() for c in logged)


def test_ppo_trains_the_adapters_and_leaves_the_base_unchanged(ppo):
    assert ppo["base_after"] == ppo["base_before"]
    trained = ppo["run"].policy.trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(trained, ppo["trained_before"]))


def test_the_reference_is_the_sft_model(ppo, sft_run):
    ro, model = ppo["rollouts"][-1], ppo["run"].policy
    ids, attention_mask, p = ro.input_ids, ro.attention_mask, ro.prompt_length
    sft_model = load_causal_lm(str(sft_run), "float32").eval()  # base + the SFT LoRA, merged
    with torch.no_grad():
        expected = sft_model(input_ids=ids, attention_mask=attention_mask,
                             position_ids=position_ids(attention_mask)).logits[:, p - 1:-1]
        reference = model.reference_logits(ids, attention_mask, p)
        policy = model.logits(model_set.POLICY, ids, attention_mask, p)[0]
    mask = ro.mask.bool()
    torch.testing.assert_close(reference[mask], expected[mask], atol=1e-4, rtol=1e-4)
    assert (policy[mask] - expected[mask]).abs().max() > 1e-3  # two PPO steps moved the policy off it
    tokens = ids[:, p:]
    torch.testing.assert_close(ro.ref_logprobs, core.logprobs_from_logits(expected, tokens, 1.0) * ro.mask,
                               atol=1e-4, rtol=1e-4)
