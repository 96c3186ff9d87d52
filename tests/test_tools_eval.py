"""`rlhf eval`: pure metrics on hand-made texts, KL against the reference, and full runs on tiny models.

Also `rlhf score` (reward/score.py), the reward-model scorer `rlhf eval` uses, through the command line."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf import cli, evaluate
from rlhf.config import load_config
from rlhf.errors import ConfigError
from rlhf.chat import format_prompt
from conftest import make_tiny
from rlhf.sampling import Sampling, retokenization_mismatch, sample_tokens, without_eos
from rlhf.models import load_causal_lm, load_tokenizer

PROMPTS = ["Tell me about the number 1.", "Tell me about the number 2.", "Count to 3.", "What color is the sky?"]


def words_judge(prompt, response):
    """A stand-in gold judge for the tests: more words is better."""
    return float(len(response.split()))


def test_distinct_n_on_hand_made_texts():
    texts = ["a b a b", "a b c", ""]
    assert evaluate.distinct_n(texts, 1) == 3 / 7  # a b a b a b c
    assert evaluate.distinct_n(texts, 2) == 3 / 5  # ab ba ab | ab bc
    assert evaluate.distinct_n(["one"], 2) == 0.0


def test_win_rate_counts_ties_half():
    assert evaluate.win_rate([1.0, 0.5, 0.0, 1.0], [0.5, 0.5, 1.0, 0.0]) == (1 + 0.5 + 0 + 1) / 4
    with pytest.raises(ValueError):
        evaluate.win_rate([1.0], [])


@pytest.fixture
def samples(ppo_runs, one_thread):
    """Responses of the LoRA policy (the `sft` run) to PROMPTS, as token ids."""
    model = load_causal_lm(str(ppo_runs["sft"]), merge=False).eval()
    tokenizer = load_tokenizer(str(ppo_runs["sft"]))
    ids = [r[0] for r in sample_tokens(model, tokenizer, PROMPTS, max_new_tokens=10, temperature=1.0, seed=1)]
    return model, tokenizer, ids


def test_kl_of_a_model_without_adapter_against_itself_is_zero(ppo_runs, samples):
    _, tokenizer, ids = samples
    base = load_causal_lm(str(ppo_runs["base"])).eval()
    assert evaluate.sequence_kl(base, tokenizer, PROMPTS, ids, 1.0, batch_size=3) == [0.0] * len(PROMPTS)


def test_kl_with_the_adapter_disabled_equals_kl_against_the_base(ppo_runs, samples):
    model, tokenizer, ids = samples
    disabled = evaluate.sequence_kl(model, tokenizer, PROMPTS, ids, 1.0, batch_size=3)
    base = load_causal_lm(str(ppo_runs["base"])).eval()
    explicit = evaluate.sequence_kl(model, tokenizer, PROMPTS, ids, 1.0, batch_size=4, reference=base)
    assert all(abs(k) > 1e-4 for k in disabled)
    assert disabled == pytest.approx(explicit, abs=1e-4)  # also: batching and padding do not change the sums


def test_response_logprobs_match_a_single_unpadded_forward(samples):
    model, tokenizer, ids = samples
    prompt = tokenizer(format_prompt(tokenizer, PROMPTS[2]), add_special_tokens=False)["input_ids"]
    [batched] = evaluate.response_logprobs(model, [prompt], [ids[2]], tokenizer.pad_token_id, 1.0, 1)
    full = torch.tensor([prompt + ids[2]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=full).logits[0, :-1], -1)
    expected = sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(ids[2]))
    assert batched == pytest.approx(expected, abs=1e-4)


def test_eval_run_on_tiny_models(ppo_runs, tmp_path, capsys, one_thread):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    torch.manual_seed(0)
    rm = tmp_path / "rm"
    AutoModelForSequenceClassification.from_pretrained(ppo_runs["base"], num_labels=1).save_pretrained(rm)
    load_tokenizer(str(ppo_runs["base"])).save_pretrained(rm)
    out = tmp_path / "eval" / "eval.json"
    out.parent.mkdir()
    # the kebab-case spellings of the argparse days (--reward-model, --max-new-tokens) still work
    args = ["eval", "--policy", str(ppo_runs["sft"]), "--baseline", str(ppo_runs["base"]), "--prompts", str(prompts),
            "--reward-model", str(rm), "--judge", f"{__name__}:words_judge", "--out", str(out),
            "--n", "2", "--max-new-tokens", "12", "--seed", "5"]
    assert cli.main(args) == 0
    table = capsys.readouterr().out
    assert "| gold win rate vs baseline |" in table and out.with_suffix(".md").read_text() == table
    assert "| re-tokenization mismatch (share) |" in table

    result = json.loads(out.read_text())
    policy, baseline = result["models"]["policy"], result["models"]["baseline"]
    assert result["prompts"] == 4 and len(result["samples"]) == 8
    assert [s["prompt"] for s in result["samples"]] == [p for p in PROMPTS for _ in range(2)]
    responses = {side: [s[side] for s in result["samples"]] for side in ("policy", "baseline")}
    gold = {side: [words_judge(None, r) for r in texts] for side, texts in responses.items()}
    assert policy["gold_score"] == pytest.approx(sum(gold["policy"]) / 8)
    assert policy["win_rate"] == evaluate.win_rate(gold["policy"], gold["baseline"])
    assert policy["distinct_2"] == evaluate.distinct_n(responses["policy"], 2)
    assert baseline["kl"] == 0.0 and policy["kl"] != 0.0
    assert 0 < policy["response_length"] <= 12
    assert 0 <= policy["retokenize_mismatch"] <= 1 and 0 <= baseline["retokenize_mismatch"] <= 1

    # the reward model shares the baseline's tokenizer and template, so it reads the sampled ids, as PPO's does:
    # prompt ids, response ids without EOS, then what its template puts after a response
    from reward.score import load_reward_model, score_ids

    model, tokenizer = load_reward_model(str(rm))
    base = load_causal_lm(str(ppo_runs["base"])).eval()
    sampled = [r for rs in sample_tokens(base, tokenizer, PROMPTS, n=2, max_new_tokens=12, seed=5) for r in rs]
    assert tokenizer.batch_decode(sampled, skip_special_tokens=True) == responses["baseline"]
    tail = tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    prompts_ids = evaluate.prompt_token_ids(tokenizer, [s["prompt"] for s in result["samples"]])
    expected = score_ids(model, tokenizer, [p + without_eos(r, tokenizer.eos_token_id) + tail
                                            for p, r in zip(prompts_ids, sampled)])
    assert baseline["reward_score"] == pytest.approx(expected.mean().item(), abs=1e-5)
    assert baseline["retokenize_mismatch"] == retokenization_mismatch(
        tokenizer, [without_eos(r, tokenizer.eos_token_id) for r in sampled])


def test_eval_scores_text_when_the_reward_tokenizer_differs(ppo_runs, tmp_path_factory, tmp_path, one_thread):
    """A reward model with its own tokenizer reads the decoded responses, rendered by its template (PPO's fallback)."""
    from reward.score import load_reward_model, score_texts

    other = make_tiny(tmp_path_factory, "llama", hidden=32, layers=1, vocab_size=512)
    rm = tmp_path / "rm"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(other, num_labels=1).save_pretrained(rm)
    load_tokenizer(str(other)).save_pretrained(rm)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    result = evaluate.run_eval(str(ppo_runs["sft"]), str(prompts), reward_model=str(rm),
                               sampling=Sampling(max_new_tokens=8, seed=1, batch_size=3))
    model, tokenizer = load_reward_model(str(rm))
    expected = score_texts(model, tokenizer, PROMPTS, [s["policy"] for s in result["samples"]])
    assert result["models"]["policy"]["reward_score"] == pytest.approx(expected.mean().item(), abs=1e-5)


def test_same_seed_same_samples(ppo_runs, tmp_path, one_thread):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:2]))
    sampling = Sampling(n=1, max_new_tokens=8, temperature=1.0, seed=2)
    first = evaluate.run_eval(str(ppo_runs["sft"]), str(prompts), sampling=sampling)
    second = evaluate.run_eval(str(ppo_runs["sft"]), str(prompts), sampling=sampling)
    assert first["samples"] == second["samples"] and first["models"] == second["models"]


def test_bad_judge_fails_before_loading_models(tmp_path):
    with pytest.raises(ConfigError, match="judge 'rlhf.demo_task.gold_score' must be written module:function"):
        evaluate.run_eval("no-such-model", "no-such-file", judge="rlhf.demo_task.gold_score")
    with pytest.raises(ConfigError, match="module 'rlhf.demo_task' has no function 'no_such'"):
        evaluate.run_eval("no-such-model", "no-such-file", judge="rlhf.demo_task:no_such")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        evaluate.run_eval("no-such-model", "no-such-file", judge="no_such_module:f")


def test_eval_config_from_yaml_and_kebab_case_keys(tmp_path):
    config_file = tmp_path / "eval.yaml"
    config_file.write_text("policy: runs/ppo\nprompts: p.jsonl\nreward_model: runs/rm\nn: 3\ntemperature: 1\n")
    config = load_config(evaluate.EvalConfig, ["--config", str(config_file), "--max-new-tokens", "12",
                                               "--top_p=0.9", "--judge", "rlhf.demo_task:gold_score"])
    assert (config.policy, config.prompts, config.reward_model, config.judge) == (
        "runs/ppo", "p.jsonl", "runs/rm", "rlhf.demo_task:gold_score")
    assert config.sampling() == Sampling(n=3, max_new_tokens=12, temperature=1.0, top_p=0.9)
    assert isinstance(config.sampling().temperature, float)  # written 1, stored (and reported) as 1.0


@pytest.mark.parametrize("argv, message", [
    (["--prompts", "p.jsonl"], "policy is not set"),
    (["--policy", "m"], "prompts is not set"),
    (["--policy", "m", "--prompts", "p", "--n", "0"], "n must be at least 1"),
    (["--policy", "m", "--prompts", "p", "--temperature", "hot"], "temperature must be a number"),
    (["--policy", "m", "--prompts", "p", "--top_p", "1.5"], r"top_p must be in \(0, 1\]"),
    (["--policy", "m", "--prompts", "p", "--reward_modle", "rm"], "unknown config key 'reward_modle'.*'reward_model'"),
])
def test_eval_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(evaluate.EvalConfig, argv)


def test_eval_help_lists_the_keys(capsys):
    assert cli.main(["eval", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("policy", "baseline", "prompts", "reward_model", "judge", "reference", "out", "n", "max_new_tokens",
                 "temperature", "top_p", "top_k", "seed", "batch_size"):
        assert f"--{name} (default " in text
    assert "--temperature (default 1.0): sampling temperature; 0 = greedy" in text


def test_eval_command_with_snake_case_keys(ppo_runs, tmp_path, capsys, one_thread):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPTS[0]}) + "\n")
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--policy", str(ppo_runs["sft"]), "--prompts", str(prompts), "--reward_model",
                     str(ppo_runs["rm"]), "--max_new_tokens", "4", "--batch_size=2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["settings"] == {"n": 1, "max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0, "seed": 0,
                                  "batch_size": 2, "top_k": 0}
    assert result["reward_model"] == str(ppo_runs["rm"]) and "reward_score" in result["models"]["policy"]
    assert "| reward-model score |" in capsys.readouterr().out


# ---- `rlhf score` (reward/score.py) --------------------------------------------------------------

@pytest.fixture
def score_inputs(ppo_runs, tmp_path):
    """A texts file and a pairs file on PROMPTS, and the scores `score_texts` gives their responses."""
    from reward.score import load_reward_model, score_texts

    responses = [f"Answer number {i}." for i in range(len(PROMPTS))]
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, responses)))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": r, "rejected": "no"}) + "\n"
                             for p, r in zip(PROMPTS, responses)))
    model, tokenizer = load_reward_model(str(ppo_runs["rm"]))
    expected = score_texts(model, tokenizer, PROMPTS, responses, max_length=6).tolist()
    return texts, pairs, expected


def _scores(path, name="score"):
    return [json.loads(line)[name] for line in path.read_text().splitlines()]


def test_score_command_with_snake_case_keys(ppo_runs, score_inputs, tmp_path, capsys, one_thread):
    texts, pairs, expected = score_inputs
    out = tmp_path / "scored.jsonl"
    assert cli.main(["score", "--model", str(ppo_runs["rm"]), "--input", str(texts), "--out", str(out),
                     "--batch_size", "3", "--max_length", "6"]) == 0
    assert _scores(out) == pytest.approx(expected, abs=1e-5)
    assert f"wrote 4 scored records to {out}" in capsys.readouterr().out
    assert cli.main(["score", "--model", str(ppo_runs["rm"]), "--input", str(pairs), "--max_length=6"]) == 0
    captured = capsys.readouterr()
    printed = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["chosen_score"] for r in printed] == pytest.approx(expected, abs=1e-5)
    assert json.loads(captured.err.strip().splitlines()[-1])["pairs"] == 4


def test_score_command_with_kebab_case_keys(ppo_runs, score_inputs, tmp_path, one_thread):
    texts, _, expected = score_inputs
    out = tmp_path / "scored.jsonl"
    assert cli.main(["score", "--model", str(ppo_runs["rm"]), "--input", str(texts), "--out", str(out),
                     "--batch-size", "2", "--max-length", "6"]) == 0
    assert _scores(out) == pytest.approx(expected, abs=1e-5)


def test_score_help_and_errors(capsys, tmp_path):
    from reward import score

    assert cli.main(["score", "--help"]) == 0
    text = capsys.readouterr().out
    for name in ("model", "input", "out", "batch_size", "max_length"):
        assert f"--{name} (default " in text
    assert "--batch_size (default 16)" in text
    with pytest.raises(ConfigError, match="input is not set"):
        score.main(["--model", "m"])
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        load_config(score.ScoreConfig, ["--model", "m", "--input", "f", "--batch-size", "0"])
    assert cli.main(["score", "--model", "m", "--input", "f", "--max_lenght", "3"]) == 2
    assert "did you mean 'max_length'" in capsys.readouterr().err
