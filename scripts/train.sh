#!/usr/bin/env bash
# The default training job: sets up .venv if needed, trains a Tensor Memory agent on delayed cue recall
# (configs/train.yaml, a few minutes on 2 CPU cores), evaluates it with and without its memory, draws
# what the memory holds, and prints where the results, logs and videos are. Extra arguments are
# tmem-train overrides (a task that renders can add video=true to the tmem-eval line).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh" dev,triton
cd "$root"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
run_dir="runs/$(date +%Y-%m-%d_%H-%M-%S)_default"
start=$SECONDS
.venv/bin/tmem-train "hydra.run.dir=$run_dir" "$@"
.venv/bin/tmem-eval "run_dir=$run_dir" episodes=100 checkpoint=best memory_ablation=true memory_video=true
echo
echo "done in $((SECONDS - start)) s. Run folder: $root/$run_dir"
echo "  final evaluation:    $run_dir/summary.json"
echo "  memory ablation:     $run_dir/eval.json (the best model of the periodic evaluations)"
echo "  logs (CSV):          $run_dir/logs/progress.csv"
echo "  TensorBoard:         .venv/bin/tensorboard --logdir $run_dir/logs"
echo "  models:              $run_dir/model.zip (final), $run_dir/best/model.zip, $run_dir/checkpoints/"
echo "  memory pictures:     $run_dir/videos/memory.mp4, memory.png"
