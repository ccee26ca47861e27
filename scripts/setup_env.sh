#!/usr/bin/env bash
# Creates .venv if missing and installs tmem-agents into it with the extras given as arguments.
# torch==2.13.0 goes in first, unless a torch is already importable, so that resolving the project's
# dependencies never pulls another torch. Where pip's index serves CUDA builds, TORCH_INDEX_URL picks
# the index torch comes from (https://download.pytorch.org/whl/cpu for the CPU build).
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
  .venv/bin/python -m pip install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
stamp=".venv/.tmem-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
