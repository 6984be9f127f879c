#!/usr/bin/env bash
# The one test command: installs what is missing, then runs every suite (engine pytest on CPU, each Node
# workspace's vitest: unit, end-to-end, browser) in two lanes at once. One lane of end-to-end tests keeps about
# one core busy (the test runner, the server and its engine take turns), so on a 2-core machine one after the
# other they no longer fit the suite's 20-minute budget:
#   lane 1: the server's vitest files except the second lane's, then the SDK's and the playground's;
#   lane 2: the engine's pytest, then the server's two longest self-contained files (the fuzzer and the cluster
#           soak), each of which starts its own engines, redis-servers and databases on free ports.
# Each lane's output is printed after it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

SECOND_LANE_FILES=(test/fuzz/schemathesis.test.ts test/cluster/cluster.test.ts)
first_lane_excludes=()
for f in "${SECOND_LANE_FILES[@]}"; do first_lane_excludes+=(--exclude "$f"); done

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
(
  rc=0
  (cd engine && ../.venv/bin/python -m pytest -q) > "$logs/engine" 2>&1 || rc=1
  npm test -w server -- "${SECOND_LANE_FILES[@]}" > "$logs/server-lane-2" 2>&1 || rc=1
  exit $rc
) &
lane2_pid=$!

echo "== lane 1: server (all but ${SECOND_LANE_FILES[*]}), SDK, playground; lane 2 runs beside it"
lane1_rc=0
npm test -w server -- "${first_lane_excludes[@]}" || lane1_rc=$?
npm test -w sdk || lane1_rc=$?
npm test -w web || lane1_rc=$?

lane2_rc=0
wait "$lane2_pid" || lane2_rc=$?
echo "== lane 2: engine (pytest, CPU, tiny model)"
cat "$logs/engine"
echo "== lane 2: server ${SECOND_LANE_FILES[*]}"
cat "$logs/server-lane-2"

if [ "$lane1_rc" != 0 ] || [ "$lane2_rc" != 0 ]; then
  echo "tests failed: lane 1 exit $lane1_rc, lane 2 exit $lane2_rc" >&2
  exit 1
fi
