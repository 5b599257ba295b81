#!/usr/bin/env bash
# Quickstart: set up .venv, train the two-task MultiDigits model on embedded data, then run the
# small model-merging benchmark. Extra arguments are passed to jaxmtl-train (e.g.
# --config.train.steps=300).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
.venv/bin/jaxmtl-train --config configs/quickstart.py --workdir "${WORKDIR:-runs/quickstart}" "$@"
# Model merging: pretrain -> fine-tune 3 embedded tasks -> merge (task arithmetic, TIES, ...,
# AdaMerging) -> table (docs/merging.md; the full 8-task benchmark drops ':runlocal').
.venv/bin/python tools/merge_benchmark.py --config configs/merge_benchmark.py:runlocal \
  --workdir "${MERGE_WORKDIR:-runs/merge_quickstart}" --noprogress
