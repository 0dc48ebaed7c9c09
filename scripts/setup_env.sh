#!/usr/bin/env bash
# Create (or reuse) the project virtual environment at .venv and install samix with its extras.
# Usage: source scripts/setup_env.sh   (sets $PY to the venv's python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAMIX_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[samix] creating virtual environment in $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.samix-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[samix] installing samix and its dependencies (first run: a few minutes)"
  "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # torch and torchvision first, as a matching pair (the machine may pin them).
  "$PY" -m pip install -q "torch>=2.1" "torchvision>=0.16"
  "$PY" -m pip install -q -e "$ROOT[dev]"
  touch "$STAMP"
fi
export PY
