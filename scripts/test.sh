#!/usr/bin/env bash
# Test suite: set up .venv with the test extras, then run pytest (CPU, offline,
# 8 simulated devices) in JAXMTL_TEST_WORKERS processes (default 2, pytest-xdist; 0 runs in
# this process). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" test
cd "$ROOT"
exec .venv/bin/python -m pytest tests -q -n "${JAXMTL_TEST_WORKERS:-2}" "$@"
