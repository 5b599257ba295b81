"""Gradient aggregators for multi-task learning (Jacobian descent), all inside `jax.jit`.

Contract (used by the train step)::

  agg = make_aggregator("upgrad")               # or UPGrad(), AGGREGATORS["upgrad"](...)
  state = agg.init(num_tasks)                    # None unless stateful (Nash-MTL)
  update, weights, state = agg(jacobian, state=state, key=key)
  weights, state = agg.weights(gramian(jacobian), state=state, key=key)

``jacobian`` is a ``[tasks, params]`` matrix or a pytree whose leaves are ``[tasks, ...]``;
``update`` has the structure of one task's gradient. Every method's docstring names its paper and
the reference implementation (torchjd 0.18.0, LibMTL) whose conventions it follows; see
docs/mtl.md for the table of methods, solvers and guarantees.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxmtl.mtl.aggregators.base import (Aggregator, combine, gramian, normalize_gramian,
                                         num_tasks, regularize_gramian, sum_tasks)
from jaxmtl.mtl.aggregators.others import (AlignedMTL, CAGrad, GradDrop, NashMTL,
                                           cagrad_direction, graddrop_update)
from jaxmtl.mtl.aggregators.projection import (IMTLG, MGDA, DualProj, Mean, PCGrad, UPGrad,
                                               min_norm_weights, pcgrad_weights)

AGGREGATORS: dict[str, type[Aggregator]] = {
    "mean": Mean,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "imtlg": IMTLG,
    "cagrad": CAGrad,
    "aligned_mtl": AlignedMTL,
    "nash_mtl": NashMTL,
    "graddrop": GradDrop,
}


def make_aggregator(name: str, **options: Any) -> Aggregator:
  """Builds the aggregator registered under ``name`` with keyword ``options``.

  Raises:
    ValueError: unknown ``name`` (lists the valid names) or unknown option (lists the valid ones).
  """
  if not isinstance(name, str) or name.lower() not in AGGREGATORS:
    raise ValueError(f"Unknown aggregator {name!r}; valid names: {sorted(AGGREGATORS)}.")
  cls = AGGREGATORS[name.lower()]
  valid = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"Unknown option(s) {unknown} for aggregator {name!r}; valid options: "
                     f"{valid}.")
  return cls(**options)


__all__ = [
    "AGGREGATORS", "Aggregator", "AlignedMTL", "CAGrad", "DualProj", "GradDrop", "IMTLG", "MGDA",
    "Mean", "NashMTL", "PCGrad", "UPGrad", "cagrad_direction", "combine", "graddrop_update",
    "gramian", "make_aggregator", "min_norm_weights", "normalize_gramian", "num_tasks",
    "pcgrad_weights", "regularize_gramian", "sum_tasks",
]
