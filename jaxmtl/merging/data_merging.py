"""Data-dependent merging: Fisher-weighted averaging and RegMean, over pytrees.

* Fisher merging -- Matena & Raffel, "Merging Models with Fisher-Weighted Averaging",
  arXiv 2111.09832. Conventions (floor, global Fisher-norm normalisation, scaling
  coefficients) follow FusionBench's ``fusion_bench.method.fisher_merging``
  (``merging_with_fisher_weights``), itself from ``yule-BUAA/MergeLM``.
* RegMean -- Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models",
  arXiv 2212.09849. The non-diagonal scaling ``alpha`` follows the official code
  (``bloomberg/dataless-model-merging``) and FusionBench's ``regmean``
  (``reduce_non_diagonal_ratio``): ``G' = alpha * G + (1 - alpha) * diag(G)``.

Kernels are in Flax layout ``[in, out]`` (or ``[in, *out]``, flattened to ``[in, prod(out)]``),
so RegMean is ``W = (sum_i G_i')^{-1} sum_i G_i' W_i`` without the transposes FusionBench needs
for PyTorch's ``[out, in]`` weights. Leaf paths and ``exclude`` regexes follow
:mod:`jaxmtl.merging.task_vectors` (``path_str``, ``re.fullmatch``); non-float leaves are never
merged. Arithmetic runs in at least float32 and is cast back to each leaf's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmtl.merging.task_vectors import (Exclude, check_compatible, compute_dtype,
                                         excluded_mask, leaf_paths)

PyTree = Any

__all__ = ["fisher_merging", "diagonal_fisher", "regmean", "input_grams", "reduce_non_diagonal"]


def _check_models(models: Sequence[PyTree], what: str = "models") -> None:
  if isinstance(models, (str, bytes)) or not isinstance(models, Sequence) or not models:
    raise ValueError(f"{what} must be a non-empty sequence of pytrees")
  check_compatible(models[0], models[1:], what=f"{what}[1:]") if len(models) > 1 else None


def _coefficients(weights: Sequence[float] | None, n: int) -> np.ndarray:
  if weights is None:
    return np.full((n,), 1.0 / n)
  w = np.asarray(weights, np.float64)
  if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(f"weights must be {n} finite non-negative numbers (one per model, not all "
                     f"zero), got {weights!r}")
  return w


def fisher_merging(models: Sequence[PyTree], fishers: Sequence[PyTree], *,
                   weights: Sequence[float] | None = None, normalize: bool = True,
                   fisher_floor: float = 1e-6, exclude: Exclude = None,
                   pretrained: PyTree | None = None) -> PyTree:
  """Fisher-weighted average ``sum_i c_i F_i theta_i / sum_i c_i F_i`` leaf-wise.

  Args:
    models: ``K`` pytrees ``theta_i`` with equal structure, shapes, dtypes.
    fishers: ``K`` pytrees of diagonal Fishers, same structure and shapes (any float dtype),
      e.g. from :func:`diagonal_fisher`.
    weights: scaling coefficients ``c_i`` (FusionBench ``fisher_scaling_coefficients``);
      default ``1/K`` each.
    normalize: FusionBench's ``normalize_fisher_weight``: multiply ``c_i`` by
      ``(1/(||F_i|| + floor)) / sum_j 1/(||F_j|| + floor)`` with ``||F_i||`` the L2 norm of
      model ``i``'s Fisher over all merged leaves.
    fisher_floor: added to every Fisher entry (FusionBench ``minimal_fisher_weight``), so a
      leaf with zero Fisher in every model gets the ``c``-weighted plain average.
    exclude: path regexes of leaves not merged; they (and non-float leaves) are taken from
      ``pretrained`` when given, else from ``models[0]``.
    pretrained: optional source of the excluded leaves (same structure).

  Returns:
    pytree with ``models[0]``'s structure, shapes and dtypes.
  """
  _check_models(models)
  if len(fishers) != len(models):
    raise ValueError(f"got {len(models)} models but {len(fishers)} fishers; need one per model")
  ref = models[0]
  paths = leaf_paths(ref)
  excl = excluded_mask(ref, exclude)
  model_leaves = [jax.tree_util.tree_leaves(m) for m in models]
  fisher_leaves = []
  for i, f in enumerate(fishers):
    fl, fdef = jax.tree_util.tree_flatten(f)
    if fdef != jax.tree_util.tree_structure(ref):
      raise ValueError(f"fishers[{i}] structure {fdef} differs from the models' structure "
                       f"{jax.tree_util.tree_structure(ref)}")
    for p, a, b in zip(paths, model_leaves[0], fl):
      if np.shape(a) != np.shape(b):
        raise ValueError(f"leaf {p!r}: model has shape {np.shape(a)} but fishers[{i}] has "
                         f"shape {np.shape(b)}")
    fisher_leaves.append(fl)
  base = model_leaves[0] if pretrained is None else jax.tree_util.tree_leaves(pretrained)
  if len(base) != len(paths):
    raise ValueError("pretrained must have the models' structure")
  c = jnp.asarray(_coefficients(weights, len(models)), jnp.float32)
  if normalize:
    norms = jnp.stack([jnp.sqrt(sum((jnp.sum(jnp.square(jnp.asarray(f, jnp.float32)))
                                     for e, f in zip(excl, fl) if not e), jnp.float32(0)))
                       for fl in fisher_leaves])
    inv = 1.0 / (norms + fisher_floor)
    c = c * inv / jnp.sum(inv)
  out = []
  for j, (e, leaf) in enumerate(zip(excl, model_leaves[0])):
    if e:
      out.append(base[j])
      continue
    dt = compute_dtype(leaf.dtype)
    num = jnp.zeros(np.shape(leaf), dt)
    den = jnp.zeros(np.shape(leaf), dt)
    for i in range(len(models)):
      w = c[i].astype(dt) * (jnp.asarray(fisher_leaves[i][j], dt) + fisher_floor)
      num = num + w * jnp.asarray(model_leaves[i][j], dt)
      den = den + w
    out.append((num / den).astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(ref), out)


def diagonal_fisher(log_prob_fn: Callable[[PyTree, Any], jax.Array], params: PyTree,
                    batches: Iterable[tuple[Any, Any]], *, empirical: bool,
                    key: jax.Array | None = None, num_samples: int = 1) -> PyTree:
  """Diagonal Fisher ``E_x E_y [(d log p(y|x) / d theta)^2]`` over the examples of ``batches``.

  Per-example gradients come from ``jax.vmap(jax.grad(...))`` and are squared before
  averaging (Matena & Raffel, Eq. 3), not squared after summing a batch as FusionBench's
  batched approximation does.

  Args:
    log_prob_fn: ``log_prob_fn(params, x) -> [classes]`` log-probabilities of ONE example
      (``x`` is one example's input pytree, no batch axis).
    params: pytree ``theta``.
    batches: iterable of ``(inputs, labels)``; ``inputs`` a pytree with leading batch axis
      ``[B, ...]``, ``labels`` int ``[B]`` (ignored unless ``empirical``).
    empirical: True -- empirical Fisher at the dataset labels; False -- ``y`` sampled from the
      model's predictive distribution ``p(.|x)`` (the true Fisher, Monte Carlo with
      ``num_samples`` draws per example), which needs ``key``.
    key: PRNG key for the sampled Fisher; folded with the batch index.
    num_samples: label draws per example for ``empirical=False``.

  Returns:
    pytree like ``params`` (float32 or wider): the mean over examples (and draws).
  """
  if not empirical and key is None:
    raise ValueError("diagonal_fisher(empirical=False) samples labels from the model and "
                     "needs key=jax.random.key(...)")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")

  def sq_grad(p, x, y):
    g = jax.grad(lambda q: log_prob_fn(q, x)[y])(p)
    return jax.tree_util.tree_map(lambda a: jnp.square(a.astype(compute_dtype(a.dtype))), g)

  @jax.jit
  def batch_sum(p, inputs, labels, k):
    if not empirical:
      logp = jax.vmap(lambda x: log_prob_fn(p, x))(inputs)
      labels = jax.random.categorical(k, jax.lax.stop_gradient(logp), axis=-1,
                                      shape=(num_samples, logp.shape[0]))
      per = jax.vmap(lambda ys: jax.vmap(sq_grad, (None, 0, 0))(p, inputs, ys))(labels)
      return jax.tree_util.tree_map(lambda a: a.sum((0, 1)), per)
    per = jax.vmap(sq_grad, (None, 0, 0))(p, inputs, labels)
    return jax.tree_util.tree_map(lambda a: a.sum(0), per)

  total, count = None, 0
  for b, (inputs, labels) in enumerate(batches):
    n = int(jax.tree_util.tree_leaves(inputs)[0].shape[0])
    k = jax.random.fold_in(key, b) if key is not None else jax.random.key(0)
    s = batch_sum(params, inputs, jnp.asarray(labels) if labels is not None
                  else jnp.zeros((n,), jnp.int32), k)
    total = s if total is None else jax.tree_util.tree_map(jnp.add, total, s)
    count += n * (1 if empirical else num_samples)
  if total is None:
    raise ValueError("batches is empty; the Fisher needs at least one example")
  return jax.tree_util.tree_map(lambda a: a / count, total)


def reduce_non_diagonal(gram: jax.Array, alpha: float) -> jax.Array:
  """``alpha * G + (1 - alpha) * diag(G)``: off-diagonal entries scaled by ``alpha``."""
  g = jnp.asarray(gram)
  return g * alpha + jnp.diag(jnp.diagonal(g)) * (1.0 - alpha)


def _flat_grams(g: Mapping[str, Any] | PyTree) -> dict[str, Any]:
  if isinstance(g, Mapping) and all(not isinstance(v, Mapping) for v in g.values()):
    return dict(g)
  return dict(zip(leaf_paths(g), jax.tree_util.tree_leaves(g)))


def regmean(models: Sequence[PyTree], grams: Sequence[Mapping[str, Any] | PyTree], *,
            alpha: float = 0.9, exclude: Exclude = None,
            pretrained: PyTree | None = None) -> PyTree:
  """RegMean: per linear kernel ``W = (sum_i G_i')^{-1} sum_i G_i' W_i``; other leaves averaged.

  Args:
    models: ``K`` pytrees with equal structure, shapes, dtypes.
    grams: per model, a mapping from kernel leaf path (``"blocks/0/mlp/fc1/kernel"``, as
      :func:`jaxmtl.merging.task_vectors.path_str` renders it) to that layer's input Gram matrix
      ``X^T X`` ``[in, in]`` (a nested dict of them is flattened the same way). All models
      need the same paths and the same normalisation (sum or mean over examples; see
      :func:`input_grams`). Kernels ``[in, *out]`` with a Gram are RegMean-merged;
      every other merged leaf is the plain mean (FusionBench convention).
    alpha: non-diagonal scaling in ``[0, 1]``: ``G' = alpha G + (1 - alpha) diag(G)``;
      ``alpha=0`` reduces to a per-input-feature weighted average, ``1`` is exact RegMean.
    exclude: path regexes of leaves not merged (taken from ``pretrained`` or ``models[0]``).
    pretrained: optional source of the excluded leaves.

  Returns:
    pytree with ``models[0]``'s structure, shapes and dtypes.
  """
  _check_models(models)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  if len(grams) != len(models):
    raise ValueError(f"got {len(models)} models but {len(grams)} gram sets; need one per model")
  ref = models[0]
  paths = leaf_paths(ref)
  excl = excluded_mask(ref, exclude)
  flat_grams = [_flat_grams(g) for g in grams]
  keys = set(flat_grams[0])
  for i, g in enumerate(flat_grams[1:], 1):
    if set(g) != keys:
      raise ValueError(f"grams[{i}] has paths {sorted(set(g) ^ keys)[:5]} that grams[0] "
                       "does not share (or vice versa); every model needs the same layers")
  unknown = sorted(keys - set(paths))
  if unknown:
    raise ValueError(f"grams name paths {unknown[:5]} that are not leaves of the models; "
                     f"valid leaf paths include {paths[:5]}")
  leaves = [jax.tree_util.tree_leaves(m) for m in models]
  base = leaves[0] if pretrained is None else jax.tree_util.tree_leaves(pretrained)
  out = []
  for j, (path, e, leaf) in enumerate(zip(paths, excl, leaves[0])):
    if e:
      out.append(base[j])
      continue
    dt = compute_dtype(leaf.dtype)
    ws = [jnp.asarray(m[j], dt) for m in leaves]
    if path not in keys:
      out.append((sum(ws[1:], ws[0]) / len(ws)).astype(leaf.dtype))
      continue
    shape = np.shape(leaf)
    if len(shape) < 2:
      raise ValueError(f"leaf {path!r} has a Gram matrix but shape {shape}; RegMean needs a "
                       "kernel [in, *out]")
    gs = []
    for i, g in enumerate(flat_grams):
      g = jnp.asarray(g[path], dt)
      if g.shape != (shape[0], shape[0]):
        raise ValueError(f"grams[{i}][{path!r}] has shape {g.shape}; kernel {shape} needs "
                         f"[{shape[0]}, {shape[0]}]")
      gs.append(reduce_non_diagonal(g, alpha))
    rhs = sum(g @ w.reshape(shape[0], -1) for g, w in zip(gs, ws))
    merged = jnp.linalg.solve(sum(gs[1:], gs[0]), rhs)
    out.append(merged.reshape(shape).astype(leaf.dtype))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(ref), out)


def input_grams(capture_fn: Callable[[PyTree, Any], Mapping[str, jax.Array]], params: PyTree,
                batches: Iterable[Any], *, mean: bool = True) -> dict[str, jax.Array]:
  """Input Gram matrices ``X^T X`` ``[in, in]`` per linear layer, for :func:`regmean`.

  Args:
    capture_fn: ``capture_fn(params, batch) -> {kernel_path: inputs [..., in]}``, the inputs
      each linear layer saw (e.g. a model applied with Flax ``sow``/``capture_intermediates``
      or NNX ``nnx.Intermediate`` and the result keyed by the kernel's path).
    params: pytree passed to ``capture_fn``.
    batches: iterable of batches passed to ``capture_fn``.
    mean: divide by the number of rows (tokens/examples) seen, as FusionBench does; all models
      to merge must use the same choice.

  Returns:
    dict from kernel path to float32 ``[in, in]`` Gram.
  """
  step = jax.jit(lambda p, b: {k: (jnp.einsum("ni,nj->ij", x.reshape(-1, x.shape[-1]),
                                              x.reshape(-1, x.shape[-1]),
                                              preferred_element_type=jnp.float32),
                                   x.size // x.shape[-1])
                               for k, x in capture_fn(p, b).items()})
  acc: dict[str, jax.Array] = {}
  rows: dict[str, int] = {}
  for b in batches:
    for k, (g, n) in step(params, b).items():
      acc[k] = acc[k] + g if k in acc else g
      rows[k] = rows.get(k, 0) + int(n)
  if not acc:
    raise ValueError("batches is empty (or capture_fn captured nothing); no Gram to compute")
  return {k: g / rows[k] if mean else g for k, g in acc.items()}
