#!/usr/bin/env bash
# Set up the environment and run the whole test suite. Fails if pytest collects no test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# the layers of the house (pyproject.toml [tool.importlinter]): an upward import fails the suite
echo "[samix] lint-imports (layer contract)"
"$(dirname "$PY")/lint-imports" --config "$ROOT/pyproject.toml"
set +e
"$PY" -m pytest -q -n "${SAMIX_TEST_WORKERS:-2}" --dist loadfile "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[samix] pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
