"""Benchmark the SFT, reward and PPO stages against TRL used directly, on one offline model.

    python scripts/bench.py [--only sft,reward,ppo] [--reps 3] [--steps 16] [--skip-anchor] [--tiny] [--out bench.json]
                            [--model PATH_OR_NAME] [--estimator gae|grpo|rloo] [--num-samples 4] [--kl-coef 0.05]
                            [--response-length 64] [--dtype float32|bfloat16]

Anchors: SFT and reward = TRL's SFTTrainer / RewardTrainer (the TRL this project runs on) with the same model,
data, batch, max_length, LoRA and steps; PPO (`--estimator gae`) = TRL 1.12's `trl.experimental.ppo.PPOTrainer`
(the last release with PPO), which this script installs into its own virtual environment (.bench/trl112-venv) and
runs there through scripts/bench_trl_ppo.py; `--estimator grpo|rloo` = TRL's GRPOTrainer / RLOOTrainer from the TRL
installed here, through scripts/bench_trl_grpo_rloo.py, against our PPO stage with that `advantage_estimator`.
The model is a random bench model built here, or `--model` (a folder, or a name rlhf.convert resolves offline).
Every measured run is a fresh subprocess: its peak resident memory is that of its whole process tree, sampled
every 20 ms. Throughput counts the training loop only (tokens without padding for SFT/reward; completions per
second of rollout + update time for PPO, the first step left out as warm-up). Generation is also compared with
the time that reading every weight once per generated token takes at the memory bandwidth measured in the run,
and so are a decode step's linear products alone (the ceiling of that fraction on this machine's kernels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project's packages, from this checkout
ANCHOR_VENV = REPO / ".bench" / "trl112-venv"
ANCHOR_SCRIPT = REPO / "scripts" / "bench_trl_ppo.py"
GROUP_ANCHOR_SCRIPT = REPO / "scripts" / "bench_trl_grpo_rloo.py"  # grpo, rloo: runs in this environment
ESTIMATORS = ("gae", "grpo", "rloo")
ANCHOR_TRL = "1.12.0"
SHARED_LIBRARIES = ("transformers", "peft", "accelerate", "datasets")  # same versions in the anchor's venv
REPORTED_LIBRARIES = ("torch", "trl", *SHARED_LIBRARIES)
STAGES = ("sft", "reward", "ppo")
SAMPLE_INTERVAL_S = 0.02
WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
              "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONWARNINGS": "ignore"}


@dataclass
class Settings:
    """What both sides of every comparison share."""

    hidden: int = 512
    layers: int = 6
    heads: int = 8
    steps: int = 16  # optimizer steps (SFT, reward) or PPO steps (rollout + update)
    batch_size: int = 8  # rows (SFT), pairs (reward), completions per rollout (PPO; grpo, rloo: num_samples a prompt)
    max_length: int = 256
    response_length: int = 64
    ppo_epochs: int = 1
    mini_batches: int = 1
    lora_r: int = 8
    lora_alpha: int = 16
    learning_rate: float = 1e-4
    kl_coef: float = 0.05  # PPO's kl_coef, TRL's beta (0: no KL term)
    seed: int = 0
    value_model: str | None = None  # ours only, gae only (None: the stage's default); the anchor trains a full one
    model: str | None = None  # a real model (folder or known name) instead of the bench model hidden/layers/heads
    estimator: str = "gae"  # PPO's advantage_estimator: gae (value model) | grpo | rloo (critic-free)
    num_samples: int = 4  # grpo, rloo: completions per prompt (num_generations); batch_size counts completions
    dtype: str = "float32"  # PPO: the weights of every model on both sides (policy base, value, reward)


# ---- inputs: model, data, the reward model PPO uses ------------------------------------------------


def prepare_model(workdir: Path, s: Settings) -> Path:
    """`s.model` as a local folder (converted once if it is a GGUF file or a known name), else the bench model (a
    random Llama-like model with the demo task's tokenizer), built once per size."""
    from rlhf import demo_task
    from rlhf.convert import local_model
    from rlhf.tiny import make_tiny_model

    if s.model:
        return Path(local_model(s.model)).resolve()
    folder = workdir / f"model-h{s.hidden}-l{s.layers}-a{s.heads}"
    if not (folder / "config.json").is_file():
        make_tiny_model(folder, "llama", s.hidden, s.layers, s.heads, seed=0,
                        extra_text=demo_task.demo_files()["corpus.txt"])
    return folder


def preference_pairs(seed: int = 0) -> list[dict]:
    """Demo-task pairs: two acceptable answers to a prompt whose gold scores differ, the better one chosen."""
    from rlhf import demo_task

    rng = random.Random(seed)
    out = []
    for row in demo_task.demo_files()["label_prompts.jsonl"]:
        request = demo_task.parse_prompt(row["prompt"])
        a, b = demo_task.demonstration(request, rng), demo_task.demonstration(request, rng)
        while demo_task.judge(row["prompt"], a, b) == "tie":
            b = demo_task.demonstration(request, rng)
        chosen, rejected = (a, b) if demo_task.judge(row["prompt"], a, b) == "a" else (b, a)
        out.append({"prompt": [{"role": "user", "content": row["prompt"]}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}]})
    return out


def prepare_data(workdir: Path) -> dict[str, Path]:
    """sft.jsonl (chats), prefs.jsonl (conversational pairs), prompts.jsonl (PPO prompts), all from the demo task."""
    from rlhf import demo_task
    from rlhf.datafiles import write_jsonl

    files = demo_task.demo_files()
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = {"sft": data / "sft.jsonl", "prefs": data / "prefs.jsonl", "prompts": data / "prompts.jsonl"}
    write_jsonl(paths["sft"], files["sft.jsonl"])
    write_jsonl(paths["prefs"], preference_pairs())
    write_jsonl(paths["prompts"], files["ppo_prompts.jsonl"])
    return paths


def prepare_ppo_reward(workdir: Path, model: Path, prefs: Path, s: Settings) -> Path:
    """A reward run directory on the bench model (20 steps, not measured): the reward both PPO sides use."""
    from reward.train import RewardStageConfig, run

    run_dir = workdir / f"ppo-reward-{model.name}"
    run(RewardStageConfig(model_name_or_path=str(model), dataset_path=str(prefs), output_dir=str(run_dir),
                          lora_r=s.lora_r, lora_alpha=s.lora_alpha, val_ratio=0.0, test_ratio=0.0, save_strategy="no",
                          logging_steps=10, max_steps=20, **common_train_args(s)))
    return run_dir


def merged_reward(run_dir: Path) -> Path:
    """The reward run's model as one standalone classifier folder, for the anchor (ours shares the policy's base)."""
    from reward.score import load_reward_model

    merged = run_dir.with_name(run_dir.name + "-merged")
    if not (merged / "config.json").is_file():
        classifier, tokenizer = load_reward_model(str(run_dir))
        classifier.save_pretrained(merged)
        tokenizer.save_pretrained(merged)
    return merged


# ---- the anchor's virtual environment --------------------------------------------------------------


def anchor_python() -> Path:
    """Python of the PPO anchor's venv, created on first use: torch first (as the main env was set up), then TRL
    1.12 beside this environment's transformers/peft/accelerate/datasets versions."""
    python = ANCHOR_VENV / "bin" / "python"
    pins = [f"trl=={ANCHOR_TRL}", *(f"{name}=={version(name)}" for name in SHARED_LIBRARIES), "psutil"]
    torch_pin = f"torch=={version('torch').split('+')[0]}"
    marker = ANCHOR_VENV / "pins.json"
    if python.is_file() and marker.is_file() and json.loads(marker.read_text()) == [torch_pin, *pins]:
        return python
    print(f"installing the PPO anchor into {ANCHOR_VENV} ({torch_pin}, {', '.join(pins)})", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(ANCHOR_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, torch_pin], check=True)  # alone first, so that nothing below picks another torch build
    subprocess.run([*pip, *pins], check=True)
    marker.write_text(json.dumps([torch_pin, *pins]))
    return python


# ---- measuring a subprocess ------------------------------------------------------------------------


class PeakRSS(threading.Thread):
    """Largest sum of resident memory over a process and all its descendants, sampled every 20 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self):
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            total = 0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self.done.wait(SAMPLE_INTERVAL_S)


ALLOCATORS = {"glibc": None, "jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def allocator_env(name: str) -> dict[str, str]:
    """LD_PRELOAD for the memory allocator both sides run with. PyTorch's CPU tensors come from malloc; glibc's
    keeps freed activation memory in its heap, which the others return (PyTorch's own CPU launcher,
    `torch.backends.xeon.run_cpu`, preloads them for the same reason)."""
    library = ALLOCATORS[name]
    if library is None:
        return {}
    for folder in LIBRARY_DIRS:
        if (Path(folder) / library).is_file():
            return {"LD_PRELOAD": str(Path(folder) / library)}
    package = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}[name]
    raise SystemExit(f"--allocator {name}: {library} not found in {', '.join(LIBRARY_DIRS)} "
                     f"(Debian/Ubuntu: apt-get install {package})")


def measure(cmd: list[str], log: Path, threads: int | None, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd` (which writes its result JSON to the path after `--result`), with peak RSS and wall time.
    `threads`: torch's intra-op threads in the subprocess (None: torch's default, one per core)."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        env = {**os.environ, **WORKER_ENV, **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
               **(extra_env or {})}
        process = subprocess.Popen([*cmd, "--result", str(result)], stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = PeakRSS(process.pid)
        sampler.start()
        code = process.wait()
        sampler.done.set()
        sampler.join()
    if code != 0 or not result.is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {code}); last lines of {log}:\n{tail}")
    measured = json.loads(result.read_text())
    measured["peak_rss_mb"] = sampler.peak / 2**20
    measured["wall_s"] = time.perf_counter() - started
    return measured


def matmul_flops(n: int = 1024, windows: int = 5, seconds: float = 0.2) -> float:
    """FLOP/s of repeated fp32 n x n matmuls (2 n^3 FLOPs each) on this machine now: the best of a few short
    windows after a warm-up, so that a moment of load from other processes counts less."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.matmul(a, b)
    best = 0.0
    for _ in range(windows):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            torch.matmul(a, b)
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - started))
    return best


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of copying one fp32 tensor of `megabytes` (far beyond the caches) into another, read + write bytes
    counted (STREAM's copy): the best of a few copies after a warm-up one, as for the matmul figure."""
    import torch

    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = max(best, 2 * source.numel() * source.element_size() / (time.perf_counter() - started))
    return best


def decode_products_seconds(model: Path, rows: int, dtype: str = "float32", repeats: int = 5) -> float:
    """Seconds that one decode step's linear products take alone, back to back, with the weights and kernels our
    decoding uses (`packed_linears`, `rows` rows): every other operation of a step adds to this, so the
    weight-streaming bound divided by it is the highest fraction a decode loop built on these kernels can reach.
    The best of a few passes after a warm-up one, on the model's architecture with fresh weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf.packed_weights import packed_linears

    built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), dtype=getattr(torch, dtype))
    layers = [m for m in built.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=getattr(torch, dtype)) for m in layers}
    def one_pass() -> float:
        started = time.perf_counter()
        for layer in layers:
            layer(inputs[layer.in_features])
        return time.perf_counter() - started

    with packed_linears(built, rows):
        one_pass()  # packs the weights
        return min(one_pass() for _ in range(repeats))


# ---- workers (run as `bench.py --worker KIND`, one per measured run) -------------------------------


def common_train_args(s: Settings) -> dict[str, Any]:
    """Trainer arguments both SFT sides and both reward sides get."""
    return {"per_device_train_batch_size": s.batch_size, "learning_rate": s.learning_rate,
            "lr_scheduler_type": "constant", "warmup_steps": 0, "max_length": s.max_length, "bf16": False,
            "gradient_checkpointing": False, "report_to": "none", "seed": s.seed, "disable_tqdm": True}


def measured_train_args(s: Settings) -> dict[str, Any]:
    return dict(common_train_args(s), max_steps=s.steps, logging_steps=s.steps, save_strategy="no",
                eval_strategy="no", include_num_input_tokens_seen="non_padding")


def lora(s: Settings, task_type: str):
    from peft import LoraConfig

    return LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type=task_type, modules_to_save=["score"] if task_type == "SEQ_CLS" else None)


def throughput_callback():
    """A TrainerCallback timing the training loop and reading the trainer's count of non-padding tokens."""
    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.started
            self.tokens = state.num_input_tokens_seen

        def result(self) -> dict[str, float]:
            return {"tokens": self.tokens, "train_s": self.seconds, "tokens_per_s": self.tokens / self.seconds}

    return Throughput()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sft_ours(s: Settings, model: Path, data: dict[str, Path], out: Path) -> dict:
    from rlhf.sft import SFTStageConfig, run

    timer = throughput_callback()
    run(SFTStageConfig(model_name_or_path=str(model), dataset_path=str(data["sft"]), output_dir=str(out),
                       lora_r=s.lora_r, lora_alpha=s.lora_alpha, val_ratio=0.0, test_ratio=0.0,
                       **measured_train_args(s)), callbacks=(timer,))
    return timer.result()


def sft_anchor(s: Settings, model: Path, data: dict[str, Path], out: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    timer = throughput_callback()
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="right")
    set_seed(s.seed)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model),
                         args=SFTConfig(output_dir=str(out), assistant_only_loss=True, **measured_train_args(s)),
                         train_dataset=Dataset.from_list(read_jsonl(data["sft"])), processing_class=tokenizer,
                         peft_config=lora(s, "CAUSAL_LM"), callbacks=[timer])
    trainer.train()
    trainer.save_model(str(out / "final"))
    return timer.result()


def reward_ours(s: Settings, model: Path, data: dict[str, Path], out: Path) -> dict:
    from reward.train import RewardStageConfig, run

    timer = throughput_callback()
    run(RewardStageConfig(model_name_or_path=str(model), dataset_path=str(data["prefs"]), output_dir=str(out),
                          lora_r=s.lora_r, lora_alpha=s.lora_alpha, val_ratio=0.0, test_ratio=0.0,
                          **measured_train_args(s)), callbacks=(timer,))
    return timer.result()


def reward_anchor(s: Settings, model: Path, data: dict[str, Path], out: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    timer = throughput_callback()
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="right")
    classifier = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    set_seed(s.seed)
    trainer = RewardTrainer(model=classifier, args=RewardConfig(output_dir=str(out), **measured_train_args(s)),
                            train_dataset=Dataset.from_list(read_jsonl(data["prefs"])), processing_class=tokenizer,
                            peft_config=lora(s, "SEQ_CLS"), callbacks=[timer])
    trainer.train()
    trainer.save_model(str(out / "final"))
    return timer.result()


def ppo_ours(s: Settings, model: Path, data: dict[str, Path], out: Path, reward_run: Path) -> dict:
    import yaml

    from rlhf import runs
    from rlhf.ppo.stage_config import PPOStageConfig
    from rlhf.ppo.train import run

    run(PPOStageConfig(policy_path=str(model), reward_model_path=str(reward_run), dataset_path=str(data["prompts"]),
                  output_dir=str(out), max_steps=s.steps, seed=s.seed, batch_size=s.batch_size,
                  mini_batch_size=s.batch_size // s.mini_batches, ppo_epochs=s.ppo_epochs,
                  learning_rate=s.learning_rate, max_new_tokens=s.response_length, kl_coef=s.kl_coef,
                  lora_r=s.lora_r, lora_alpha=s.lora_alpha, save_steps=s.steps, log_completions_steps=s.steps,
                  dtype=s.dtype, **estimator_keys(s)))
    steps = runs.MetricsFile(out).read()
    ran = yaml.safe_load((out / runs.CONFIG).read_text())  # what ran, `value_model: auto` resolved
    return {**ppo_result([{name: row[f"time/{name}_s"] for name in ("generation", "scoring", "training")}
                          for row in steps], s.batch_size), "value_model": ran["value_model"]}


def estimator_keys(s: Settings) -> dict[str, Any]:
    """Our PPO keys for `s.estimator`, doing what its anchor does: GAE with our value model; GRPO and RLOO on raw
    reward-model scores in groups of `num_samples`, with the KL where TRL puts it (GRPO: a k3 term in the loss; RLOO:
    the k1 log-ratio summed into the reward, our default estimator)."""
    if s.estimator == "gae":
        return {"value_model": s.value_model} if s.value_model else {}
    return {"advantage_estimator": s.estimator, "num_samples_per_prompt": s.num_samples,
            "kl_in_loss": s.estimator == "grpo", "normalize_scores": False}


def ppo_result(step_times: list[dict[str, float]], batch_size: int) -> dict[str, float]:
    """Completions/s and seconds per step of each phase, over the steps after the first (warm-up) one."""
    measured = step_times[1:] if len(step_times) > 1 else step_times
    phases = {f"{name}_s": statistics.fmean(step[name] for step in measured) for name in measured[0]}
    total = sum(sum(step.values()) for step in measured)
    return {"completions_per_s": batch_size * len(measured) / total, "measured_steps": len(measured), **phases}


WORKERS = {"sft-ours": sft_ours, "sft-anchor": sft_anchor, "reward-ours": reward_ours,
           "reward-anchor": reward_anchor, "ppo-ours": ppo_ours}


def worker_main(args: argparse.Namespace) -> int:
    """One measured run in this process; writes its result to --result."""
    spec = json.loads(args.spec)
    s = Settings(**spec["settings"])
    data = {name: Path(path) for name, path in spec["data"].items()}
    extra = (Path(spec["reward_run"]),) if args.worker == "ppo-ours" else ()
    result = WORKERS[args.worker](s, Path(spec["model"]), data, Path(spec["out"]), *extra)
    Path(args.result).write_text(json.dumps(result))
    return 0


# ---- the benchmark ---------------------------------------------------------------------------------


def run_side(stage: str, side: str, s: Settings, inputs: dict[str, Any], workdir: Path, rep: int,
             threads: int | None, extra_env: dict[str, str]) -> dict:
    """One measured run of `stage` on `side` (ours | anchor) in a fresh subprocess."""
    out = workdir / "runs" / f"{stage}-{side}-{rep}"
    shutil.rmtree(out, ignore_errors=True)
    spec = {"settings": dataclasses.asdict(s), "model": str(inputs["model"]), "out": str(out),
            "data": {k: str(v) for k, v in inputs["data"].items()}, "reward_run": str(inputs.get("reward_run", ""))}
    if stage == "ppo" and side == "anchor":
        python, script = ((inputs["anchor_python"], ANCHOR_SCRIPT) if s.estimator == "gae"
                          else (sys.executable, GROUP_ANCHOR_SCRIPT))
        cmd = [str(python), str(script), "--spec", json.dumps({**spec, "reward_model": str(inputs["reward_merged"])})]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", f"{stage}-{side}", "--spec", json.dumps(spec)]
    return measure(cmd, workdir / "logs" / f"{stage}-{side}-{rep}.log", threads, extra_env)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def add_streaming(runs: list[dict], bandwidths: list[float], weight_bytes: int, tokens: int) -> None:
    """Per PPO run: generation ms per generated token (one decode step of the whole rollout batch, `tokens` of them
    per step) and the weight-streaming bound's share of it: the time to read `weight_bytes` once at the bandwidth
    measured in the same repetition, ÷ that measured time per token (1 = at the bound)."""
    for r, bandwidth in zip(runs, bandwidths):
        per_token_s = r["generation_s"] / tokens
        r["generation_token_ms"] = 1e3 * per_token_s
        r["streaming_fraction"] = weight_bytes / bandwidth / per_token_s


def summarise(runs: list[dict], flops: list[float], params: int) -> dict[str, dict[str, float]]:
    """Median and range of every numeric field over the repetitions (plus MFU for token throughput)."""
    if "tokens_per_s" in runs[0]:
        for r, f in zip(runs, flops):
            r["mfu"] = 6 * params * r["tokens_per_s"] / f
    return {name: spread([r[name] for r in runs]) for name in runs[0] if isinstance(runs[0][name], (int, float))}


RATIO_FIELDS = {"sft": ("tokens_per_s", "peak_rss_mb", "wall_s"), "reward": ("tokens_per_s", "peak_rss_mb", "wall_s"),
                "ppo": ("completions_per_s", "peak_rss_mb", "generation_s", "scoring_s", "training_s", "wall_s")}


def ratios(stage: str, ours: dict, anchor: dict | None) -> dict[str, float | None]:
    """ours ÷ anchor of the medians (None when the anchor was skipped)."""
    return {name: (ours[name]["median"] / anchor[name]["median"] if anchor else None) for name in RATIO_FIELDS[stage]}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": {name: version(name) for name in REPORTED_LIBRARIES}}


def anchor_versions(python: Path) -> dict[str, str]:
    code = ("import json, importlib.metadata as m; "
            f"print(json.dumps({{n: m.version(n) for n in {REPORTED_LIBRARIES!r}}}))")
    return json.loads(subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout)


def model_size(model: Path, dtype: str = "float32") -> tuple[int, int]:
    """(parameters, bytes of the weights) of the model's architecture in `dtype`, the one every side runs in."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), dtype=getattr(torch, dtype))
    return built.num_parameters(), sum(p.numel() * p.element_size() for p in built.parameters())


def benchmark(stages: list[str], s: Settings, reps: int, skip_anchor: bool, workdir: Path,
              threads: int | None = None, allocator: str = "glibc") -> dict[str, Any]:
    import torch

    extra_env = allocator_env(allocator)

    if threads:
        torch.set_num_threads(threads)  # for the matmul measurement, as in the workers
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    model = prepare_model(workdir, s)
    inputs: dict[str, Any] = {"model": model, "data": prepare_data(workdir)}
    report: dict[str, Any] = {"settings": dataclasses.asdict(s), "reps": reps, "machine": machine(),
                              "threads": torch.get_num_threads(), "allocator": allocator}
    if "ppo" in stages:
        inputs["reward_run"] = prepare_ppo_reward(workdir, model, inputs["data"]["prefs"], s)
        if not skip_anchor:
            inputs["reward_merged"] = merged_reward(inputs["reward_run"])
            if s.estimator == "gae":
                inputs["anchor_python"] = anchor_python()
            report["machine"]["anchor_versions"] = (anchor_versions(inputs["anchor_python"]) if s.estimator == "gae"
                                                    else report["machine"]["versions"])
    params, weight_bytes = model_size(model, s.dtype)
    sides = ["ours"] if skip_anchor else ["ours", "anchor"]
    raw: dict[str, dict[str, list[dict]]] = {stage: {side: [] for side in sides} for stage in stages}
    flops, bandwidths, products = [], [], []
    for rep in range(1, reps + 1):
        flops.append(matmul_flops())
        if "ppo" in stages:
            bandwidths.append(memory_bandwidth())
            products.append(decode_products_seconds(model, s.batch_size, s.dtype))
        for stage in stages:
            for side in (sides if rep % 2 else sides[::-1]):  # who goes first alternates between repetitions
                result = run_side(stage, side, s, inputs, workdir, rep, threads, extra_env)
                raw[stage][side].append(result)
                print(f"rep {rep}/{reps} {stage:<6} {side:<6} " + ", ".join(
                    f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)), file=sys.stderr)
    report.update({"model_parameters": params, "matmul_flops": spread(flops)})
    if "ppo" in stages:
        report.update({"weight_bytes": weight_bytes, "memory_bandwidth": spread(bandwidths),
                       "decode_products_ms": spread([1e3 * t for t in products]),
                       "products_streaming_fraction": spread([weight_bytes / b / t for b, t in zip(bandwidths, products)])})
        for runs in raw["ppo"].values():  # decode steps per rollout: response_length, unless every row stops early
            add_streaming(runs, bandwidths, weight_bytes, s.response_length)
    for stage in stages:
        ours = summarise(raw[stage]["ours"], flops, params)
        anchor = None if skip_anchor else summarise(raw[stage]["anchor"], flops, params)
        report[stage] = {"ours": ours, "anchor": anchor, "ratios": ratios(stage, ours, anchor), "runs": raw[stage]}
    return report


# ---- output ----------------------------------------------------------------------------------------

ROWS = {"sft": [("tokens_per_s", "tokens/s"), ("mfu", "MFU"), ("peak_rss_mb", "peak RSS (MB)"),
                ("wall_s", "process wall (s)")],
        "reward": [("tokens_per_s", "tokens/s"), ("mfu", "MFU"), ("peak_rss_mb", "peak RSS (MB)"),
                   ("wall_s", "process wall (s)")],
        "ppo": [("completions_per_s", "completions/s"), ("peak_rss_mb", "peak RSS (MB)"),
                ("generation_s", "generation s/step"), ("scoring_s", "scoring s/step"),
                ("training_s", "training s/step"), ("generation_token_ms", "generation ms/token"),
                ("streaming_fraction", "weight-streaming bound ÷ generation time"), ("wall_s", "process wall (s)")]}
PERCENT_FIELDS = ("mfu", "streaming_fraction")


def cell(stat: dict[str, float] | None, name: str) -> str:
    if stat is None:
        return "-"
    fmt = (lambda v: f"{100 * v:.2f}%") if name in PERCENT_FIELDS else (lambda v: f"{v:.4g}")
    return f"{fmt(stat['median'])} ({fmt(stat['min'])}-{fmt(stat['max'])})"


def rate(stat: dict[str, float], unit: str) -> str:
    """A measured machine rate in giga-`unit`: median (min-max)."""
    return f"{stat['median'] / 1e9:.1f} G{unit} ({stat['min'] / 1e9:.1f}-{stat['max'] / 1e9:.1f})"


def ppo_description(report: dict[str, Any]) -> str:
    """The PPO estimator and its settings, and the weight-streaming bound's inputs."""
    s = report["settings"]
    ran = report["ppo"]["runs"]["ours"][0]["value_model"]  # `auto` resolved
    estimator = (f"gae, our value model {ran}" if s["estimator"] == "gae"
                 else f"{s['estimator']}, {s['num_samples']} completions per prompt")
    dtype = {"float32": "fp32", "bfloat16": "bf16"}[s.get("dtype", "float32")]
    return (f"; PPO estimator {estimator}, KL coefficient (beta) {s['kl_coef']:g}; {dtype} weights "
            f"{report['weight_bytes'] / 1e6:.1f} MB, memory copy {rate(report['memory_bandwidth'], 'B/s')}; "
            f"a decode step's linear products alone {cell(report['decode_products_ms'], 'decode_products_ms')} ms = "
            f"{cell(report['products_streaming_fraction'], 'streaming_fraction')} of the weight-streaming bound "
            "(the most any decode loop on these kernels reaches)")


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table: median (min-max) over the repetitions, and ours ÷ anchor of the medians."""
    s = report["settings"]
    model = s["model"] or f"Llama-like, hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads"
    lines = [(f"model: {model}, {report['model_parameters'] / 1e6:.1f} M parameters; {report['reps']} repetitions, "
              f"{s['steps']} steps, {report['threads']} torch threads; allocator {report['allocator']}; "
              f"matmul fp32 {rate(report['matmul_flops'], 'FLOP/s')}"
              + (ppo_description(report) if "ppo" in report else "")),
             "", "| stage | metric | ours | anchor | ours ÷ anchor |", "| --- | --- | --- | --- | --- |"]
    for stage in STAGES:
        if stage not in report:
            continue
        part = report[stage]
        for name, label in ROWS[stage]:
            anchor = part["anchor"][name] if part["anchor"] else None
            ratio = part["ratios"].get(name)
            lines.append(f"| {stage} | {label} | {cell(part['ours'].get(name), name)} | {cell(anchor, name)} | "
                         f"{'-' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(STAGES), help="comma-separated stages: sft,reward,ppo")
    parser.add_argument("--skip-anchor", action="store_true", help="measure ours only (no anchor, no venv install)")
    parser.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers, 4 heads, 3 steps (smoke test)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 16, --tiny: 3)")
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--response-length", type=int, default=None,
                        help=f"PPO: new tokens per completion (default {Settings.response_length})")
    parser.add_argument("--model", default=None,
                        help="model folder, .gguf file or known name (smollm2-135m-instruct), not the bench model")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="gae",
                        help="PPO's advantage estimator; anchor: TRL 1.12 PPOTrainer (gae), GRPOTrainer, RLOOTrainer")
    parser.add_argument("--num-samples", type=int, default=Settings.num_samples,
                        help="grpo, rloo: completions per prompt (TRL's num_generations), dividing the 8 a rollout")
    parser.add_argument("--kl-coef", type=float, default=Settings.kl_coef,
                        help="PPO's kl_coef, TRL's beta; 0: no KL term")
    parser.add_argument("--value-model", choices=("lora_head", "policy_head", "reward_head"), default=None,
                        help="gae: our PPO's value model (default: the stage's; the anchor trains a separate full one)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=Settings.dtype,
                        help="PPO: weights of every model on both sides (bfloat16: for CPUs with AMX or a GPU)")
    parser.add_argument("--allocator", choices=sorted(ALLOCATORS), default="glibc",
                        help="malloc both sides run with (jemalloc/tcmalloc: preloaded from the system's libraries)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: one per core); 1 is steadier on a busy machine")
    parser.add_argument("--workdir", default=str(REPO / ".bench" / "work"), help="models, data, run dirs and logs")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings(hidden=64, layers=2, heads=4, steps=3) if args.tiny else Settings()
    s.value_model, s.model, s.estimator, s.num_samples, s.kl_coef, s.dtype = (
        args.value_model, args.model, args.estimator, args.num_samples, args.kl_coef, args.dtype)
    for name in ("hidden", "layers", "heads", "steps", "response_length"):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    if s.estimator != "gae" and (s.num_samples < 2 or s.batch_size % s.num_samples):
        raise SystemExit(f"--num-samples must be at least 2 and divide the {s.batch_size} completions per rollout")
    return s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    stages = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise SystemExit(f"--only: unknown stage(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(STAGES)}")
    if args.reps < 1:
        raise SystemExit("--reps must be at least 1")
    report = benchmark(stages, settings_from(args), args.reps, args.skip_anchor, Path(args.workdir), args.threads,
                       args.allocator)
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
