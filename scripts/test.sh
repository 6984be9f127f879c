#!/usr/bin/env bash
# The one test command: installs what is missing, then runs the engine's pytest suite on CPU
# and every Node workspace's vitest suite (unit, end-to-end, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== engine (pytest, CPU, tiny model)"
(cd engine && ../.venv/bin/python -m pytest -q)
echo "== control plane, SDK, playground (vitest)"
npm test --workspaces --if-present
