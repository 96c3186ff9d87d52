"""`rlhf score --model RUN_DIR --input FILE [--out FILE]`: reward scores for texts or preference pairs.

`load_reward_model` and `classifier_scores` are also what PPO's separate reward model and `rlhf eval` score with."""

import json
import math
import sys
from dataclasses import dataclass

import torch

from reward import pairs as pairs_lib
from rlhf import datafiles
from rlhf.chat import check_prompt, check_response
from rlhf.config import command_main, key
from rlhf.errors import ConfigError, DataError
from rlhf.models import (disable_dropout, load_sequence_classifier, load_tokenizer, position_ids, read_adapter_config,
                         resolve)

# Input rows: {"prompt", "response"} (scored as the reward stage renders them), {"text"} (scored verbatim), or
# preference pairs in any format reward.pairs reads (both responses scored, plus accuracy and mean margin).

MARGIN_BUCKETS = (0.34, 0.67)  # label-export margins of one vote: 1/3 slight, 2/3 clear, 1 strong


def load_reward_model(run_dir_or_model: str, dtype: str = "auto", merge: bool = True):
    """(model in eval mode with dropout off, tokenizer) from a reward run directory, its `final/`, or a model.

    A LoRA reward model is its base (a model, or an SFT run whose adapter is merged) plus the adapter, which holds
    the trained `score` head; with `merge` the LoRA weights are folded in for faster scoring.
    """
    from peft import PeftModel

    source = resolve(run_dir_or_model)
    if source.adapter:
        base = read_adapter_config(source.adapter)["base_model_name_or_path"]
        model = PeftModel.from_pretrained(load_sequence_classifier(base, dtype), source.adapter)
        if merge and model.peft_config["default"].peft_type.value == "LORA":
            model = model.merge_and_unload()
    else:
        model = load_sequence_classifier(source.base, dtype)
    tokenizer = load_tokenizer(source)
    model.eval()
    disable_dropout(model)
    return model, tokenizer


def classifier_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A sequence classifier's scalar [B] for a left-padded batch, with positions counted from each row's first
    real token: without them an absolute-position model (GPT-2) scores a text differently in a padded batch."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask)).logits[:, 0]


@torch.no_grad()
def score_ids(model, tokenizer, ids: list[list[int]], batch_size: int = 16) -> torch.Tensor:
    """One float32 reward per token sequence (read at its last token), computed in padded batches."""
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(ids), batch_size):
        batch = tokenizer.pad({"input_ids": ids[start:start + batch_size]}, return_tensors="pt").to(device)
        scores.append(classifier_scores(model, batch["input_ids"], batch["attention_mask"]).float().cpu())
    return torch.cat(scores) if scores else torch.empty(0)


def score_texts(model, tokenizer, prompts: list, responses: list[str], batch_size: int = 16,
                max_length: int | None = None) -> torch.Tensor:
    """Rewards of responses to prompts (string or messages), rendered as in training (reward.pairs.render)."""
    ids = [pairs_lib.encode(tokenizer, p, r)[:max_length] for p, r in zip(prompts, responses, strict=True)]
    return score_ids(model, tokenizer, ids, batch_size)


def _bucket(low: float, high: float) -> str:
    if low == -math.inf:
        return f"lt_{high:g}"
    return f"ge_{low:g}" if high == math.inf else f"{low:g}_{high:g}"


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, margins: torch.Tensor | None = None,
                 buckets: list[float] = (), ties: torch.Tensor | None = None) -> dict[str, float]:
    """Pairwise accuracy (chosen scored strictly higher), mean reward margin, pair count, and accuracy per margin
    bucket (edges `buckets`; only buckets holding pairs) when the pairs have margins.

    Tie pairs (`ties` true) have no order to get right: accuracy and margins are over the other pairs, and the ties
    get `tie_pairs` and `tie_gap`, the mean |score difference| (0 when the model agrees there is no preference)."""
    diff = (chosen - rejected).double()
    ties = torch.zeros_like(diff, dtype=torch.bool) if ties is None else ties.bool()
    decided = diff[~ties]
    out = {"accuracy": (decided > 0).double().mean().item() if len(decided) else math.nan,
           "margin": decided.mean().item() if len(decided) else math.nan, "pairs": len(decided)}
    if ties.any():
        out.update(tie_pairs=int(ties.sum()), tie_gap=diff[ties].abs().mean().item())
    if margins is not None:
        edges = [-math.inf, *buckets, math.inf]
        for low, high in zip(edges, edges[1:]):
            inside = (margins >= low) & (margins < high) & ~ties
            if inside.any():
                out[f"accuracy_margin_{_bucket(low, high)}"] = (diff[inside] > 0).double().mean().item()
    return out


def _text_inputs(rows: list[datafiles.Row]) -> list[tuple]:
    """(prompt, response) per {"prompt", "response"} row, or (None, text) per {"text"} row, checked."""
    if "text" in rows[0].data:
        texts = [(row, pairs_lib.required(row, "text")) for row in rows]
        for row, text in texts:
            if not isinstance(text, str) or not text.strip():
                raise DataError(row.where, "must be a non-empty string", field="text")
        return [(None, text) for _, text in texts]
    return [(check_prompt(pairs_lib.required(row, "prompt"), row.where, "prompt"),
             check_response(pairs_lib.required(row, "response"), row.where, "response")) for row in rows]


def _score_texts_file(model, tokenizer, rows: list[datafiles.Row], inputs: list[tuple], batch_size: int,
                      max_length: int | None):
    """(records with a `score`, summary) for {"prompt", "response"} or {"text"} rows and their `_text_inputs`."""
    ids = [(tokenizer(r, add_special_tokens=False)["input_ids"] if p is None else pairs_lib.encode(tokenizer, p, r))
           [:max_length] for p, r in inputs]
    scores = score_ids(model, tokenizer, ids, batch_size)
    records = [{**row.data, "score": s} for row, s in zip(rows, scores.tolist())]
    return records, {"texts": len(rows), "mean": scores.mean().item(), "std": scores.std(correction=0).item()}


def _score_pairs_file(model, tokenizer, pairs: list[pairs_lib.PreferencePair], batch_size: int, max_length: int | None):
    """(records with both scores, pair metrics) for preference pairs."""
    prompts = [p.prompt for p in pairs]
    chosen = score_texts(model, tokenizer, prompts, [p.chosen for p in pairs], batch_size, max_length)
    rejected = score_texts(model, tokenizer, prompts, [p.rejected for p in pairs], batch_size, max_length)
    margins = None if any(p.margin is None for p in pairs) else torch.tensor([p.margin for p in pairs])
    records = [{"where": p.where, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "margin": p.margin,
                "tie": p.tie, "chosen_score": c, "rejected_score": r}
               for p, c, r in zip(pairs, chosen.tolist(), rejected.tolist())]
    ties = torch.tensor([p.tie for p in pairs])
    return records, pair_metrics(chosen, rejected, margins, MARGIN_BUCKETS, ties)


@dataclass
class ScoreConfig:
    """`rlhf score` keys."""

    model: str | None = key(None, "reward run directory, its final/ folder, or a model (required)")
    input: str | None = key(None, "JSONL/JSON/CSV/Parquet of texts or preference pairs (required)")
    out: str | None = key(None, "JSONL to write the scored records to (default: print them)")
    batch_size: int = key(16, "sequences scored at once")
    max_length: int | None = key(None, "truncate token sequences to this length (null: no limit)")

    def __post_init__(self):
        for name in ("model", "input"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is not set")
        for name in ("batch_size", "max_length"):
            value = getattr(self, name)
            if value is None and name == "max_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")


def score_command(config: ScoreConfig) -> int:
    rows = datafiles.read_rows(config.input)
    if not rows:
        raise DataError(config.input, "no rows")
    if {"response", "text"} & rows[0].data.keys():
        inputs = _text_inputs(rows)  # bad rows fail before the model is loaded
        model, tokenizer = load_reward_model(config.model)
        records, summary = _score_texts_file(model, tokenizer, rows, inputs, config.batch_size, config.max_length)
    else:
        pairs, _ = pairs_lib.parse_rows(rows)
        model, tokenizer = load_reward_model(config.model)
        records, summary = _score_pairs_file(model, tokenizer, pairs, config.batch_size, config.max_length)
    if config.out:
        datafiles.write_jsonl(config.out, records)
        print(f"wrote {len(records)} scored records to {config.out}")
    else:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    print(json.dumps(summary), file=sys.stderr if not config.out else sys.stdout)
    return 0


def main(argv: list[str]) -> int:
    return command_main(argv, ScoreConfig, __doc__, score_command)
