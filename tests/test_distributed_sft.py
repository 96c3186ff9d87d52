"""SFT as two processes (gloo on CPU): DDP, ZeRO-2, and ZeRO-3 on two "nodes".

One writer, one data order, batch-size invariance, resume after a crash, and a ZeRO-3 adapter that
plain peft loads. Each launch runs `accelerate launch --config_file configs/accelerate/*.yaml -m rlhf sft`.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny
from dist_helpers import environment, finish, free_port, launch_command, read_probe, run, start, train_losses
from rlhf import runs, sft
from rlhf.config import load_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TRAIN_ROWS = 48  # of 60 demonstrations; 6 go to validation and 6 to test
EPOCH_STEPS = TRAIN_ROWS // 4  # 4 rows per optimizer step in every layout below
STEPS = 2 * EPOCH_STEPS
CRASH_AFTER = 8  # inside the first epoch: the resumed run must skip the batches already seen
# Same rows, same order, fp32: only the order of floating-point reductions differs between layouts.
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny(tmp_path_factory, "llama", hidden=32, layers=1)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """60 demonstrations that all differ, so that each one can be recognised in a batch."""
    path = tmp_path_factory.mktemp("demos") / "demos.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Count from {i} to {i + i % 5 + 1}."},
                          {"role": "assistant", "content": " ".join(str(n) for n in range(i, i + i % 5 + 2))}]}
            for i in range(60)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sft_args(model, demos, run_dir, batch=2, accumulation=1, *extra):
    return ["sft", "--model_name_or_path", str(model), "--dataset_path", str(demos), "--output_dir", str(run_dir),
            "--num_train_epochs", "2", "--per_device_train_batch_size", str(batch),
            "--gradient_accumulation_steps", str(accumulation), "--logging_steps", "1", "--eval_steps", "8",
            "--save_steps", "8", "--learning_rate", "0.01", *extra]


def crash_then_resume(config, args, probe_dirs):
    """Launch with a crash right after checkpoint-CRASH_AFTER, then launch again; returns the outputs."""
    for d in probe_dirs:
        d.mkdir()
    crashed = run(launch_command(config, args, probe=True),
                  environment(PROBE_DIR=str(probe_dirs[0]), PROBE_CRASH_AFTER=str(CRASH_AFTER)), ok=False)
    assert f"simulated crash after checkpoint-{CRASH_AFTER}" in crashed, crashed[-4000:]
    resumed = run(launch_command(config, args, probe=True), environment(PROBE_DIR=str(probe_dirs[1])))
    return crashed, resumed


@pytest.fixture(scope="module")
def single_process(model, demos, tmp_path_factory):
    """Uninterrupted 1-process runs (in this process): batch 4, and batch 2 with 2 accumulation steps."""
    root = tmp_path_factory.mktemp("single")
    layouts = {"batch4": (4, 1), "batch2x2": (2, 2)}
    for name, (batch, accumulation) in layouts.items():
        sft.run(load_config(sft.SFTStageConfig, sft_args(model, demos, root / name, batch, accumulation)[1:]))
    return {name: root / name for name in layouts}


@pytest.fixture(scope="module")
def ddp(model, demos, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    _, resumed = crash_then_resume("cpu_ddp_2proc", sft_args(model, demos, root / "run"),
                                   [root / "probe-crashed", root / "probe-resumed"])
    return {"run": root / "run", "resumed_output": resumed,
            "probes": [read_probe(root / "probe-crashed"), read_probe(root / "probe-resumed")]}


def test_ddp_two_processes_one_writer(ddp):
    run_dir = ddp["run"]
    assert runs.read_summary(run_dir)["world_size"] == 2
    assert sorted(train_losses(run_dir)) == list(range(1, STEPS + 1))  # each step logged once, by one process
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(runs.FINAL)] == [runs.FINAL]
    assert (run_dir / runs.FINAL / "adapter_model.safetensors").is_file()
    assert all((c / runs.COMPLETE).is_file() for c in (run_dir / runs.CHECKPOINTS).glob("checkpoint-*"))
    assert all(set(probe) == {0, 1} for probe in ddp["probes"])


def test_ddp_each_row_once_per_epoch_and_ranks_agree(ddp):
    """Across both launches and both ranks: every training row once per epoch, each rank its own rows."""
    batches = {0: [], 1: []}
    for probe in ddp["probes"]:
        for rank, entries in probe.items():
            batches[rank] += [e for e in entries if "step" in e]
    assert [e["step"] for e in batches[0]] == list(range(1, STEPS + 1)) == [e["step"] for e in batches[1]]
    for first, second in zip(batches[0], batches[1]):
        assert not set(first["rows"]) & set(second["rows"])
    epochs = []
    for epoch in range(2):
        rows = [row for rank in (0, 1) for e in batches[rank][epoch * EPOCH_STEPS:(epoch + 1) * EPOCH_STEPS]
                for row in e["rows"]]
        assert len(rows) == len(set(rows)) == TRAIN_ROWS
        epochs.append([row for e in batches[0][epoch * EPOCH_STEPS:(epoch + 1) * EPOCH_STEPS] for row in e["rows"]])
    assert set(epochs[0]) != set(epochs[1])  # reshuffled between epochs
    for probe in ddp["probes"]:  # same initial LoRA weights (same seed) and the same weights at the end
        for moment in ("start", "end"):
            hashes = {rank: [e[moment] for e in entries if moment in e] for rank, entries in probe.items()}
            assert hashes[0] == hashes[1]
    assert [e for e in ddp["probes"][1][0] if "end" in e]


def test_ddp_resume_ends_like_uninterrupted(ddp, single_process):
    assert f"resuming from {ddp['run'] / runs.CHECKPOINTS / f'checkpoint-{CRASH_AFTER}'}" in ddp["resumed_output"]
    assert max(e["step"] for e in ddp["probes"][0][0] if "step" in e) == CRASH_AFTER
    uninterrupted = runs.read_summary(single_process["batch4"])["global_step"]
    assert runs.read_summary(ddp["run"])["global_step"] == uninterrupted == STEPS


@pytest.mark.parametrize("layout", ["batch4", "batch2x2"])
def test_loss_invariant_to_processes_and_accumulation(ddp, single_process, layout):
    """2 processes x batch 2 == 1 process x batch 4 == 1 process x batch 2 x 2 accumulation steps."""
    reference = train_losses(single_process[layout])
    distributed = train_losses(ddp["run"])
    assert sorted(reference) == sorted(distributed) == list(range(1, STEPS + 1))
    assert reference[STEPS] < reference[1]  # it trained
    for step, loss in reference.items():
        assert distributed[step] == pytest.approx(loss, rel=LOSS_RTOL), step


def test_zero2_crash_resume(model, demos, single_process, tmp_path):
    run_dir = tmp_path / "run"
    crash_then_resume("cpu_zero2_2proc", sft_args(model, demos, run_dir), [tmp_path / "p1", tmp_path / "p2"])
    summary = runs.read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == STEPS
    assert (run_dir / runs.CHECKPOINTS / f"checkpoint-{CRASH_AFTER}" / f"global_step{CRASH_AFTER}").is_dir()
    reference, losses = train_losses(single_process["batch4"]), train_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in reference.items():
        assert losses[step] == pytest.approx(loss, rel=LOSS_RTOL), step


def test_zero3_two_nodes_adapter_loads_with_plain_peft(model, demos, tmp_path):
    """configs/accelerate/two_nodes.yaml (ZeRO-3) as two launchers with one process each, meeting at 127.0.0.1:
    one run directory, one W&B run, and a gathered adapter that plain peft loads."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir, port = tmp_path / "run", str(free_port())
    args = sft_args(model, demos, run_dir, 2, 1, "--max_steps", "4", "--report_to", "wandb")
    launchers = [start(launch_command("two_nodes", args, launcher_args=(
        "--num_processes", "2", "--mixed_precision", "no", "--machine_rank", str(rank),
        "--main_process_ip", "127.0.0.1", "--main_process_port", port)), environment()) for rank in (0, 1)]
    for launcher in launchers:
        code, output = finish(launcher, timeout=300)
        assert code == 0, output[-4000:]
    summary = runs.read_summary(run_dir)
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    losses = train_losses(run_dir)  # each the mean over both processes' rows; the summary averages all steps
    assert summary["train_loss"] == pytest.approx(sum(losses.values()) / len(losses), rel=LOSS_RTOL)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1

    saved = load_file(run_dir / runs.FINAL / "adapter_model.safetensors")
    assert saved and all(t.numel() > 0 for t in saved.values())
    assert any("lora_B" in name and t.abs().sum() > 0 for name, t in saved.items())  # trained (lora_B starts at 0)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), run_dir / runs.FINAL)
    loaded = {n: p for n, p in tuned.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name.replace(".weight", ".default.weight")], tensor), name
