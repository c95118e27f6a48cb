#!/usr/bin/env bash
# Set up fa-pool in ./.venv: torch pinned first (2.13.0: the CPU build on this kind of
# machine, so pip never pulls a multi-GB CUDA build through a range), then the package with
# its app and dev extras.  With --browser, also Debian's chromium for the dashboard's
# browser test.  Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q torch==2.13.0
fi
.venv/bin/pip install -q -e '.[app,dev]'
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
      >/dev/null 2>&1 || echo "setup: could not install chromium; browser tests will skip" >&2
  fi
fi
