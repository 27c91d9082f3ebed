#!/usr/bin/env bash
# The GPU figures in the README, on one GPU, most wanted first:
#   0. the speed goals: GPU busy time of bench_mlp_mnist as shipped, with 10 steps a call, and
#      with those and its step's draw as CUDA graphs (model.compile_step=reduce-overhead); the
#      epoch time of the paper's schedule (burda16_vae_mnist, batch 20) the same two ways;
#   1. python evaluate.py (k = 5000) on a checkpoint of a trained run, if one is given;
#   2. the IWAE short preset trained and evaluated, with IWAE_OVERRIDES added (e.g. a longer
#      schedule: model.scheduler.first_stage_epochs=0.05 trainer.max_epochs=165);
#   3. epoch time and kernel share of four presets (bench/gpu_profile.py);
#   4. make bench's three loops.
# Usage: bench/gpu_checks.sh DATA_ROOT OUT_DIR [CHECKPOINT]
set -uo pipefail
data=$1 out=$2 checkpoint=${3:-}
mnist=(data.root="$data" data.download=false)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/profile.txt"
graphs=(model.steps_per_call=10 model.compile_step=reduce-overhead)
for args in "bench_mlp_mnist" "bench_mlp_mnist model.steps_per_call=10" \
  "bench_mlp_mnist ${graphs[*]}" "burda16_vae_mnist" "burda16_vae_mnist ${graphs[*]}"; do
  # shellcheck disable=SC2086
  python bench/gpu_profile.py $args "${mnist[@]}" --epochs 3 2>&1 | grep -v Warning | tail -3 |
    tee -a "$out/speed_goals.txt"
done
if [ -n "$checkpoint" ]; then
  start=$SECONDS
  python evaluate.py ckpt_path="$checkpoint" ++data.root="$data" 2>&1 |
    grep -v Warning | tee "$out/evaluate.txt"
  echo "evaluate: $((SECONDS - start)) s" | tee -a "$out/evaluate.txt"
fi
start=$SECONDS
# shellcheck disable=SC2086
python train.py experiment=burda16_iwae_k50_mnist_short "${mnist[@]}" trainer=gpu logger=csv \
  hydra.run.dir=/tmp/iwae_short ${IWAE_OVERRIDES:-} >"$out/iwae_short.log" 2>&1
rc=$?
echo "iwae short ${IWAE_OVERRIDES:-}: $((SECONDS - start)) s, exit $rc" | tee -a "$out/iwae_short.log"
cp /tmp/iwae_short/metrics.json "$out/iwae_short_metrics.json"
for args in "bench_mlp_mnist ${mnist[*]}" "burda16_vae_mnist_short ${mnist[*]}" \
  "burda16_iwae_k50_mnist_short ${mnist[*]}" "bench_conv_sprites"; do
  # shellcheck disable=SC2086
  python bench/gpu_profile.py $args --epochs 3 2>&1 | grep -v Warning | tail -3 | tee -a "$out/profile.txt"
done
python bench/bench.py --data-root "$data" --repeats 3 2>&1 | tee "$out/bench.txt"
