#!/usr/bin/env bash
# The real model (smollm2-135m-instruct) through every stage on one NVIDIA GPU, in a few minutes (see docs/gpu.md):
# a reduced SFT (bf16), a reduced LoRA reward model on it, a reduced PPO (bf16) whose reward shares the base, then
# one PPO run under DeepSpeed ZeRO-2 (accelerate launch, one process). Each stage's wall time and peak GPU memory
# (torch.cuda.max_memory_allocated / max_memory_reserved) go to runs/gpu_check/results.jsonl and a table at the end.
#
#   bash scripts/gpu_check.sh          on a GPU machine, from a fresh checkout (sets itself up; pip is the only
#                                      download)
#   bash scripts/gpu_check.sh --cpu    a dry run without a GPU: float32, one or two steps per stage, same commands
#
# SKIP_SETUP=1 leaves out `scripts/setup.sh` (an environment already set up); GPU_CHECK_DIR moves the run folder.
set -euo pipefail
cd "$(dirname "$0")/.."

CPU=0
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU=1 ;;
    *) echo "gpu_check.sh: unknown option '$arg' (known: --cpu)" >&2; exit 2 ;;
  esac
done

if [ "$CPU" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check.sh: no nvidia-smi, so no NVIDIA GPU here; use --cpu for a dry run" >&2
  exit 2
fi
[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh --with-smollm2

mkdir -p "${GPU_CHECK_DIR:-runs/gpu_check}"
OUT=$(cd "${GPU_CHECK_DIR:-runs/gpu_check}" && pwd)
RESULTS=$OUT/results.jsonl
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export RLHF_CACHE=${RLHF_CACHE:-$OUT/cache}  # the converted model (538 MB), kept between runs of this script
rm -rf "$OUT/sft" "$OUT/rm" "$OUT/ppo" "$OUT/ppo_zero2" "$RESULTS"  # every stage runs afresh (not skipped as done)

MODEL=smollm2-135m-instruct
DEMOS=tests/data/sft_chat.jsonl      # 64 chats with short answers
PAIRS=tests/data/prefs_polite.jsonl  # 200 preference pairs (polite over rude); their prompts are the PPO prompts
if [ "$CPU" = 1 ]; then
  DTYPE=float32 TRAIN_STEPS=2 TRAIN_BATCH=4 PPO_STEPS=1 PPO_BATCH=4 PPO_MINI=2 NEW_TOKENS=8 STATS_ROWS=4
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  DTYPE=bfloat16 TRAIN_STEPS=60 TRAIN_BATCH=16 PPO_STEPS=10 PPO_BATCH=32 PPO_MINI=8 NEW_TOKENS=64 STATS_ROWS=64
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

ACCELERATE_CONFIG=configs/accelerate/zero2.yaml  # also on CPU: DeepSpeed's CPU accelerator, its bf16 included

stage() {  # stage LABEL COMMAND ARGS...: `rlhf COMMAND ARGS` in one process, timed and measured
  .venv/bin/python scripts/gpu_stage.py "$RESULTS" "$@"
}

TRAIN_KEYS=(  # what SFT and reward share: few steps, LoRA, evaluation and a checkpoint at the last step
  --max_steps "$TRAIN_STEPS" --per_device_train_batch_size "$TRAIN_BATCH" --max_length 256
  --eval_steps "$TRAIN_STEPS" --save_steps "$TRAIN_STEPS" --logging_steps 1 --lora_r 16 --lora_alpha 32
  --dtype "$DTYPE" --report_to none)
PPO_KEYS=(  # PPO of the SFT run against the reward run (a LoRA on the same base); output_dir is given per run
  --policy_path "$OUT/sft" --reward_model_path "$OUT/rm" --dataset_path "$PAIRS"
  --max_steps "$PPO_STEPS" --batch_size "$PPO_BATCH" --mini_batch_size "$PPO_MINI" --max_new_tokens "$NEW_TOKENS"
  --score_stats_rows "$STATS_ROWS" --temperature 0.7 --learning_rate 1e-5 --lora_r 16 --lora_alpha 32
  --save_steps "$PPO_STEPS" --log_completions_steps "$PPO_STEPS" --dtype "$DTYPE" --report_to none)

check_shared_base() {  # check_shared_base RUN_DIR: the PPO run's reward model shared the base
  .venv/bin/python -c 'import json, sys
reward = json.load(open(sys.argv[1] + "/summary.json"))["reward"]
print(f"{sys.argv[1]}: reward {reward}")
sys.exit(0 if reward.startswith("shared base") else f"the reward model did not share the base: {reward}")' "$1"
}

stage sft sft --model_name_or_path "$MODEL" --dataset_path "$DEMOS" --output_dir "$OUT/sft" --learning_rate 2e-4 \
  "${TRAIN_KEYS[@]}"
stage reward reward --model_name_or_path "$OUT/sft" --dataset_path "$PAIRS" --output_dir "$OUT/rm" \
  --learning_rate 1e-4 "${TRAIN_KEYS[@]}"
stage ppo ppo "${PPO_KEYS[@]}" --output_dir "$OUT/ppo"
check_shared_base "$OUT/ppo"
.venv/bin/accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes 1 \
  scripts/gpu_stage.py "$RESULTS" ppo_zero2 ppo "${PPO_KEYS[@]}" --output_dir "$OUT/ppo_zero2"
check_shared_base "$OUT/ppo_zero2"

echo "== gpu_check: $(hostname), $SECONDS s in all (set-up included) =="
.venv/bin/python scripts/gpu_stage.py "$RESULTS" --summary
