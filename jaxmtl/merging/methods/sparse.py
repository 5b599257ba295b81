"""Sparsify-then-combine merges: TIES, DARE, Model Breadcrumbs, DELLA.

All four share two steps applied to the task vectors ``[T, *s]`` of every merged leaf:

1. *sparsify* each task vector (top-k magnitudes, random drop, outlier+small removal, or
   magnitude-ranked random drop), optionally rescaling what is kept;
2. *combine* the tasks: an optional sign election (TIES) followed by a sum or a (disjoint) mean.

Conventions follow the references named in each function; where they disagree the choice is a
keyword option whose values are named after the reference (see ``docs/merging.md``).
Row-wise options ("row") treat the *last* axis as the row: for a 2-D leaf ``[R, n]`` each of the
``R`` rows of ``n`` entries is handled separately, which matches PyTorch ``weight[out, in]``
references row for row; 0-/1-D leaves are a single row; higher-rank leaves are reshaped to
``[-1, s[-1]]``.

TIES with the global trim (official top-k rule) and DARE run fused per-leaf kernels
(:mod:`jaxmtl.merging.methods._fused`); global TIES finds its per-task thresholds with the exact
sample-count-extract selection of :mod:`jaxmtl.merging.methods._select` when called outside
``jax.jit``, and with the radix select :func:`batched_topk_threshold` when traced. The other
options work on the stacked ``[T, *s]`` task vectors (:func:`jaxmtl.merging.methods._common.
prepare`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxmtl.merging.methods import _common, _fused, _select
from jaxmtl.merging.methods.topk import batched_topk_threshold
from jaxmtl.merging.task_vectors import compute_dtype
from jaxmtl.merging.task_vectors import Exclude
from jaxmtl.rng import UNIFORMS
from jaxmtl.rng import uniform as rng_uniform

PyTree = Any

__all__ = ["ties", "dare", "breadcrumbs", "della", "topk_masks", "elect_and_merge",
           "rescale_masked"]

_SIGNS = (None, "mass", "count")
_MERGES = ("sum", "mean", "disjoint_mean")


# --------------------------------------------------------------------------------- helpers


def _topk_group(mags: list[jax.Array], density: float, rule: str) -> list[jax.Array]:
  """Keep-masks ``[T, *s_i]`` for the top ``density`` magnitudes of each task ``t`` over all of
  ``mags[i][t]`` jointly (``mags``: non-negative ``[T, *s_i]``)."""
  t = mags[0].shape[0]
  d = sum(int(m.size) for m in mags) // t
  if rule == "official":
    # prateeksy/ties-merging `topk_values_mask`: k = d - int(d * K); keep |x| >= kthvalue(k),
    # i.e. keep everything >= the (int(d * K) + 1)-th largest magnitude, ties included.
    m = int(d * density)
    if m >= d:
      return [jnp.ones(x.shape, bool) for x in mags]
    thr = batched_topk_threshold(mags, m + 1)
    return [x >= _bcast(thr, x) for x in mags]
  # mergekit `sparsify.magnitude`: exactly max(1, int(density * n)) entries; ties at the
  # threshold go to the earliest entries in flattened (leaf, then row-major) order.
  if density >= 1:
    return [jnp.ones(x.shape, bool) for x in mags]
  n = max(1, int(density * d))
  thr = batched_topk_threshold(mags, n)
  need = n - sum(jnp.sum(x > _bcast(thr, x), axis=tuple(range(1, x.ndim)), dtype=jnp.int32)
                 for x in mags)
  out, offset = [], jnp.zeros((t,), jnp.int32)
  for x in mags:
    eq = (x == _bcast(thr, x)).reshape(t, -1)
    rank = jnp.cumsum(eq.astype(jnp.int32), axis=1) + offset[:, None]
    keep_eq = eq & (rank <= need[:, None])
    out.append((x > _bcast(thr, x)) | keep_eq.reshape(x.shape))
    offset = offset + jnp.sum(eq, axis=1, dtype=jnp.int32)
  return out


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
  return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _desc_ranks(r: jax.Array) -> jax.Array:
  """0-based descending rank along the last axis, ties broken by index (stable)."""
  order = jnp.argsort(-r, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True)


def _asc_ranks(r: jax.Array) -> jax.Array:
  order = jnp.argsort(r, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True)


def _topk_last_axis(r: jax.Array, density: float, rule: str) -> jax.Array:
  """Keep-mask for the top ``density`` of each last-axis slice of non-negative ``r``."""
  n = r.shape[-1]
  if rule == "official":
    m = int(n * density)
    if m >= n:
      return jnp.ones(r.shape, bool)
    thr = -jnp.sort(-r, axis=-1)[..., m:m + 1]
    return r >= thr
  if density >= 1:
    return jnp.ones(r.shape, bool)
  k = max(1, int(density * n))
  return _desc_ranks(r) < k


def _task_rows(x: jax.Array) -> jax.Array:
  """``[T, *s]`` -> ``[T, R, n]`` rows along the last axis (0-/1-D leaves: one row)."""
  t = x.shape[0]
  return x.reshape(t, 1, -1) if x.ndim <= 2 else x.reshape(t, -1, x.shape[-1])


def topk_masks(stacks: Sequence[jax.Array | None], density: float, *, scope: str = "global",
               rule: str = "official") -> list[jax.Array | None]:
  """Top-``density`` magnitude keep-masks, each task separately.

  Args:
    stacks: per leaf, task vectors stacked ``[T, *s]`` (None entries are skipped).
    density: fraction kept, in (0, 1].
    scope: "global" (per task, all leaves ranked together: official TIES, FusionBench,
      AdaMerging; threshold by radix select, no sort), "tensor" (each leaf separately: mergekit),
      "row" (each last-axis row separately).
    rule: "official" (keep ``|x| >=`` the ``(int(n*density)+1)``-th largest, ties kept:
      ``torch.kthvalue`` in prateeksy/ties-merging) or "mergekit" (exactly
      ``max(1, int(n*density))`` entries, ties to the earliest: ``torch.argsort(...)[:k]``).

  Returns:
    bool masks ``[T, *s]``.
  """
  idx = [i for i, x in enumerate(stacks) if x is not None]
  out: list[jax.Array | None] = [None] * len(stacks)
  if scope == "global":
    if idx:
      for i, m in zip(idx, _topk_group([jnp.abs(stacks[i]) for i in idx], density, rule)):
        out[i] = m
  elif scope == "tensor":
    for i in idx:
      x = stacks[i]
      out[i] = _topk_last_axis(jnp.abs(x).reshape(x.shape[0], -1), density, rule).reshape(x.shape)
  elif scope == "row":
    for i in idx:
      x = stacks[i]
      out[i] = _topk_last_axis(_task_rows(jnp.abs(x)), density, rule).reshape(x.shape)
  else:
    raise ValueError(f"trim_scope={scope!r} is not valid; choose 'global', 'tensor' or 'row'")
  return out


def rescale_masked(x: jax.Array, keep: jax.Array, rescale: str | None, keep_prob: Any = None,
                   eps: float = 1e-7) -> jax.Array:
  """Masks ``x`` ``[*s]`` with ``keep`` ``[*s]`` and rescales what is kept.

  rescale:
    None: no rescaling.
    "paper": divide by the keep probability ``keep_prob`` (scalar or ``[*s]``): DARE's
      ``1 / (1 - p)`` (yule-BUAA/MergeLM, FusionBench), DELLA's ``1 / (1 - p_i)``.
    "mergekit": multiply by ``||x||_1 / ||x * keep||_1`` over the whole leaf, left unscaled when
      either norm is below ``eps`` (mergekit ``sparsify.rescaled_masked_tensor``, ``l1``).
  """
  masked = jnp.where(keep, x, jnp.zeros_like(x))
  if rescale is None:
    return masked
  if rescale == "paper":
    return masked / jnp.asarray(keep_prob, x.dtype)
  if rescale == "mergekit":
    before = jnp.sum(jnp.abs(x))
    after = jnp.sum(jnp.abs(masked))
    ok = (before >= eps) & (after >= eps)
    return jnp.where(ok, masked * (before / jnp.where(ok, after, 1.0)), masked)
  raise ValueError(f"rescale={rescale!r} is not valid; choose None, 'paper' or 'mergekit'")


def elect_and_merge(stacks: Sequence[jax.Array | None], sign: str | None,
                    merge: str) -> list[jax.Array | None]:
  """Combines sparsified task vectors ``[T, *s]`` per leaf into ``[*s]``.

  sign:
    None: no election, every entry contributes.
    "mass": TIES sign election by total mass, ``sign(sum_t tau_t)`` (prateeksy/ties-merging
      ``resolve_sign``; mergekit ``consensus_method: sum``). An exactly-zero sum takes the sign
      of the majority of elected signs over all merged leaves (official ``resolve_zero_signs``;
      mergekit picks +1, which differs only where non-zero values cancel exactly).
    "count": majority of ``sign(tau_t)`` counts, ties -> +1 (mergekit ``consensus_method:
      count``).
  Entries are kept where their sign equals the elected sign (zeros never count).
  merge:
    "sum": sum of kept entries (FusionBench ``merge_func: sum``; mergekit ``normalize: false``).
    "mean" / "disjoint_mean": kept sum / number of kept entries (at least 1) with election
      (official ``dis-mean``; mergekit ``normalize: true``); ``/ T`` without election.
  """
  _common.check_choice("elect_and_merge", "sign", sign, _SIGNS)
  _common.check_choice("elect_and_merge", "merge", merge, _MERGES)
  mean = merge in ("mean", "disjoint_mean")
  if sign is None:
    return [None if s is None else (jnp.mean(s, 0) if mean else jnp.sum(s, 0)) for s in stacks]
  if sign == "mass":
    elected = [None if s is None else jnp.sign(jnp.sum(s, 0)) for s in stacks]
    total = sum((jnp.sum(e) for e in elected if e is not None), jnp.asarray(0.0))
    majority = jnp.sign(total)
    elected = [None if e is None else jnp.where(e == 0, majority, e) for e in elected]
  else:
    elected = [None if s is None else
               jnp.where(jnp.sum(jnp.sign(s), 0) >= 0, 1.0, -1.0).astype(s.dtype)
               for s in stacks]
  out: list[jax.Array | None] = []
  for s, e in zip(stacks, elected):
    if s is None:
      out.append(None)
      continue
    keep = jnp.where(e[None] > 0, s > 0, s < 0)
    sel = jnp.where(keep, s, jnp.zeros_like(s))
    tot = jnp.sum(sel, 0)
    if mean:
      tot = tot / jnp.maximum(jnp.sum(keep, 0), 1).astype(s.dtype)
    out.append(tot)
  return out


def _check_key(method: str, key: Any) -> jax.Array:
  if key is None:
    raise TypeError(f"{method}: needs an explicit PRNG `key=` (jax.random.key(seed))")
  return key


# --------------------------------------------------------------------------------- TIES


def _check_ties_options(density, trim_scope, topk_rule, sign, merge) -> None:
  _common.check_fraction("ties", "density", density, low_open=True)
  _common.check_choice("ties", "trim_scope", trim_scope, ("global", "tensor", "row"))
  _common.check_choice("ties", "topk_rule", topk_rule, ("official", "mergekit"))
  _common.check_choice("ties", "sign", sign, ("mass", "count"))
  _common.check_choice("ties", "merge", merge, _MERGES)


def ties_deltas(prep: _common.Prepared, *, density: float, trim_scope: str, topk_rule: str,
                sign: str, merge: str) -> list[jax.Array | None]:
  """TIES merged task vector (unscaled) per leaf; see :func:`ties`."""
  _check_ties_options(density, trim_scope, topk_rule, sign, merge)
  masks = topk_masks(prep.stacks, density, scope=trim_scope, rule=topk_rule)
  stacks = [None if x is None else jnp.where(m, x, jnp.zeros_like(x))
            for x, m in zip(prep.stacks, masks)]
  return elect_and_merge(stacks, sign, merge)


def ties(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
         task_vectors: Sequence[PyTree] | None = None, density: float = 0.2,
         trim_scope: str = "global", topk_rule: str = "official", sign: str = "mass",
         merge: str = "disjoint_mean", scaling: float | jax.Array = 1.0,
         exclude: Exclude = None) -> PyTree:
  """TIES-Merging: trim, elect sign, disjoint merge.

  Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", arXiv 2306.01708.
  Reference: prateeksy/ties-merging (``topk_values_mask``, ``resolve_sign``, ``disjoint_merge``),
  reproduced by FusionBench ``ties_merging_utils`` and AdaMerging; mergekit ``ties``.

  Args:
    pretrained: pytree ``theta_0``; leaves ``[*s]``.
    finetuned: ``T`` pytrees (or ``task_vectors=``).
    density: fraction of entries kept per task (the official ``K``/``reset_thresh`` = 20% ->
      0.2; mergekit ``density``), in (0, 1].
    trim_scope: "global" (per task, all merged leaves ranked together: official, FusionBench,
      AdaMerging; threshold found by :func:`global_topk_threshold`, no full sort),
      "tensor" (per leaf: mergekit), "row" (per last-axis row).
    topk_rule: "official" (keep ``|x| >=`` the k-th largest, ties kept, ``k = int(n*density)+1``)
      or "mergekit" (exactly ``max(1, int(n*density))`` entries).
    sign: "mass" (paper, official, mergekit ``sum``) or "count" (mergekit ``count``).
    merge: "disjoint_mean" (paper, official ``dis-mean``, mergekit ``normalize: true``) or
      "sum" (FusionBench ``ties_merging.yaml`` ``merge_func: sum``).
    scaling: lambda applied to the merged vector (paper: 1; FusionBench's config: 0.3 with
      ``merge="sum"``).
    exclude: path regex(es) of leaves returned from ``pretrained`` unchanged (also left out of
      the global ranking, like the official ``remove_keys``).

  Returns:
    pytree with ``pretrained``'s structure, shapes and dtypes.
  """
  _check_ties_options(density, trim_scope, topk_rule, sign, merge)
  if trim_scope == "global" and topk_rule == "official":
    flat = _common.flatten(pretrained, finetuned, task_vectors, exclude, "ties")
    leaves = flat.pre + [x for o in flat.others for x in o]
    if not _fused.is_traced(*leaves) and all(
        compute_dtype(flat.pre[i].dtype) == jnp.float32 for i in flat.merged_indices):
      return _ties_global(flat, float(density), sign, merge, scaling)
  return _ties(pretrained, finetuned, task_vectors, scaling, density=float(density),
               trim_scope=trim_scope, topk_rule=topk_rule, sign=sign, merge=merge,
               exclude=_common.freeze(exclude))


def global_ties_thresholds(flat: _common.Flat, density: float,
                           units: Sequence[_fused.Unit] | None = None) -> tuple[jax.Array, bool]:
  """Per-task official global TIES thresholds as keys ``bitcast(|tau|)`` (``uint32 [T]``).

  Keeps ``|tau_t| >=`` the ``(int(d * density) + 1)``-th largest magnitude of task ``t`` over
  the ``d`` merged entries (prateeksy/ties-merging ``topk_values_mask``), found exactly by
  :func:`jaxmtl.merging.methods._select.kth_largest_keys` (concrete arrays only). Returns
  ``(keys, keep_all)``; ``keep_all`` when ``int(d * density) >= d``.
  """
  d = sum(int(flat.pre[i].size) for i in flat.merged_indices)
  m = int(d * density)
  if m >= d:
    return jnp.zeros((flat.num_tasks,), jnp.uint32), True
  if units is None:
    units = _fused.leaf_units(flat, pack=False)
  leaves = [u.pre for u in units] + [x for u in units for x in u.others]
  keys = _select.kth_largest_keys([u.pre for u in units],
                                  [[u.others[t] for u in units] for t in range(flat.num_tasks)],
                                  flat.is_tv, m + 1, host=not _fused.is_sharded(*leaves))
  return jnp.asarray(keys), False


def eager_units(flat: _common.Flat) -> list[_fused.Unit]:
  """Work units for the eager fused paths: small leaves packed unless an input is sharded."""
  leaves = flat.pre + [x for o in flat.others for x in o]
  return _fused.leaf_units(flat, pack=not _fused.is_sharded(*leaves))


def _ties_global(flat, density, sign, merge, scaling):
  if not flat.merged_indices:
    return flat.unflatten(flat.pre)
  units = eager_units(flat)
  thr, keep_all = global_ties_thresholds(flat, density, units)
  kw = dict(is_tv=flat.is_tv, keep_all=keep_all)
  traced = _fused.is_traced(scaling)
  sfo = sign_from_out(flat, scaling, traced)

  def kernel(u, a, others, majority, mark):
    del u
    return _fused.ties_leaf(a, others, thr, majority, scaling, sign=sign, merge=merge, mark=mark,
                            sign_from_out=sfo, **kw)

  return _fused.run_leafwise(
    flat, units, kernel, elect=sign == "mass", traced=traced,
    signsum=lambda u: _fused.signsum_leaf(u.pre, u.others, thr, **kw),
    entry_signs=lambda a, others: _fused.ties_signs(a, others, thr, **kw))


def sign_from_out(flat: _common.Flat, scaling: Any, traced: bool) -> bool:
  """Whether the majority vote can be read off the outputs (float32, concrete non-zero
  ``scaling``; see ``_fused._finish``)."""
  if traced or any(flat.pre[i].dtype != jnp.float32 for i in flat.merged_indices):
    return False
  try:
    return float(scaling) != 0
  except (TypeError, ValueError):
    return False


@_common.jit_static("density", "trim_scope", "topk_rule", "sign", "merge")
def _ties(pretrained, finetuned, task_vectors, scaling, *, density, trim_scope, topk_rule, sign,
          merge, exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "ties")
  deltas = ties_deltas(prep, density=density, trim_scope=trim_scope, topk_rule=topk_rule,
                       sign=sign, merge=merge)
  return _common.finish(prep, deltas, scaling)


# --------------------------------------------------------------------------------- DARE


def dare_deltas_from_masks(prep: _common.Prepared, keeps: Sequence[Sequence[jax.Array | None]],
                           keep_prob: float, rescale: str | None, sign: str | None,
                           merge: str) -> list[jax.Array | None]:
  """DARE given keep-masks ``keeps[t][leaf]`` (lets tests reuse another RNG's masks)."""
  stacks = []
  for i, s in enumerate(prep.stacks):
    if s is None:
      stacks.append(None)
      continue
    keep = jnp.stack([keeps[t][i] for t in range(prep.num_tasks)])
    stacks.append(jax.vmap(lambda x, m: rescale_masked(x, m, rescale, keep_prob))(s, keep))
  return elect_and_merge(stacks, sign, merge)


def dare(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
         key: jax.Array | None = None, task_vectors: Sequence[PyTree] | None = None,
         drop_rate: float = 0.5, rescale: str | None = "paper", sign: str | None = None,
         merge: str = "sum", scaling: float | jax.Array = 1.0,
         exclude: Exclude = None, uniform: str = "hash") -> PyTree:
  """DARE: Drop And REscale task vectors, then combine.

  Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a
  Free Lunch", arXiv 2311.03099. Reference: yule-BUAA/MergeLM ``mask_input_with_mask_rate``
  (FusionBench ``dare``), and mergekit ``dare_linear`` / ``dare_ties``.

  Each entry of each task vector is kept with probability ``1 - drop_rate``, then rescaled. The
  draws for leaf ``i`` (``tree_leaves`` order) are ``uniform(fold_in(key, i), [T, *s]) <
  1 - drop_rate``, so each leaf's masks can be drawn where that leaf lives (shards, disk).
  ``uniform`` names the generator (:mod:`jaxmtl.rng`): "hash" (default; a counter-based integer
  hash, about 30x cheaper than threefry on CPU) or "jax" (``jax.random.uniform``). The
  references draw with torch's generator, so no choice reproduces their masks bit for bit;
  ``dare_deltas_from_masks`` takes given masks.

  Args:
    key: PRNG key (required).
    drop_rate: ``p`` in [0, 1) (mergekit's ``density`` is ``1 - p``; FusionBench default 0.5).
    rescale: "paper" (``1 / (1 - p)``: MergeLM, FusionBench), "mergekit" (per-leaf L1-norm
      matching: mergekit ``rescale: true``), or None.
    sign: None (``dare_linear``, MergeLM ``task_arithmetic``), "mass" (``dare_ties``) or "count".
    merge: "sum" (task arithmetic; mergekit ``normalize: false``) or "mean".
    scaling: lambda (mergekit ``lambda`` default 1; FusionBench ``DareTaskArithmetic`` 0.3).

  Returns:
    pytree with ``pretrained``'s structure, shapes and dtypes.
  """
  key = _check_key("dare", key)
  _common.check_fraction("dare", "drop_rate", drop_rate, high_open=True)
  _common.check_choice("dare", "rescale", rescale, (None, "paper", "mergekit"))
  _common.check_choice("dare", "sign", sign, _SIGNS)
  _common.check_choice("dare", "merge", merge, _MERGES)
  _common.check_choice("dare", "uniform", uniform, tuple(UNIFORMS))
  flat = _common.flatten(pretrained, finetuned, task_vectors, exclude, "dare")
  kw = dict(is_tv=flat.is_tv, keep_prob=1.0 - float(drop_rate), rescale=rescale,
            uniform=uniform)

  leaves = flat.pre + [x for o in flat.others for x in o]
  traced = _fused.is_traced(*leaves, key, scaling)

  sfo = sign_from_out(flat, scaling, traced)

  def kernel(u, a, others, majority, mark):   # leaf i draws its masks from fold_in(key, i)
    return _fused.dare_leaf(a, others, key, u.indices[0], majority, scaling, sign=sign,
                            merge=merge, mark=mark, sign_from_out=sfo, **kw)

  return _fused.run_leafwise(
    flat, _fused.leaf_units(flat, pack=False), kernel, elect=sign == "mass", traced=traced,
    signsum=lambda u: _fused.dare_signsum_leaf(u.pre, u.others, key, u.indices[0], **kw))


# --------------------------------------------------------------------------------- Breadcrumbs


def breadcrumbs_mask(x: jax.Array, density: float, gamma: float, scope: str) -> jax.Array:
  """Keep-mask ``[*s]`` removing the top ``gamma`` and the smallest magnitudes.

  Counts follow mergekit ``sparsify.magnitude_outliers`` over each group of ``n`` entries
  (the whole leaf for scope "tensor", each last-axis row for "row"): keep ``int(density*n)``
  entries after dropping the ``int(gamma*n)`` largest (fewer if needed to keep
  ``int(density*n)``); ``density >= 1`` keeps everything.
  """
  if density >= 1:
    return jnp.ones(x.shape, bool)
  r = jnp.abs(x).reshape(1, -1) if scope == "tensor" else _common.rows(jnp.abs(x))
  n = r.shape[-1]
  target = int(density * n)
  n_top = int(gamma * n)
  n_bot = max(0, n - target - n_top)
  asc = _asc_ranks(r)
  return ((asc >= n_bot) & (asc < n_bot + target)).reshape(x.shape)


def breadcrumbs(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
                task_vectors: Sequence[PyTree] | None = None, density: float = 0.1,
                gamma: float = 0.01, scope: str = "row", sign: str | None = None,
                merge: str = "sum", scaling: float | jax.Array = 1.0,
                exclude: Exclude = None) -> PyTree:
  """Model Breadcrumbs: drop each task vector's largest outliers and smallest entries.

  Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks",
  arXiv 2312.06795. References: mergekit ``breadcrumbs`` / ``breadcrumbs_ties``
  (``sparsify.magnitude_outliers``, whole tensor) and per-row masking of each weight matrix
  (attributed to the official code; here mergekit's counting applied row by row).

  Args:
    density: fraction of entries kept (mergekit ``density``; the paper's ``1 - beta - (1 -
      gamma_paper)``).
    gamma: fraction of *largest* magnitudes removed (mergekit ``gamma``, default 0.01; the
      paper's upper percentile is ``1 - gamma``).
    scope: "row" (each last-axis row) or "tensor" (whole leaf: mergekit).
    sign: None (``breadcrumbs``) or "mass"/"count" (``breadcrumbs_ties``).
    merge: "sum" (mergekit ``normalize: false``) or "mean".
    scaling: lambda applied to the combined vector (mergekit ``lambda``, default 1).
  """
  _common.check_fraction("breadcrumbs", "density", density, low_open=True)
  _common.check_fraction("breadcrumbs", "gamma", gamma)
  _common.check_choice("breadcrumbs", "scope", scope, ("row", "tensor"))
  _common.check_choice("breadcrumbs", "sign", sign, _SIGNS)
  _common.check_choice("breadcrumbs", "merge", merge, _MERGES)
  return _breadcrumbs(pretrained, finetuned, task_vectors, scaling, density=float(density),
                      gamma=float(gamma), scope=scope, sign=sign, merge=merge,
                      exclude=_common.freeze(exclude))


@_common.jit_static("density", "gamma", "scope", "sign", "merge")
def _breadcrumbs(pretrained, finetuned, task_vectors, scaling, *, density, gamma, scope, sign,
                 merge, exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "breadcrumbs")
  mask_fn = jax.vmap(lambda x: breadcrumbs_mask(x, density, gamma, scope))
  stacks = [None if s is None else jnp.where(mask_fn(s), s, jnp.zeros_like(s))
            for s in prep.stacks]
  return _common.finish(prep, elect_and_merge(stacks, sign, merge), scaling)


# --------------------------------------------------------------------------------- DELLA


def della_keep_probs(x: jax.Array, density: float, epsilon: float) -> jax.Array:
  """MagPrune keep probabilities ``[*s]``, increasing with magnitude rank within each row.

  mergekit ``sparsify.della_magprune``: ranks are taken along axis 1 (for a 2-D leaf: within
  each row of ``n`` entries; a 0-/1-D leaf is one row), ascending magnitude ranks ``r = 1..n`` give
  ``p = (density - epsilon) + 2 * epsilon * (r - 1) / (n - 1)`` (``n = 1``: ``density -
  epsilon``). DELLA (arXiv 2406.11617) assigns drop probabilities spaced by ``epsilon`` around
  ``1 - density`` in the same rank order.
  """
  a = jnp.abs(x).reshape(1, -1) if x.ndim < 2 else jnp.moveaxis(jnp.abs(x), 1, -1)
  n = a.shape[-1]
  ranks = _asc_ranks(a).astype(x.dtype)
  norm = ranks / (n - 1) if n > 1 else jnp.zeros_like(ranks)
  probs = (density - epsilon) + norm * 2 * epsilon
  return probs.reshape(x.shape) if x.ndim < 2 else jnp.moveaxis(probs, -1, 1)


def della_deltas_from_masks(prep: _common.Prepared, keeps: Sequence[Sequence[jax.Array | None]],
                            density: float, epsilon: float, rescale: str | None,
                            sign: str | None, merge: str) -> list[jax.Array | None]:
  """DELLA given keep-masks ``keeps[t][leaf]`` (lets tests reuse another RNG's masks)."""
  stacks = []
  for i, s in enumerate(prep.stacks):
    if s is None:
      stacks.append(None)
      continue
    keep = jnp.stack([keeps[t][i] for t in range(prep.num_tasks)])

    def one(x, m):
      probs = della_keep_probs(x, density, epsilon) if rescale == "paper" else None
      return rescale_masked(x, m, rescale, probs)

    stacks.append(jax.vmap(one)(s, keep))
  return elect_and_merge(stacks, sign, merge)


def della(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
          key: jax.Array | None = None, task_vectors: Sequence[PyTree] | None = None,
          density: float = 0.5, epsilon: float = 0.15, rescale: str | None = "mergekit",
          sign: str | None = "mass", merge: str = "mean", scaling: float | jax.Array = 1.0,
          exclude: Exclude = None, uniform: str = "hash") -> PyTree:
  """DELLA-Merging: magnitude-ranked random drop (MagPrune), rescale, elect, fuse.

  Deep et al., "DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based
  Sampling", arXiv 2406.11617. Reference conventions: mergekit ``della`` (``sign="mass"``,
  ``merge="mean"``, L1 rescale) and ``della_linear`` (``sign=None``, ``merge="sum"``); the
  paper / declare-lab/della rescale each kept entry by its own ``1 / keep_prob``
  (``rescale="paper"``).

  Args:
    key: PRNG key (required); leaf ``i``'s masks are ``uniform(fold_in(key, i), [T, *s]) <
      keep_probs``.
    uniform: the generator of :mod:`jaxmtl.rng`, "hash" (default) or "jax", as in :func:`dare`.
    density: mean keep probability, with ``density +- epsilon`` inside (0, 1).
    epsilon: spread of keep probabilities across magnitude ranks (mergekit default 0.15).
    rescale: "mergekit" (per-leaf L1-norm matching), "paper" (``1 / p_i``), or None.
    sign, merge, scaling: as in :func:`elect_and_merge`; mergekit ``lambda`` default 1.
  """
  key = _check_key("della", key)
  _common.check_fraction("della", "density", density, low_open=True)
  if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
    raise ValueError(f"della: density={density} and epsilon={epsilon} must satisfy "
                     "0 < density - epsilon and density + epsilon < 1 (mergekit's rule)")
  _common.check_choice("della", "rescale", rescale, (None, "paper", "mergekit"))
  _common.check_choice("della", "sign", sign, _SIGNS)
  _common.check_choice("della", "merge", merge, _MERGES)
  _common.check_choice("della", "uniform", uniform, tuple(UNIFORMS))
  return _della(pretrained, finetuned, task_vectors, key, scaling, density=float(density),
                epsilon=float(epsilon), rescale=rescale, sign=sign, merge=merge,
                exclude=_common.freeze(exclude), uniform=uniform)


@_common.jit_static("density", "epsilon", "rescale", "sign", "merge", "uniform")
def _della(pretrained, finetuned, task_vectors, key, scaling, *, density, epsilon, rescale, sign,
           merge, exclude, uniform):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "della")
  if density >= 1:
    keeps = [[None if s is None else jnp.ones(s.shape[1:], bool) for s in prep.stacks]
             for _ in range(prep.num_tasks)]
    rescale = None
  else:
    probs_fn = jax.vmap(lambda x: della_keep_probs(x, density, epsilon))
    draws = [None if s is None else
             rng_uniform(uniform, jax.random.fold_in(key, i), s.shape) < probs_fn(s)
             for i, s in enumerate(prep.stacks)]
    keeps = [[None if d is None else d[t] for d in draws] for t in range(prep.num_tasks)]
  deltas = della_deltas_from_masks(prep, keeps, density, epsilon, rescale, sign, merge)
  return _common.finish(prep, deltas, scaling)
