#!/usr/bin/env bash
# Creates .venv if missing and installs tmem-agents into it with the extras given as arguments.
# torch==2.13.0 (the CPU build) goes in first, unless a torch is already importable, so that
# resolving the project's dependencies never pulls a multi-GB CUDA build onto a CPU machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
extras="${1:-dev,triton}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
stamp=".venv/.tmem-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
