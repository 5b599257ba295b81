#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs jaxmtl with the given extras; idempotent:
# reinstalls only when pyproject.toml changed. Usage: source scripts/setup.sh [extras]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
fi
STAMP="$ROOT/.venv/.jaxmtl-installed-${EXTRAS:-base}"
HASH="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  SPEC="$ROOT"; [ -n "$EXTRAS" ] && SPEC="$ROOT[$EXTRAS]"
  "$ROOT/.venv/bin/python" -m pip install -q -e "$SPEC"
  echo "$HASH" > "$STAMP"
fi
