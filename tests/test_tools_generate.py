"""`rlhf generate`: prints the completions `rlhf.sampling.sample` produces."""

from rlhf import cli
from rlhf.sampling import load_for_generation, sample


def test_generate_prints_greedy_completion(ppo_runs, capsys, one_thread):
    prompt = "Tell me about the number 7."
    assert cli.main(["generate", "--model", str(ppo_runs["sft"]), "--prompt", prompt, "--max-new-tokens", "8"]) == 0
    model, tokenizer = load_for_generation(str(ppo_runs["sft"]))
    expected = sample(model, tokenizer, [prompt], max_new_tokens=8, temperature=0)[0][0]
    assert expected.strip()
    assert capsys.readouterr().out == f"### {prompt}\n{expected}\n"


def test_generate_numbers_several_samples_per_prompt(ppo_runs, capsys, one_thread):
    args = ["generate", "--model", str(ppo_runs["base"]), "--prompt", "a", "--prompt", "b", "--n", "2",
            "--temperature", "1", "--max-new-tokens", "4", "--seed", "3"]
    assert cli.main(args) == 0
    model, tokenizer = load_for_generation(str(ppo_runs["base"]))
    a, b = sample(model, tokenizer, ["a", "b"], n=2, max_new_tokens=4, temperature=1.0, seed=3)
    assert capsys.readouterr().out == f"### a\n[1] {a[0]}\n[2] {a[1]}\n### b\n[1] {b[0]}\n[2] {b[1]}\n"
