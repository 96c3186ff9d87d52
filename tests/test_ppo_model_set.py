"""The PPO model set: one base in memory, the reference is the SFT model, the shared reward is the reward model."""

import contextlib

import pytest
import torch
from peft import PeftModel

from reward.score import load_reward_model, score_texts
from rlhf.errors import ConfigError
from rlhf.chat import format_prompt
from rlhf.models import load_causal_lm, load_tokenizer
from rlhf.models import position_ids
from rlhf.ppo import model_set, rewards, rollout
from rlhf.ppo.stage_config import PPOStageConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def config(runs, **overrides):
    keys = dict(policy_path=str(runs["sft"]), reward_model_path=str(runs["rm"]), dataset_path=str(runs["prompts"]),
                lora_r=4, lora_alpha=8, value_model="lora_head")
    return PPOStageConfig(**{**keys, **overrides})


def sampled(model, tokenizer, runs, n=4):
    """(ids, attention mask, prompt length) of a few sampled prompt + response sequences."""
    texts = rollout.read_prompts(str(runs["prompts"]), tokenizer, 512).texts[-n:]  # includes message-list prompts
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    ids = rollout.generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], 6, 1.0, 1.0).sequences
    mask, _ = rollout.response_mask(ids[:, batch["input_ids"].shape[1]:], tokenizer.eos_token_id)
    return ids, torch.cat([batch["attention_mask"], mask.long()], 1), batch["input_ids"].shape[1]


def base_storages(modules) -> set[int]:
    """Storages of the weights reachable from `modules`, except LoRA weights and scalar (value, score) heads."""
    heads = {id(p) for m in modules for sub in m.modules()
             if isinstance(sub, torch.nn.Linear) and sub.out_features == 1 for p in sub.parameters()}
    return {p.untyped_storage().data_ptr() for m in modules for name, p in m.named_parameters()
            if "lora_" not in name and id(p) not in heads}


def test_one_copy_of_the_base_weights(ppo_runs):
    model, reward, info = model_set.build(config(ppo_runs), "cpu")
    assert info["reward"].startswith("shared base")
    assert info["reward_parameters"] == sum(p.numel() for p in reward.modules[1].parameters())  # its score head
    assert set(model.peft.peft_config) == {model_set.POLICY, model_set.REWARD, model_set.VALUE}
    policy = reference = value = [model.peft]  # the reference is model.peft with adapters disabled
    storages = base_storages(policy + reference + value + [model.value_head] + reward.modules)
    n_base_tensors = len(list(load_causal_lm(str(ppo_runs["sft"])).parameters()))
    assert len(storages) == n_base_tensors

    # A reward model on another base cannot share it: then there are two copies.
    model, reward, info = model_set.build(config(ppo_runs, reward_model_path=str(ppo_runs["rm_base"])), "cpu")
    assert "different base weights" in info["reward"]
    assert info["reward_parameters"] == sum(p.numel() for p in reward.modules[0].parameters())  # a whole model
    assert len(base_storages([model.peft] + reward.modules)) > 1.9 * n_base_tensors


def test_reference_is_the_sft_model_and_the_policy_starts_there(ppo_runs):
    model, _, _ = model_set.build(config(ppo_runs, reward_model_path=None, reward_fn="builtins:len"), "cpu")
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    ids, attention_mask, prompt_length = sampled(model, tokenizer, ppo_runs)
    sft = load_causal_lm(str(ppo_runs["sft"])).eval()
    with torch.no_grad():
        expected = sft(input_ids=ids, attention_mask=attention_mask,
                       position_ids=position_ids(attention_mask)).logits[:, prompt_length - 1:-1]
        reference = model.reference_logits(ids, attention_mask, prompt_length)
        policy, values = model(ids, attention_mask, prompt_length)
    tokens = ids[:, prompt_length:]
    torch.testing.assert_close(rollout.core.logprobs_from_logits(reference, tokens, 0.7),
                               rollout.core.logprobs_from_logits(expected, tokens, 0.7), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy, expected, atol=1e-5, rtol=1e-5)  # a fresh LoRA adds nothing yet
    assert torch.equal(values, torch.zeros_like(values))  # fresh value head (no reward model to start from)
    # ...but the SFT adapter is merged in: the bare base gives other log-probs.
    bare = load_causal_lm(str(ppo_runs["base"])).eval()
    with torch.no_grad():
        assert not torch.allclose(bare(input_ids=ids, attention_mask=attention_mask).logits[:, prompt_length - 1:-1],
                                  expected, atol=1e-3)


def test_the_lm_head_reads_one_contiguous_block_of_the_kept_positions(ppo_runs):
    """A strided slice of the hidden states would make the LM head a batched matmul that copies its weight once
    per row (the whole time of a bf16 scoring pass on the CPU)."""
    model, _, _ = model_set.build(config(ppo_runs, reward_model_path=None, reward_fn="builtins:len"), "cpu")
    ids, attention_mask, prompt_length = sampled(model, load_tokenizer(str(ppo_runs["sft"])), ppo_runs)
    seen = []
    hook = model.causal_lm.get_output_embeddings().register_forward_hook(
        lambda module, args, out: seen.append((args[0].shape, args[0].is_contiguous())))
    try:
        with torch.no_grad():
            model.reference_logits(ids, attention_mask, prompt_length)
            model(ids, attention_mask, prompt_length, part="policy")
    finally:
        hook.remove()
    response_positions = ids.shape[1] - prompt_length + 1
    assert seen == [((ids.shape[0], response_positions, model.config.hidden_size), True)] * 2


@pytest.mark.parametrize("reward_run", ["rm", "rm_base"])
def test_reward_scores_equal_the_reward_model(ppo_runs, reward_run):
    model, reward, info = model_set.build(config(ppo_runs, reward_model_path=str(ppo_runs[reward_run])), "cpu")
    assert info["reward"].startswith("shared base") == (reward_run == "rm")
    prompts = ["Tell me about the number 3.", [{"role": "user", "content": "Count to 2."}], "Hi"]
    responses = ["It is odd.", "1, 2", ""]
    classifier, reward_tokenizer = load_reward_model(str(ppo_runs[reward_run]))
    expected = score_texts(classifier, reward_tokenizer, prompts, responses)
    torch.testing.assert_close(reward(prompts, responses), expected, atol=1e-5, rtol=1e-5)
    assert expected.std() > 0


@pytest.mark.parametrize("reward_run", ["rm", "rm_base"])
def test_reward_reading_the_rollout_tokens_equals_reading_the_text(ppo_runs, reward_run):
    """With the policy's tokenizer and template, the reward model scores prompt + response tokens + the template's
    tail exactly as it scores the rendered text; with another template it reads the text."""
    _, reward, info = model_set.build(config(ppo_runs, reward_model_path=str(ppo_runs[reward_run])), "cpu")
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    assert reward.tail and "reads the rollout's tokens" in info["reward"]
    prompts = ["Tell me about the number 3.", [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Count to 2."}]]
    responses = ["It is odd.", "1, 2"]
    token_ids = [tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
                 + tokenizer(r, add_special_tokens=False)["input_ids"] for p, r in zip(prompts, responses)]
    torch.testing.assert_close(reward(prompts, responses, token_ids), reward(prompts, responses))
    assert not torch.equal(reward(prompts, responses, [ids[:-1] for ids in token_ids]), reward(prompts, responses))

    other = load_tokenizer(str(ppo_runs["sft"]))
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    assert rewards.template_tail(other, tokenizer) is None


def test_policy_and_value_passes_one_after_the_other_give_the_combined_gradients(ppo_runs):
    """lora_head trains in two passes (policy, then value), each followed by its own backward; the gradients
    equal those of one pass over both."""
    model, _, _ = model_set.build(config(ppo_runs), "cpu")
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    ids, attention_mask, prompt_length = sampled(model, tokenizer, ppo_runs)
    assert model.training_passes() == (model_set.POLICY, model_set.VALUE)

    def loss_of(logits, values):
        return ((logits.float().logsumexp(-1).mean() if logits is not None else 0)
                + (values.pow(2).mean() if values is not None else 0))

    loss_of(*model(ids, attention_mask, prompt_length)).backward()
    combined = [p.grad.clone() for p in model.trainable_parameters()]
    model.zero_grad()
    for part in model.training_passes():
        logits, values = model(ids, attention_mask, prompt_length, part)
        assert (logits is None) == (part == model_set.VALUE) and (values is None) == (part == model_set.POLICY)
        loss_of(logits, values).backward()
    for separate, together in zip((p.grad for p in model.trainable_parameters()), combined):
        torch.testing.assert_close(separate, together)


def test_activation_checkpointing_keeps_less_for_the_backward_and_the_same_gradients(ppo_runs):
    """gradient_checkpointing: the training passes (train mode) save far fewer activation bytes for the backward,
    and the policy and value gradients are those of the run without it."""
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    kept, grads = {}, {}
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same fresh adapters
        model, _, _ = model_set.build(config(ppo_runs, gradient_checkpointing=checkpointing), "cpu")
        if not checkpointing:
            ids, attention_mask, prompt_length = sampled(model, tokenizer, ppo_runs)
        model.train()
        saved = []
        for part in model.training_passes():  # as the update runs them: a backward after each pass
            with model.training_pass(part), torch.autograd.graph.saved_tensors_hooks(
                    lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
                logits, values = model(ids, attention_mask, prompt_length, part)
                (logits.float().logsumexp(-1).mean() if part == model_set.POLICY else values.pow(2).mean()).backward()
        kept[checkpointing] = sum(saved)
        grads[checkpointing] = [p.grad for p in model.trainable_parameters()]
    assert kept[True] < kept[False] / 2
    for with_checkpoints, without in zip(grads[True], grads[False]):
        torch.testing.assert_close(with_checkpoints, without)


def test_value_model_starts_as_the_normalised_reward_model(ppo_runs):
    model, reward, _ = model_set.build(config(ppo_runs, score_stats="reward_data"), "cpu")
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    classifier, reward_tokenizer = load_reward_model(str(ppo_runs["rm"]))
    ids, attention_mask, prompt_length = sampled(model, tokenizer, ppo_runs)
    with torch.no_grad():
        _, values = model(ids, attention_mask, prompt_length)
        # The value at the last position of the full sequence is the classifier's score of that sequence.
        last = classifier(input_ids=ids, attention_mask=attention_mask,
                          position_ids=position_ids(attention_mask)).logits[:, 0]
        hidden = model.hidden_states(model_set.VALUE, ids, attention_mask)
        hidden = hidden[torch.arange(len(ids)), rewards.last_token_index(ids, tokenizer.pad_token_id)]
    torch.testing.assert_close(model.value_head(hidden).squeeze(-1), (last - 0.5) / 2.0, atol=1e-5, rtol=1e-5)
    assert values.shape == ids[:, prompt_length:].shape


def test_values_are_float32_also_from_a_head_that_deepspeed_cast_to_bf16(ppo_runs):
    """DeepSpeed's bf16 (`mixed_precision: bf16` in configs/accelerate/zero2.yaml) casts the whole trained module."""
    model, _, _ = model_set.build(config(ppo_runs), "cpu")
    hidden = torch.randn(2, 3, model.value_head.in_features)
    expected = model.values_from(hidden)
    assert expected.abs().max() > 0  # the head starts as the reward model's score head
    model.value_head.to(torch.bfloat16)
    for states in (hidden, hidden.bfloat16()):
        values = model.values_from(states)
        assert values.dtype == torch.float32
        torch.testing.assert_close(values, expected, atol=0.05, rtol=0.05)


def test_reward_lora_value_starts_as_a_fully_fine_tuned_reward_model_that_stays_frozen(ppo_runs):
    model, reward, info = model_set.build(config(ppo_runs, reward_model_path=str(ppo_runs["rm_full"]),
                                                 value_model="reward_lora", score_stats="reward_data"), "cpu")
    assert info["value_from_reward"] and info["reward_parameters"] == 0  # the value's base is the reward classifier
    assert model.peft_of(model_set.VALUE) is model.reward_peft and model_set.VALUE not in model.peft.peft_config
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    ids, attention_mask, prompt_length = sampled(model, tokenizer, ppo_runs)
    classifier, _ = load_reward_model(str(ppo_runs["rm_full"]))
    with torch.no_grad():
        score = classifier(input_ids=ids, attention_mask=attention_mask,
                           position_ids=position_ids(attention_mask)).logits[:, 0]

        def last_values():  # the value at each sequence's last token, on the normalised scale
            hidden = model.value_states(ids, attention_mask)
            return model.values_from(hidden[torch.arange(len(ids)), rewards.last_token_index(ids, tokenizer.pad_token_id)])

        torch.testing.assert_close(last_values(), (score - 0.5) / 2.0, atol=1e-5, rtol=1e-5)
        for p in model_set.adapter_parameters(model.reward_peft, model_set.VALUE):
            p.add_(0.1)  # the value adapter moves the value...
        assert (last_values() - (score - 0.5) / 2.0).abs().max() > 1e-2
        # ...while the reward reads the classifier as it was loaded
        torch.testing.assert_close(reward.scores_of(ids, attention_mask), score, atol=1e-5, rtol=1e-5)
    trained = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == trained
    _, values = model(ids, attention_mask, prompt_length, part=model_set.VALUE)
    values.pow(2).mean().backward()
    value_lora = model_set.adapter_parameters(model.reward_peft, model_set.VALUE)
    assert value_lora and all(p.grad is not None for p in value_lora)
    assert all(p.grad is None for p in classifier.parameters())


def test_reward_lora_needs_a_reward_model_of_its_own(ppo_runs):
    with pytest.raises(ConfigError, match="set reward_model_path"):
        config(ppo_runs, reward_model_path=None, reward_fn="builtins:len", value_model="reward_lora")
    with pytest.raises(ConfigError, match="LoRA on the PPO base"):
        model_set.build(config(ppo_runs, value_model="reward_lora"), "cpu")


def test_adapter_switching_keeps_exactly_the_trained_weights_trainable(ppo_runs):
    model, reward, _ = model_set.build(config(ppo_runs), "cpu")
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    trained = {id(p) for p in model.trainable_parameters()}
    ids, attention_mask, prompt_length = sampled(model, tokenizer, ppo_runs)
    reward(["Hi"], ["there"])
    model.reference_logits(ids, attention_mask, prompt_length)
    logits, values = model(ids, attention_mask, prompt_length)
    assert {id(p) for p in model.parameters() if p.requires_grad} == trained
    (logits.float().logsumexp(-1).mean() + values.mean()).backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    reward_lora = model_set.adapter_parameters(model.peft, model_set.REWARD)
    assert reward_lora and all(p.grad is None and not p.requires_grad for p in reward_lora)


def test_policy_head_value_model_reads_the_policy_states(ppo_runs):
    model, _, _ = model_set.build(config(ppo_runs, value_model="policy_head"), "cpu")
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    assert set(model.peft.peft_config) == {model_set.POLICY, model_set.REWARD}
    ids, attention_mask, prompt_length = sampled(model, tokenizer, ppo_runs)
    logits, values = model(ids, attention_mask, prompt_length)
    _, hidden = model.logits(model_set.POLICY, ids, attention_mask, prompt_length, with_hidden=True)
    torch.testing.assert_close(values, model.value_head(hidden).squeeze(-1))
    values.pow(2).mean().backward()  # the value loss trains the policy's adapter too
    assert all(p.grad is not None for p in model_set.adapter_parameters(model.peft, model_set.POLICY))


def test_final_policy_adapter_resolves_through_the_sft_run(ppo_runs, tmp_path):
    from rlhf.ppo import checkpoint

    model, _, _ = model_set.build(config(ppo_runs, reward_model_path=None, reward_fn="builtins:len"), "cpu")
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    with torch.no_grad():
        for p in model_set.adapter_parameters(model.peft, model_set.POLICY):
            p.add_(0.05 * torch.randn_like(p))
    checkpoint.save_final(tmp_path, model, tokenizer)
    ids, attention_mask, prompt_length = sampled(model, tokenizer, ppo_runs)
    exported = load_causal_lm(str(tmp_path)).eval()  # base + SFT LoRA merged + policy LoRA merged
    with torch.no_grad():
        logits, _ = model(ids, attention_mask, prompt_length)
        got = exported(input_ids=ids, attention_mask=attention_mask).logits[:, prompt_length - 1:-1]
    torch.testing.assert_close(got, logits, atol=1e-5, rtol=1e-5)
    assert isinstance(load_causal_lm(str(tmp_path), merge=False), PeftModel)
    assert load_tokenizer(str(tmp_path)).eos_token == tokenizer.eos_token


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=6, mini_batch_size=4), "not divisible by mini_batch_size"),
    (dict(mini_batch_size=4, gradient_accumulation_steps=3), "not divisible by gradient_accumulation_steps"),
    (dict(reward_fn="builtins:len"), "exactly one of reward_model_path and reward_fn"),
    (dict(value_model="separate"), "value_model 'separate'"),
    (dict(temperature=0.0), "temperature must be positive"),
    (dict(lam=1.5), r"lam must be in \[0, 1\], got 1.5"),
    (dict(gamma=-0.1), r"gamma must be in \[0, 1\]"),
])
def test_inconsistent_config_is_an_error(ppo_runs, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(ppo_runs, **overrides)


def test_normalising_without_reward_statistics_is_an_error(ppo_runs):
    with pytest.raises(ConfigError, match="no reward statistics"):
        model_set.build(config(ppo_runs, reward_model_path=None, reward_fn="builtins:len", normalize_scores=True,
                               score_stats="reward_data"), "cpu")


@pytest.mark.parametrize("reward_run", ["rm", "rm_full"])
def test_reward_head_values_are_the_reward_model_states_of_each_prefix(ppo_runs, reward_run):
    """value_model reward_head: V_t = head(the reward model's final state after the prompt and t response tokens), read
    off the reward's own scoring pass of the padded batch; checked row by row on each unpadded prefix. Only the head
    is trained: no value adapter, and one training pass of the base (the policy's)."""
    cfg = config(ppo_runs, reward_model_path=str(ppo_runs[reward_run]), value_model="reward_head",
                 score_stats="reward_data")
    model, reward, info = model_set.build(cfg, "cpu")
    assert model_set.VALUE not in model.peft.peft_config and model.training_passes() == (model_set.POLICY,)
    assert info["value_from_reward"]
    head_and_policy = model_set.adapter_parameters(model.peft, model_set.POLICY) + list(model.value_head.parameters())
    assert [id(p) for p in model.trainable_parameters()] == [id(p) for p in head_and_policy]
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    settings = rollout.Settings(max_new_tokens=6, temperature=1.0, top_p=1.0, scoring_rows=4)
    texts = rollout.read_prompts(str(ppo_runs["prompts"]), tokenizer, 512).texts[-4:]
    torch.manual_seed(0)
    samples = rollout.sample(model, tokenizer, texts, settings, "cpu", contextlib.nullcontext())
    ro = rollout.score(model, reward, [None] * 4, samples, settings)
    assert ro.value_states.shape[:2] == ro.mask.shape
    if reward_run == "rm":
        body = lambda ids: model.hidden_states(model_set.REWARD, ids, torch.ones_like(ids))  # noqa: E731
    else:
        classifier = reward.modules[0]
        body = lambda ids: getattr(classifier, classifier.base_model_prefix)(input_ids=ids).last_hidden_state  # noqa: E731
    p = ro.prompt_length
    with torch.no_grad():
        for i in range(len(ro.mask)):
            prompt = ro.input_ids[i, :p][ro.attention_mask[i, :p].bool()]
            for t in range(int(ro.mask[i].sum())):
                prefix = torch.cat([prompt, ro.input_ids[i, p:p + t]])[None]
                expected = model.value_head(body(prefix)[0, -1]).squeeze()
                torch.testing.assert_close(ro.values[i, t], expected, atol=1e-5, rtol=1e-5)
    assert (ro.values * (1 - ro.mask)).abs().sum() == 0
    logits, values = model(ro.input_ids, ro.attention_mask, p, part=model_set.POLICY, reward_states=ro.value_states)
    torch.testing.assert_close(values * ro.mask, ro.values)
    (logits.float().logsumexp(-1).mean() + values.pow(2).mean()).backward()
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(p.grad is None for m in reward.modules for p in m.parameters() if id(p) not in
               {id(q) for q in model.trainable_parameters()})


def test_reward_head_needs_a_reward_model_that_reads_the_policy_tokens(ppo_runs):
    with pytest.raises(ConfigError, match="reads the reward model"):
        config(ppo_runs, reward_model_path=None, reward_fn="builtins:len", value_model="reward_head")


def test_value_model_auto_is_a_head_on_the_reward_states_when_the_reward_model_reads_the_policy_tokens(
        ppo_runs, monkeypatch):
    def resolved(**keys):
        ran = model_set.with_value_model(config(ppo_runs, **{"value_model": "auto", **keys}))
        return ran.value_model, ran.gae_lambda

    assert resolved() == ("reward_head", 1.0)  # a reward adapter on the PPO base; no bootstrapping on its values
    assert resolved(reward_model_path=str(ppo_runs["rm_full"])) == ("reward_head", 1.0)  # a classifier of its own
    assert resolved(reward_model_path=None, reward_fn="builtins:len") == ("lora_head", 0.95)  # a rule has no states
    assert resolved(lam=0.9) == ("reward_head", 0.9)  # a lam that is set stays
    monkeypatch.setattr(rewards, "template_tail", lambda *tokenizers: None)  # another tokenizer or template
    assert resolved() == ("lora_head", 0.95)
    assert model_set.with_value_model(config(ppo_runs, value_model="policy_head")).value_model == "policy_head"
    with pytest.raises(ConfigError, match="auto resolved first"):  # lam null depends on what auto becomes
        config(ppo_runs, value_model="auto").gae_lambda
