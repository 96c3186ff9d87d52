"""`rlhf eval --policy RUN_DIR [--baseline RUN_DIR] --prompts FILE`: measure policies on held-out prompts.

Reward-model score, KL to the reference, length, distinct-1/2, the share of responses re-tokenization changes, and
with a gold judge the gold score and win rate."""

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf import runs
from rlhf.chat import format_prompt
from rlhf.config import command_main, import_function, key
from rlhf.errors import ConfigError
from rlhf.ppo.evaluation import win_rate
from rlhf.ppo.rewards import ModelReward, separate_reward, template_tail
from rlhf.sampling import Sampling, retokenization_mismatch, sample_tokens, without_eos

# Each policy (and the baseline) is sampled with the same seed. KL to the reference: the sum over response tokens of
# log p_policy - log p_ref on the policy's own samples (a Monte Carlo estimate of the sequence KL). The reference is
# the policy's base with its adapter disabled (for a PPO run, the SFT model), or `reference`; a model without an
# adapter is its own reference. Log-probs are taken at the sampling temperature (at 1 for greedy decoding) and ignore
# top-p/top-k truncation, so with those the KL is that of the untruncated distributions. The reward model reads each
# response as PPO's reward does: the sampled ids when its tokenizer and template match the policy's, else the text.

ROWS = (  # (result key, table label)
    ("reward_score", "reward-model score"),
    ("kl", "KL to reference (nats)"),
    ("response_length", "response length (tokens)"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("retokenize_mismatch", "re-tokenization mismatch (share)"),
    ("gold_score", "gold score"),
    ("win_rate", "gold win rate vs baseline"),
)


# ---- pure metrics --------------------------------------------------------------------------------

def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of whitespace words in `texts` (Li et al. 2016); 0 if there are none."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ---- model-based metrics -------------------------------------------------------------------------

def response_logprobs(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                      temperature: float, batch_size: int) -> list[float]:
    """Sum of log p(response token | prompt, earlier tokens) per sequence, at `temperature`."""
    import torch

    from rlhf.ppo.core import logprobs_from_logits

    device = next(model.parameters()).device
    sums = []
    for start in range(0, len(prompt_ids), batch_size):
        seqs = [p + r for p, r in zip(prompt_ids[start:start + batch_size], response_ids[start:start + batch_size])]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        logp = logprobs_from_logits(logits, ids[:, 1:], temperature)
        for row, (p, r) in enumerate(zip(prompt_ids[start:start + batch_size], response_ids[start:start + batch_size])):
            sums.append(logp[row, len(p) - 1:len(p) - 1 + len(r)].sum().item())
    return sums


def sequence_kl(model, tokenizer, prompts: list, response_ids: list[list[int]], temperature: float,
                batch_size: int, reference=None) -> list[float]:
    """log p_policy - log p_ref of each response; the reference is `reference`, else `model` with adapters off."""
    from peft import PeftModel

    args = (prompt_token_ids(tokenizer, prompts), response_ids, tokenizer.pad_token_id, temperature, batch_size)
    policy = response_logprobs(model, *args)
    if reference is not None:
        ref = response_logprobs(reference, *args)
    elif isinstance(model, PeftModel):
        with model.disable_adapter():
            ref = response_logprobs(model, *args)
    else:
        ref = response_logprobs(model, *args)  # no adapter: the model is its own reference
    return [p - r for p, r in zip(policy, ref)]


def prompt_token_ids(tokenizer, prompts: list) -> list[list[int]]:
    """Each prompt's ids through the chat template, as the policy is given it when sampling."""
    return [tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]


def sample_policy(path: str, prompts: list, sampling: Sampling, reference: str | None, device: str) -> dict[str, Any]:
    """Responses of one policy (texts, and prompt + response ids without EOS) with its KL, length, diversity and
    re-tokenization figures."""
    from rlhf.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(path, merge=False).to(device).eval()  # unmerged: the reference is the adapter switched off
    tokenizer = load_tokenizer(path, padding_side="left")
    ref_model = load_causal_lm(reference).to(device).eval() if reference else None
    tokens = sample_tokens(model, tokenizer, prompts, sampling.n, sampling.max_new_tokens, sampling.temperature,
                           sampling.top_p, sampling.seed, sampling.batch_size, sampling.top_k)
    flat_prompts = [p for p, ids in zip(prompts, tokens) for _ in ids]
    flat_ids = [r for ids in tokens for r in ids]
    temperature = sampling.temperature if sampling.temperature > 0 else 1.0
    kl = sequence_kl(model, tokenizer, flat_prompts, flat_ids, temperature, sampling.batch_size, ref_model)
    responses = tokenizer.batch_decode(flat_ids, skip_special_tokens=True)
    response_ids = [without_eos(r, tokenizer.eos_token_id) for r in flat_ids]
    token_ids = [p + r for p, r in zip(prompt_token_ids(tokenizer, flat_prompts), response_ids)]
    return {"path": path, "prompts": flat_prompts, "responses": responses, "token_ids": token_ids,
            "tokenizer": tokenizer,
            "metrics": {"kl": mean(kl), "response_length": mean([len(r) for r in response_ids]),
                        "distinct_1": distinct_n(responses, 1), "distinct_2": distinct_n(responses, 2),
                        "retokenize_mismatch": retokenization_mismatch(tokenizer, response_ids)}}


def reward_scores(reward: ModelReward, side: dict[str, Any], batch_size: int) -> list[float]:
    """The reward model's scores of one side's samples, `batch_size` at a time, read as PPO's reward reads a
    rollout: the sampled ids when the reward's tokenizer and template match the side's, else the decoded text."""
    reward = copy.copy(reward)
    reward.tail = template_tail(reward.tokenizer, side["tokenizer"])
    rows = [slice(start, start + batch_size) for start in range(0, len(side["responses"]), batch_size)]
    return [s for r in rows for s in reward(side["prompts"][r], side["responses"][r], side["token_ids"][r]).tolist()]


# ---- the evaluation ------------------------------------------------------------------------------

def run_eval(policy: str, prompts: str, baseline: str | None = None, reward_model: str | None = None,
             judge: str | None = None, reference: str | None = None, out: str | Path | None = None,
             sampling: Sampling | None = None) -> dict[str, Any]:
    """Evaluate `policy` (and `baseline`) on the prompts file; writes `out` (JSON) and `out` with .md if given."""
    import torch

    from rlhf.models import load_tokenizer
    from rlhf.ppo.rollout import read_prompts

    sampling = sampling or Sampling()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gold = import_function(judge, "judge") if judge else None  # a bad spec fails before any model is loaded
    prompt_set = read_prompts(prompts, load_tokenizer(policy), max_prompt_length=10**9).prompts
    sides = {"policy": sample_policy(policy, prompt_set, sampling, reference, device)}
    if baseline:
        sides["baseline"] = sample_policy(baseline, prompt_set, sampling, reference, device)
    if reward_model:
        reward = separate_reward(reward_model, None, device, sides["policy"]["tokenizer"])
        for side in sides.values():
            side["metrics"]["reward_score"] = mean(reward_scores(reward, side, sampling.batch_size))
    if gold:
        for side in sides.values():
            side["gold"] = [float(gold(p, r)) for p, r in zip(side["prompts"], side["responses"])]
            side["metrics"]["gold_score"] = mean(side["gold"])
        if baseline:
            sides["policy"]["metrics"]["win_rate"] = win_rate(sides["policy"]["gold"], sides["baseline"]["gold"])
    result = {
        "prompts": len(prompt_set), "settings": dataclasses.asdict(sampling), "reward_model": reward_model, "judge": judge,
        "models": {name: {"path": side["path"], **side["metrics"]} for name, side in sides.items()},
        "samples": [{"prompt": p, **{name: side["responses"][i] for name, side in sides.items()}}
                    for i, p in enumerate(sides["policy"]["prompts"])],
    }
    table = markdown_table(result["models"])
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(result, out)
        Path(out).with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    return result


def markdown_table(models: dict[str, dict[str, Any]]) -> str:
    """Metrics as rows, models as columns; only rows some model has a value for."""
    names = list(models)
    lines = ["| metric | " + " | ".join(f"{n} ({models[n]['path']})" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for metric, label in ROWS:
        if any(metric in models[n] for n in names):
            cells = [f"{models[n][metric]:.4g}" if metric in models[n] else "" for n in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class EvalConfig(Sampling):
    """`rlhf eval` keys: the models, the prompts, the scorers, and the sampling keys."""

    policy: str | None = key(None, "run directory or model to evaluate (required)")
    baseline: str | None = key(None, "run directory or model to compare with (e.g. the SFT run)")
    prompts: str | None = key(None, "held-out prompts (required): {\"prompt\"} or {\"messages\"} rows")
    reward_model: str | None = key(None, "reward run directory: mean score of each model's responses")
    judge: str | None = key(None, "module:function gold_score(prompt, response) -> float, "
                                  "e.g. rlhf.demo_task:gold_score")
    reference: str | None = key(None, "model for the KL instead of each policy's base with adapters disabled")
    out: str | None = key(None, "JSON file for the results (the table goes next to it as .md)")

    def __post_init__(self):
        for name in ("policy", "prompts"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is not set")
        super().__post_init__()


def eval_command(config: EvalConfig) -> int:
    run_eval(config.policy, config.prompts, config.baseline, config.reward_model, config.judge, config.reference,
             config.out, config.sampling())
    return 0


def main(argv: list[str]) -> int:
    return command_main(argv, EvalConfig, __doc__, eval_command)
