"""TALL masks and Consensus Merging.

Wang et al., "Localizing Task Information for Improved Model Merging and Compression",
arXiv 2405.07813. Reference: nik-dim/tall_masks (``generate_task_masks``,
``construct_consensus_mask``), reproduced in FusionBench ``tall_mask/utils.py``.

With the multi-task vector ``tau_MTL`` (task-arithmetic sum, or the TIES merged vector, both
*before* scaling, as in the reference), the TALL mask of task ``t`` is
``m_t = |theta_0 - theta_t| > lambda * |theta_MTL - theta_t|``, i.e.
``|tau_t| > lambda * |tau_MTL - tau_t|``. Consensus keeps entries active in at least ``k``
tasks: ``theta = theta_0 + scaling * tau_MTL * [sum_t m_t >= k]``.

:func:`consensus` runs one fused kernel per leaf (:func:`jaxmtl.merging.methods._fused.
consensus_leaf`); with ``base="ties"`` and the global official trim it takes the thresholds from
:func:`jaxmtl.merging.methods.sparse.global_ties_thresholds` (outside ``jax.jit``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxmtl.merging.methods import _common, _fused
from jaxmtl.merging.methods.sparse import _check_ties_options as _check_ties
from jaxmtl.merging.methods.sparse import eager_units, global_ties_thresholds, ties_deltas
from jaxmtl.merging.task_vectors import compute_dtype
from jaxmtl.merging.task_vectors import Exclude

PyTree = Any

__all__ = ["tall_masks", "consensus"]


_TIES_KEYS = ("density", "trim_scope", "topk_rule", "sign", "merge")


def _check_ties_options(method: str, ties_options: dict[str, Any] | None) -> None:
  if ties_options is None:
    return
  if not isinstance(ties_options, dict):
    raise TypeError(f"{method}: ties_options must be a dict, got {type(ties_options).__name__}")
  bad = sorted(set(ties_options) - set(_TIES_KEYS))
  if bad:
    raise ValueError(f"{method}: ties_options keys {bad} are not valid; use {list(_TIES_KEYS)}")


def _multi_task(prep: _common.Prepared, base: str, ties_options: dict[str, Any] | None):
  _common.check_choice("consensus", "base", base, ("task_arithmetic", "ties"))
  if base == "task_arithmetic":
    return _common.map_merged(prep, lambda s: jnp.sum(s, 0))
  opts = dict(density=0.2, trim_scope="global", topk_rule="official", sign="mass",
              merge="disjoint_mean")
  opts.update(ties_options or {})
  return ties_deltas(prep, **opts)


def _masks(prep, mtl, tall_mask_lambda):
  out = []
  for t in range(prep.num_tasks):
    out.append([None if s is None else
                jnp.abs(s[t]) > jnp.abs(m - s[t]) * tall_mask_lambda
                for s, m in zip(prep.stacks, mtl)])
  return out


def tall_masks(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
               task_vectors: Sequence[PyTree] | None = None, tall_mask_lambda: float = 0.4,
               base: str = "task_arithmetic", ties_options: dict[str, Any] | None = None,
               exclude: Exclude = None) -> list[PyTree]:
  """Per-task TALL masks: ``T`` bool pytrees shaped like ``pretrained``.

  Args:
    tall_mask_lambda: the reference's ``tall_mask_lambda`` (its grid is 0.2..0.6; chosen per
      task on validation data there).
    base: multi-task vector from "task_arithmetic" (sum of task vectors) or "ties"
      (reference ``use_ties``; ``ties_options`` are passed to TIES, default density 0.2,
      global official trim, disjoint mean).
    exclude: excluded leaves get all-True masks (they are never merged anyway).
  """
  _common.check_choice("tall_masks", "base", base, ("task_arithmetic", "ties"))
  _check_ties_options("tall_masks", ties_options)
  return _tall_masks(pretrained, finetuned, task_vectors, tall_mask_lambda, base=base,
                     ties_options=_common.freeze(ties_options or {}),
                     exclude=_common.freeze(exclude))


@_common.jit_static("base", "ties_options")
def _tall_masks(pretrained, finetuned, task_vectors, tall_mask_lambda, *, base, ties_options,
                exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "tall_masks")
  masks = _masks(prep, _multi_task(prep, base, dict(ties_options)), tall_mask_lambda)
  return [jax.tree_util.tree_unflatten(
    prep.treedef, [jnp.ones(jnp.shape(a), bool) if m is None else m
                   for a, m in zip(prep.pre, ms)]) for ms in masks]


def consensus(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
              task_vectors: Sequence[PyTree] | None = None, k: int = 2,
              tall_mask_lambda: float = 0.4, base: str = "task_arithmetic",
              ties_options: dict[str, Any] | None = None,
              scaling: float | jax.Array | None = None, exclude: Exclude = None) -> PyTree:
  """Consensus Merging (Consensus TA / Consensus TIES).

  Args:
    k: keep entries whose TALL masks agree in at least ``k`` tasks (reference
      ``prun_thre_k``; 2 removes "selfish" and "catastrophic" weights, 0 gives the base method).
    tall_mask_lambda: see :func:`tall_masks`.
    base: "task_arithmetic" or "ties" (reference ``use_ties``).
    scaling: lambda on the masked multi-task vector; None means 0.3 for task arithmetic
      (FusionBench's default) and 1.0 for TIES (the paper's).
  Returns:
    pytree with ``pretrained``'s structure, shapes and dtypes.
  """
  if isinstance(k, bool) or not isinstance(k, int) or k < 0:
    raise ValueError(f"consensus: k must be a non-negative int, got {k!r}")
  _common.check_choice("consensus", "base", base, ("task_arithmetic", "ties"))
  _check_ties_options("consensus", ties_options)
  if scaling is None:
    scaling = 0.3 if base == "task_arithmetic" else 1.0
  opts = dict(density=0.2, trim_scope="global", topk_rule="official", sign="mass",
              merge="disjoint_mean")
  opts.update(ties_options or {})
  fused = base == "task_arithmetic" or (opts["trim_scope"] == "global"
                                         and opts["topk_rule"] == "official")
  if fused:
    flat = _common.flatten(pretrained, finetuned, task_vectors, exclude, "consensus")
    leaves = flat.pre + [x for o in flat.others for x in o]
    if base == "task_arithmetic":
      traced = _fused.is_traced(*leaves, tall_mask_lambda, scaling)
      units = _fused.leaf_units(flat, pack=False) if traced else eager_units(flat)
      return _consensus_fused(flat, units, None, True, k, base, None, "sum", tall_mask_lambda,
                              scaling, traced)
    if not _fused.is_traced(*leaves) and all(
        compute_dtype(flat.pre[i].dtype) == jnp.float32 for i in flat.merged_indices):
      _check_ties(*(opts[n] for n in ("density", "trim_scope", "topk_rule", "sign", "merge")))
      units = eager_units(flat)
      thr, keep_all = global_ties_thresholds(flat, float(opts["density"]), units)
      return _consensus_fused(flat, units, thr, keep_all, k, base, opts["sign"], opts["merge"],
                              tall_mask_lambda, scaling,
                              _fused.is_traced(tall_mask_lambda, scaling))
  return _consensus(pretrained, finetuned, task_vectors, tall_mask_lambda, scaling, k=k,
                    base=base, ties_options=_common.freeze(ties_options or {}),
                    exclude=_common.freeze(exclude))


def _consensus_fused(flat, units, thr, keep_all, k, base, sign, merge, lam, scaling, traced):
  thr = jnp.zeros((flat.num_tasks,), jnp.uint32) if thr is None else thr
  kw = dict(is_tv=flat.is_tv, keep_all=keep_all)

  def kernel(u, a, others, majority, mark):
    del u
    # the consensus mask zeroes entries that still vote: the vote comes from the TIES sum
    return _fused.consensus_leaf(a, others, thr, majority, lam, scaling, k=k, base=base,
                                 sign=sign, merge=merge, mark=mark, sign_from_out=False, **kw)

  return _fused.run_leafwise(
    flat, units, kernel, elect=base == "ties" and sign == "mass", traced=traced,
    signsum=lambda u: _fused.signsum_leaf(u.pre, u.others, thr, **kw),
    entry_signs=lambda a, others: _fused.ties_signs(a, others, thr, **kw))


@_common.jit_static("k", "base", "ties_options")
def _consensus(pretrained, finetuned, task_vectors, tall_mask_lambda, scaling, *, k, base,
               ties_options, exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "consensus")
  mtl = _multi_task(prep, base, dict(ties_options))
  masks = _masks(prep, mtl, tall_mask_lambda)
  deltas = []
  for i, m in enumerate(mtl):
    if m is None:
      deltas.append(None)
      continue
    votes = sum(masks[t][i].astype(jnp.int32) for t in range(prep.num_tasks))
    deltas.append(jnp.where(votes >= k, m, jnp.zeros_like(m)))
  return _common.finish(prep, deltas, scaling)
