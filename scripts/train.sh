#!/usr/bin/env bash
# The default training job: sets up .venv if needed, trains a Tensor Memory agent on the occluded
# CartPole (configs/train.yaml, under 10 minutes on 2 CPU cores), evaluates it with and without its
# memory, and prints where the results, logs and videos are. Extra arguments are tmem-train overrides.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh" dev,triton
cd "$root"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
run_dir="runs/$(date +%Y-%m-%d_%H-%M-%S)_default"
start=$SECONDS
.venv/bin/tmem-train "hydra.run.dir=$run_dir" "$@"
.venv/bin/tmem-eval "run_dir=$run_dir" episodes=20 memory_ablation=true video=true memory_video=true
echo
echo "done in $((SECONDS - start)) s. Run folder: $root/$run_dir"
echo "  final evaluation:    $run_dir/summary.json"
echo "  memory ablation:     $run_dir/eval.json"
echo "  logs (CSV):          $run_dir/logs/progress.csv"
echo "  TensorBoard:         .venv/bin/tensorboard --logdir $run_dir/logs"
echo "  models:              $run_dir/model.zip (final), $run_dir/best/model.zip, $run_dir/checkpoints/"
echo "  videos:              $run_dir/videos/episode.mp4, memory.mp4, memory.png"
