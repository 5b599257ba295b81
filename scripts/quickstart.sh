#!/usr/bin/env bash
# Quickstart: set up .venv, then train the two-task MultiDigits model on embedded data.
# Extra arguments are passed to jaxmtl-train (e.g. --config.train.steps=300).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
exec .venv/bin/jaxmtl-train --config configs/quickstart.py --workdir "${WORKDIR:-runs/quickstart}" "$@"
