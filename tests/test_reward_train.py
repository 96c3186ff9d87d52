"""The reward stage: learns a synthetic preference, reloads with plain peft, resumes, builds on an SFT run.

`tests/data/prefs_polite.jsonl`: 200 pairs where the chosen response is polite and the rejected one rude around
the same advice; which one is longer alternates, so length says nothing about the preference.
"""

import json
import math

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import DATA, StopAt
from reward import train
from reward.pairs import encode, load_pair_splits, render
from reward.score import load_reward_model, score_texts
from rlhf import cli, hf_stage, runs, sft
from rlhf.config import load_config

MARGINS = (1 / 3, 2 / 3, 1.0)


def reward_config(model, data, out, *extra):
    argv = ["--model_name_or_path", str(model), "--dataset_path", str(data), "--output_dir", str(out),
            "--max_steps", "30", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32",
            "--eval_steps", "10", "--save_steps", "10", "--logging_steps", "5", "--learning_rate", "0.005", *extra]
    return load_config(train.RewardStageConfig, argv)


def write_pairs(path, n=None, margins=False):
    """The synthetic pairs (the first `n`), optionally with a margin column."""
    rows = [json.loads(line) for line in (DATA / "prefs_polite.jsonl").read_text().splitlines()][:n]
    if margins:
        rows = [{**row, "margin": MARGINS[i % 3]} for i, row in enumerate(rows)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def split_of(config, name):
    pairs = load_pair_splits(config.dataset_path, drop_bad_rows=config.drop_bad_rows)[0]["train"]
    return hf_stage.split(pairs, {"train": pairs}, config.val_ratio, config.test_ratio, config.seed)[name]


def accuracy_and_margin(chosen, rejected):
    diff = chosen - rejected
    return (diff > 0).double().mean().item(), diff.double().mean().item()


@pytest.fixture(scope="module")
def trained(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("rm")
    config = reward_config(tiny_llama, write_pairs(root / "prefs.jsonl", margins=True), root / "run")
    summary = train.run(config)
    return config, root / "run", summary


def test_learns_the_synthetic_preference(trained):
    config, run_dir, summary = trained
    assert summary["global_step"] == 30 and summary["test/pairs"] == 20
    assert summary["test/accuracy"] >= 0.9 and summary["test/margin"] > 0
    assert "test/perplexity" not in summary
    metrics = runs.MetricsFile(run_dir).read()
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    evals = [m for m in metrics if "eval/accuracy" in m]
    assert [m["step"] for m in evals] == [10, 20, 30] and evals[-1]["eval/accuracy"] >= 0.9
    assert {"eval/margin", "eval/accuracy_margin_lt_0.34", "eval/accuracy_margin_0.34_0.67",
            "eval/accuracy_margin_ge_0.67"} <= evals[-1].keys()
    test = [m for m in metrics if "test/accuracy" in m]
    assert len(test) == 1 and test[0]["test/accuracy"] == summary["test/accuracy"]
    assert not any("eval/accuracy" in m for m in metrics if "test/loss" in m)  # TRL would log test figures as eval


def test_reloads_with_plain_transformers_and_peft(trained, tiny_llama):
    config, run_dir, summary = trained
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
    model = PeftModel.from_pretrained(base, run_dir / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    test = split_of(config, "test")
    with torch.no_grad():
        def score(pair, response):
            return model(input_ids=torch.tensor([encode(tokenizer, pair.prompt, response)])).logits[0, 0]
        chosen = torch.stack([score(p, p.chosen) for p in test])
        rejected = torch.stack([score(p, p.rejected) for p in test])
    accuracy, margin = accuracy_and_margin(chosen, rejected)
    assert accuracy == summary["test/accuracy"]
    assert margin == pytest.approx(summary["test/margin"], rel=1e-4)


def test_reward_stats_and_score_command(trained, tmp_path, capsys):
    config, run_dir, summary = trained
    stats = json.loads((run_dir / runs.REWARD_STATS).read_text())
    assert stats == summary["reward_stats"] and stats["count"] == 2 * 160
    model, tokenizer = load_reward_model(str(run_dir))
    pairs = split_of(config, "train")
    rewards = score_texts(model, tokenizer, [p.prompt for p in pairs] * 2,
                          [p.chosen for p in pairs] + [p.rejected for p in pairs], batch_size=64).double()
    assert stats["mean"] == pytest.approx(rewards.mean().item(), abs=1e-4)
    assert stats["std"] == pytest.approx(rewards.std(correction=0).item(), rel=1e-4)

    test = split_of(config, "test")
    pairs_file, texts_file = tmp_path / "pairs.jsonl", tmp_path / "texts.jsonl"
    pairs_file.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
                                              "margin": p.margin}) + "\n" for p in test))
    texts_file.write_text("".join(json.dumps({"prompt": p.prompt, "response": p.chosen}) + "\n" for p in test))
    assert cli.main(["score", "--model", str(run_dir), "--input", str(pairs_file), "--out", str(tmp_path / "s.jsonl")
                     ]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["accuracy"] == summary["test/accuracy"] and printed["pairs"] == 20
    assert printed["margin"] == pytest.approx(summary["test/margin"], rel=1e-4)
    assert cli.main(["score", "--model", str(run_dir), "--input", str(texts_file), "--out", str(tmp_path / "t.jsonl")
                     ]) == 0
    raw_file = tmp_path / "raw.jsonl"  # already rendered texts are scored verbatim
    raw_file.write_text("".join(json.dumps({"text": render(tokenizer, p.prompt, p.chosen)}) + "\n" for p in test))
    assert cli.main(["score", "--model", str(run_dir), "--input", str(raw_file), "--out", str(tmp_path / "r.jsonl")
                     ]) == 0
    chosen_scores = [json.loads(line)["chosen_score"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    for name in ("t.jsonl", "r.jsonl"):
        scores = [json.loads(line)["score"] for line in (tmp_path / name).read_text().splitlines()]
        assert scores == pytest.approx(chosen_scores, abs=1e-5)


def test_margin_and_centering_losses_match_hand_computed_values(tiny_llama, tmp_path):
    import datasets

    from rlhf.models import load_sequence_classifier, load_tokenizer

    def loss(*extra, margin=None):
        config = reward_config(tiny_llama, DATA / "prefs_polite.jsonl", tmp_path, "--peft_method", "full",
                               "--val_ratio", "0", *extra)
        trainer = train.PreferenceTrainer(
            model=load_sequence_classifier(str(tiny_llama)), args=config,
            processing_class=load_tokenizer(str(tiny_llama)),
            train_dataset=datasets.Dataset.from_list([{"chosen_ids": [5, 6], "rejected_ids": [7]}]))
        rewards = torch.tensor([[1.0], [-0.5], [0.0], [0.5]])  # chosen (1, -0.5), rejected (0, 0.5)

        def model(**inputs):  # stands in for the network: fixed rewards, so the loss can be checked by hand
            return type("Output", (), {"logits": rewards})()

        inputs = {"input_ids": torch.ones(4, 2, dtype=torch.long), "attention_mask": torch.ones(4, 2, dtype=torch.long)}
        if margin is not None:
            inputs["margin"] = torch.tensor(margin)
        trainer.model.train()
        return trainer.compute_loss(model, inputs).item()

    # -log sigmoid(d) = log(1 + exp(-d)); chosen - rejected = (1, -1)
    assert loss() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2, rel=1e-6)
    with_margin = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(1))) / 2  # margins (0.5, 0)
    assert loss(margin=[0.5, 0.0]) == pytest.approx(with_margin, rel=1e-6)
    centering = 0.01 * ((1 + 0) ** 2 + (-0.5 + 0.5) ** 2) / 2  # coefficient * mean (r_c + r_r)^2
    assert loss("--center_rewards_coefficient", "0.01", margin=[0.5, 0.0]) == pytest.approx(with_margin + centering,
                                                                                            rel=1e-6)



def small_config(model, data, out, *extra):
    return reward_config(model, data, out, "--max_steps", "8", "--per_device_train_batch_size", "4",
                         "--eval_steps", "4", "--save_steps", "4", "--logging_steps", "2", "--test_ratio", "0.2",
                         *extra)


def train_losses(run_dir):
    return [m["train/loss"] for m in runs.MetricsFile(run_dir).read() if "train/loss" in m]


def test_resume_after_a_stop_matches_an_uninterrupted_run(tiny_llama, tmp_path):
    data = write_pairs(tmp_path / "prefs.jsonl", n=40)
    train.run(small_config(tiny_llama, data, tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        train.run(small_config(tiny_llama, data, tmp_path / "resumed"), callbacks=(StopAt(6),))
    assert runs.last_checkpoint(tmp_path / "resumed").name == "checkpoint-4"
    assert not runs.is_finished(tmp_path / "resumed")
    summary = train.run(small_config(tiny_llama, data, tmp_path / "resumed"))
    assert summary["global_step"] == 8
    assert [m["step"] for m in runs.MetricsFile(tmp_path / "resumed").read() if "train/loss" in m] == [2, 4, 6, 8]
    assert train_losses(tmp_path / "resumed") == pytest.approx(train_losses(tmp_path / "full"), rel=1e-4)
    assert summary["test/accuracy"] == runs.read_summary(tmp_path / "full")["test/accuracy"]


def test_ties_train_toward_equal_scores_and_stay_out_of_accuracy(tiny_llama, tmp_path):
    """A label export with every third pair a tie, written in both orders with margin 0 (as `keep_ties` does)."""
    rows = []
    for i, row in enumerate(json.loads(line) for line in (DATA / "prefs_polite.jsonl").read_text().splitlines()):
        votes = {"pair_id": f"p{i}", "votes_chosen": 2, "votes_rejected": 0, "n_votes": 2, "margin": 0.5}
        if i % 3:
            rows.append({**row, **votes, "tie": False})
        else:
            tie = {**votes, "votes_chosen": 0, "margin": 0.0, "tie": True}
            rows += [{**row, **tie}, {**row, **tie, "chosen": row["rejected"], "rejected": row["chosen"]}]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = reward_config(tiny_llama, data, tmp_path / "rm")
    summary = train.run(config)
    test = split_of(config, "test")
    decided = [p for p in test if not p.tie]
    assert summary["test/tie_pairs"] == len(test) - len(decided) > 0 and summary["test/pairs"] == len(decided)
    model, tokenizer = load_reward_model(str(tmp_path / "rm"))

    def scores(pairs):
        prompts = [p.prompt for p in pairs]
        return (score_texts(model, tokenizer, prompts, [p.chosen for p in pairs]),
                score_texts(model, tokenizer, prompts, [p.rejected for p in pairs]))

    assert accuracy_and_margin(*scores(decided))[0] == summary["test/accuracy"] >= 0.8
    tie_chosen, tie_rejected = scores([p for p in test if p.tie])
    gap = (tie_chosen - tie_rejected).abs().mean().item()
    assert gap == pytest.approx(summary["test/tie_gap"], rel=1e-4)
    assert gap < summary["test/margin"]  # tied responses score closer together than decided ones differ


@pytest.mark.parametrize("base,method", [("sft", "lora"), ("model", "full")])
def test_reward_model_reloads_on_its_base(tiny_llama, tmp_path, base, method):
    """A LoRA reward model on an SFT run records that run as its base; a fully fine-tuned one is a whole model."""
    if base == "sft":
        sft.run(load_config(sft.SFTStageConfig, [
            "--model_name_or_path", str(tiny_llama), "--dataset_path", str(DATA / "sft_chat.jsonl"),
            "--output_dir", str(tmp_path / "sft"), "--max_steps", "3", "--learning_rate", "0.01",
            "--val_ratio", "0", "--test_ratio", "0"]))
    start = tmp_path / "sft" if base == "sft" else tiny_llama
    data = write_pairs(tmp_path / "prefs.jsonl", n=40)
    with data.open("a") as f:  # one bad row, dropped and counted
        f.write(json.dumps({"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."}) + "\n")
    config = small_config(start, data, tmp_path / "rm", "--max_steps", "4", "--val_ratio", "0", "--drop_bad_rows",
                          "true", "--peft_method", method, "--learning_rate", "0.005" if method == "lora" else "0.001")
    summary = train.run(config)
    counts = summary["data"]
    assert counts["bad_rows_dropped"] == 1 and counts["train_rows"] + counts["test_rows"] == 40
    final = tmp_path / "rm" / "final"
    test = split_of(config, "test")
    model, tokenizer = load_reward_model(str(tmp_path / "rm"))
    prompts = [p.prompt for p in test]
    chosen = score_texts(model, tokenizer, prompts, [p.chosen for p in test])
    rejected = score_texts(model, tokenizer, prompts, [p.rejected for p in test])
    assert accuracy_and_margin(chosen, rejected)[1] == pytest.approx(summary["test/margin"], rel=1e-4)
    if base == "sft":
        adapter = json.loads((final / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(tmp_path / "sft") and "score" in adapter["modules_to_save"]
        bare = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
        on_bare_base = PeftModel.from_pretrained(bare, final).eval()  # the SFT body is part of the reward model
        with torch.no_grad():
            ids = torch.tensor([encode(tokenizer, test[0].prompt, test[0].chosen)])
            assert abs(on_bare_base(input_ids=ids).logits[0, 0].item() - chosen[0].item()) > 1e-3
    else:
        assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()


def test_flawed_hh_rows_stop_the_stage_or_are_dropped_and_listed_in_the_summary(tiny_llama, tmp_path, capsys):
    """Public HH data has an empty final assistant turn here and there, and pairs whose dialogues differ."""
    hh = lambda prompt, answer: f"\n\nHuman: {prompt}\n\nAssistant: {answer}"  # noqa: E731
    rows = [{"chosen": hh(r["prompt"], r["chosen"]), "rejected": hh(r["prompt"], r["rejected"])}
            for r in map(json.loads, (DATA / "prefs_polite.jsonl").read_text().splitlines()[:20])]
    rows[3]["chosen"] = rows[3]["chosen"].rsplit("Assistant:", 1)[0] + "Assistant:"
    rows[7]["rejected"] = hh("Something else entirely?", "No.")
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["reward", "--model_name_or_path", str(tiny_llama), "--dataset_path", str(data),
            "--output_dir", str(tmp_path / "rm"), "--max_steps", "2", "--val_ratio", "0", "--test_ratio", "0"]
    assert cli.main(argv) == 2
    assert f"{data}:4: field 'chosen': empty response (`drop_bad_rows: true` skips such rows" in capsys.readouterr().err
    assert cli.main([*argv, "--drop_bad_rows"]) == 0
    assert "dropped 2 bad rows" in capsys.readouterr().out
    counts = runs.read_summary(tmp_path / "rm")["data"]
    assert counts["bad_rows_dropped"] == 2 and counts["train_rows"] == 18
    assert [(row["where"], row["field"]) for row in counts["bad_rows"]] == [(f"{data}:4", "chosen"),
                                                                           (f"{data}:8", "rejected")]
    assert counts["bad_rows"][1]["reason"].startswith("shares no prompt with 'chosen'")
