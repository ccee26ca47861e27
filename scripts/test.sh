#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite (CPU; Triton kernels through its interpreter).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_env.sh" dev,triton
cd "$root"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
