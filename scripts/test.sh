#!/usr/bin/env bash
# The one test command: installs what is missing, then runs the engine's pytest suite on CPU beside every Node
# workspace's vitest suite (unit, end-to-end, browser). They run at the same time because each leaves a core idle
# much of the time (engine start-ups, sockets, the browser), and run one after the other they no longer fit the
# suite's 20-minute budget on a 2-core machine. The engine's output is printed after the Node suites.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

engine_log=$(mktemp)
trap 'rm -f "$engine_log"' EXIT
(cd engine && ../.venv/bin/python -m pytest -q) > "$engine_log" 2>&1 &
engine_pid=$!

echo "== control plane, SDK, playground (vitest); the engine's pytest runs beside it"
node_rc=0
npm test --workspaces --if-present || node_rc=$?

engine_rc=0
wait "$engine_pid" || engine_rc=$?
echo "== engine (pytest, CPU, tiny model)"
cat "$engine_log"

if [ "$node_rc" != 0 ] || [ "$engine_rc" != 0 ]; then
  echo "tests failed: vitest exit $node_rc, pytest exit $engine_rc" >&2
  exit 1
fi
