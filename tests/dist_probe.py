"""`accelerate launch tests/dist_probe.py STAGE ...`: run `rlhf STAGE` and record what each process did.

Every process appends to `$PROBE_DIR/rank-R.jsonl`: one line per micro-batch (optimizer step and a
fingerprint of each row) and the hash of its trainable weights when training starts and ends.
With `PROBE_CRASH_AFTER=N` every process exits with an error once checkpoint-N is complete (a crash
right after a save), so that a second launch has to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from rlhf.cli import main


def record(**entry) -> None:
    rank = int(os.environ.get("RANK", "0"))
    with (Path(os.environ["PROBE_DIR"]) / f"rank-{rank}.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def weights_hash(model) -> str:
    trainable = [p.detach().reshape(-1) for _, p in sorted(model.named_parameters()) if p.requires_grad]
    return hashlib.sha256(torch.cat(trainable).double().numpy().tobytes()).hexdigest()


def row_fingerprints(input_ids: torch.Tensor, pad_id: int) -> list[str]:
    """One short hash per row of token ids, padding removed."""
    rows = [str([t for t in row.tolist() if t != pad_id]) for row in input_ids]
    return [hashlib.sha256(row.encode()).hexdigest()[:16] for row in rows]


class CrashAfterSave(TrainerCallback):
    """Runs after the stage's own callbacks, so checkpoint-N already carries its COMPLETE marker."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            args.distributed_state.wait_for_everyone()
            raise SystemExit(f"probe: simulated crash after checkpoint-{self.step}")


def patch_trainer() -> None:
    training_step, train = Trainer.training_step, Trainer.train

    def recording_step(self, model, inputs, *args, **kwargs):
        pad_id = self.processing_class.pad_token_id
        record(step=self.state.global_step + 1, rows=row_fingerprints(inputs["input_ids"], pad_id))
        return training_step(self, model, inputs, *args, **kwargs)

    def recording_train(self, *args, **kwargs):
        record(start=weights_hash(self.model))
        if os.environ.get("PROBE_CRASH_AFTER"):
            self.add_callback(CrashAfterSave(int(os.environ["PROBE_CRASH_AFTER"])))
        result = train(self, *args, **kwargs)
        record(end=weights_hash(self.model))
        return result

    Trainer.training_step, Trainer.train = recording_step, recording_train


if __name__ == "__main__":
    patch_trainer()
    raise SystemExit(main(sys.argv[1:]))
