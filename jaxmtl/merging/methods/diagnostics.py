"""Opt-in counters of what the eager merge paths did (selection passes, sign fix-ups).

Nothing is recorded unless a caller asks, and nothing lives in module state between calls: the
counters go to the dict of the innermost active `collect()` (a `contextvars.ContextVar`, so
threads and nested calls keep their own).

  from jaxmtl.merging.methods import diagnostics
  with diagnostics.collect() as stats:
    merged = jaxmtl.merging.ties(pre, fts, density=0.2)
  stats  # {"mini_passes": 1, "full_passes": 1, "extractions": 1, "fix_units": 42, ...}

Keys: `mini_passes` / `full_passes` (counting passes of the exact global top-k selection),
`extractions`, `extracted_entries`, `extract_mismatch`, `host_small` (small problems selected
on the host); `fix_units`, `fix_entries`, `fix_majority` (entries whose elected sum cancelled
exactly and were recomputed with the global majority sign).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["collect", "bump", "record"]

_CURRENT: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "jaxmtl_merge_diagnostics", default=None)


@contextlib.contextmanager
def collect() -> Iterator[dict[str, int]]:
  """Collects the counters of the merges run inside the block into the yielded dict."""
  stats: dict[str, int] = {}
  token = _CURRENT.set(stats)
  try:
    yield stats
  finally:
    _CURRENT.reset(token)


def bump(name: str, n: int = 1) -> None:
  """Adds ``n`` to counter ``name`` when a `collect()` block is active."""
  stats = _CURRENT.get()
  if stats is not None:
    stats[name] = stats.get(name, 0) + n


def record(**values: int) -> None:
  """Sets counters when a `collect()` block is active."""
  stats = _CURRENT.get()
  if stats is not None:
    stats.update(values)
