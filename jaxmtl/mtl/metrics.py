"""Multi-task evaluation metrics: Δm%, the mean relative change against a baseline.

Navon et al., "Multi-Task Learning as a Bargaining Game" (Nash-MTL), arXiv 2202.01017,
section 6 (introduced by Maninis et al., arXiv 1904.08918)::

  Δm% = (100 / K) Σ_k (-1)^{δ_k} (M_{m,k} − M_{b,k}) / M_{b,k}

over the K metrics, with δ_k = 1 when higher is better for metric k; negative is better.
The baseline is usually single-task learning (STL). Host-side (plain floats), not jitted.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

__all__ = ["delta_m"]


def delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
  """Δm in percent, averaged over the metrics (keys); lower is better.

  Args:
    metrics: metric name -> value of the method, e.g. ``{"seg/miou": 0.39, "depth/abs": 0.53}``.
      A task with several metrics contributes one key per metric (K counts metrics, as in
      Nash-MTL's NYUv2 table with 9 metrics over 3 tasks).
    baseline: the same keys -> baseline value (non-zero, finite).
    higher_is_better: the same keys -> ``True`` where a larger value is better.

  Returns:
    Δm% as a Python float.
  """
  keys = set(metrics)
  if not keys:
    raise ValueError("metrics is empty")
  for name, other in (("baseline", baseline), ("higher_is_better", higher_is_better)):
    if set(other) != keys:
      raise ValueError(f"{name} keys {sorted(other)} differ from metrics keys {sorted(keys)}")
  total = 0.0
  for k in sorted(keys):
    m, b, hib = metrics[k], baseline[k], higher_is_better[k]
    if not isinstance(hib, (bool, np.bool_)):
      raise TypeError(f"higher_is_better[{k!r}] must be a bool, got {hib!r}")
    m, b = float(m), float(b)
    if not (math.isfinite(m) and math.isfinite(b)) or b == 0.0:
      raise ValueError(f"metric {k!r}: need finite values and a non-zero baseline, "
                       f"got value {m} and baseline {b}")
    sign = -1.0 if bool(hib) else 1.0
    total += sign * (m - b) / b
  return 100.0 * total / len(keys)
