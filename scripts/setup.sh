#!/usr/bin/env bash
# Installs everything the service and its tests need, on a fresh machine, idempotently:
# the Python engine in .venv (CPU torch 2.13.0 wheel), the Node workspaces, and Chromium for browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

python_side() {
  py_stamp=$(stamp engine/pyproject.toml)
  if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
  if [ "$(cat .venv/.kleinserve-stamp 2>/dev/null)" != "$py_stamp" ]; then
    echo "setup: installing the Python engine into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/pip install -q --disable-pip-version-check -e 'engine[test]'
    echo "$py_stamp" > .venv/.kleinserve-stamp
  fi

  .venv/bin/schemathesis --version >/dev/null 2>&1 || .venv/bin/pip install -q --disable-pip-version-check -r server/test/fuzz/requirements.txt  # the API fuzzer
  [ -x .venv/bin/moto_server ] || .venv/bin/pip install -q --disable-pip-version-check -r deploy/requirements-test.txt  # S3-compatible server for the cluster tests
}

browser() {
  if [ "${KLEINSERVE_SKIP_BROWSER:-}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser tests" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  fi
}

# The Python, browser and Node sides wait mostly on downloads and unpacking, so they install at the same time.
python_side > >(sed 's/^/[python] /') 2>&1 &
python_pid=$!
browser > >(sed 's/^/[browser] /') 2>&1 &
browser_pid=$!

node_stamp=$(stamp package.json server/package.json sdk/package.json web/package.json package-lock.json)
if [ "$(cat node_modules/.kleinserve-stamp 2>/dev/null)" != "$node_stamp" ]; then
  echo "setup: installing Node workspaces" >&2
  npm install --no-audit --no-fund
  echo "$node_stamp" > node_modules/.kleinserve-stamp
fi

# The CLI imports the SDK as a package (@kleinserve/sdk -> sdk/dist): rebuild dist when the SDK's sources change.
sdk_stamp=$(find sdk/src sdk/package.json sdk/tsconfig.build.json -type f 2>/dev/null | sort | xargs cat 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat node_modules/.kleinserve-sdk-stamp 2>/dev/null)" != "$sdk_stamp" ] || [ ! -f sdk/dist/index.js ]; then
  echo "setup: building the SDK" >&2
  npm run build -w sdk >/dev/null
  echo "$sdk_stamp" > node_modules/.kleinserve-sdk-stamp
fi

# The playground is a static build the server serves at `/`; rebuild it when its sources change.
web_stamp=$(find web -path web/dist -prune -o -path web/node_modules -prune -o -type f -print 2>/dev/null | sort | xargs cat 2>/dev/null | sha256sum | cut -c1-16)
if [ -f web/package.json ] && grep -q '"build"' web/package.json && [ "$(cat web/dist/.kleinserve-stamp 2>/dev/null)" != "$web_stamp" ]; then
  echo "setup: building the playground" >&2
  npm run build -w web >/dev/null
  echo "$web_stamp" > web/dist/.kleinserve-stamp
fi

failed=0
wait "$python_pid" || { echo "setup: the Python side failed (above, prefixed [python])" >&2; failed=1; }
wait "$browser_pid" || { echo "setup: installing the browser failed (above, prefixed [browser])" >&2; failed=1; }
exit $failed
