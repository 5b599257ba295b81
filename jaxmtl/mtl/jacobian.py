"""Per-task gradients: the task Jacobian, its Gramian, and representation-level Jacobians.

Every function takes a user loss function ``loss_fn(params, batch) -> (losses f32[T], aux)``
returning one scalar loss per task (already reduced over the batch: use the *global* mean so
that, under ``jax.jit`` with a batch sharded over a mesh, every per-task gradient below is the
globally reduced one — XLA inserts the all-reduce; averaging per-device Gramians would be wrong
because ``mean_d(J_d J_dᵀ) != (mean_d J_d)(mean_d J_d)ᵀ``).

Modes and their costs (P = number of parameters, T = tasks, F/B = one forward/backward):

============================  ===================  ==========================================
function                      extra memory         compute
============================  ===================  ==========================================
``task_jacobian``             T·P (+ activations   1 F + T batched B (``jax.vmap`` over the
                              batched over T)      one-hot cotangents of one ``jax.vjp``)
``task_jacobian(chunk_size)`` T·P result, c·P      1 F + T B, c at a time (``lax.map``)
                              working set
``task_gramian``              O(P) (c·P with       1 F (``jax.linearize``) + T B + T
                              ``chunk_size=c``)    forward-mode JVPs through the linearised
                                                   map; never stores J
``feature_jacobian``          T·|features|         1 F of the heads + T head backwards
============================  ===================  ==========================================

With a Gramian ``G`` and task weights ``w`` from an aggregator, the combined update
``Jᵀ w`` is one more backward: the ``combine`` function returned by
``task_gramian(..., return_combine=True)`` (a VJP with cotangent ``w``, no extra forward).

The Jacobian stays a pytree shaped like ``params`` with a leading task axis ``[T, ...]`` on
every leaf: no flatten/concatenate copies.

References: the one-forward / batched-backward scheme is the one used by TorchJD
(``torchjd.autojac``, arXiv 2406.16232, "Jacobian Descent for Multi-Objective Optimization")
with ``parallel_chunk_size``; MGDA-UB's representation-level gradients follow Sener & Koltun,
"Multi-Task Learning as Multi-Objective Optimization", arXiv 1810.04650.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[..., tuple[jax.Array, Any]]

__all__ = [
  "task_jacobian",
  "task_gramian",
  "feature_jacobian",
  "gramian_of",
  "combine",
]


def _check_losses(losses: Any) -> jax.Array:
  if not hasattr(losses, "shape") or getattr(losses, "ndim", None) != 1:
    raise ValueError(
      "loss_fn must return (losses, aux) with losses of shape [num_tasks]; got "
      f"{getattr(losses, 'shape', type(losses))}")
  if not jnp.issubdtype(losses.dtype, jnp.floating):
    raise TypeError(f"losses must be floating point, got dtype {losses.dtype}")
  return losses


def _check_chunk(chunk_size: int | None) -> None:
  if chunk_size is None:
    return
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")


def _map_rows(fn: Callable, rows: jax.Array, chunk_size: int | None) -> Any:
  """Applies ``fn`` to every row: all at once (vmap) or ``chunk_size`` at a time (lax.map)."""
  if chunk_size is None or chunk_size >= rows.shape[0]:
    return jax.vmap(fn)(rows)
  return jax.lax.map(fn, rows, batch_size=chunk_size)


def task_jacobian(loss_fn: LossFn, params: PyTree, batch: Any, *,
                  chunk_size: int | None = None) -> tuple[jax.Array, PyTree, Any]:
  """Per-task gradients with ONE forward pass and a batched backward.

  Args:
    loss_fn: ``loss_fn(params, batch) -> (losses f32[T], aux)``.
    params: pytree of parameters (only these are differentiated).
    batch: anything ``loss_fn`` accepts; not differentiated.
    chunk_size: ``None`` backpropagates all T one-hot cotangents at once (``jax.vmap`` of the
      VJP); an int ``c`` does c at a time (``jax.lax.map(..., batch_size=c)``) to bound the
      working memory to about c backward passes.

  Returns:
    ``(losses f32[T], jacobian, aux)`` where ``jacobian`` is shaped like ``params`` with a
    leading task axis: leaf ``[T, *leaf.shape]``, row ``i`` = ∇ losses[i].
  """
  losses, vjp_fn, aux = jax.vjp(lambda p: loss_fn(p, batch), params, has_aux=True)
  losses = _check_losses(losses)
  _check_chunk(chunk_size)
  eye = jnp.eye(losses.shape[0], dtype=losses.dtype)
  jac = _map_rows(lambda e: vjp_fn(e)[0], eye, chunk_size)
  return losses, jac, aux


def gramian_of(jacobian: PyTree) -> jax.Array:
  """Gramian ``G = J Jᵀ`` f32[T, T] of a Jacobian pytree with leading task axis ``[T, ...]``.

  Summed leaf by leaf (no concatenation); accumulated in float32 at HIGHEST precision.
  """
  leaves = jax.tree_util.tree_leaves(jacobian)
  if not leaves:
    raise ValueError("jacobian has no leaves")
  num_tasks = leaves[0].shape[0]
  gram = jnp.zeros((num_tasks, num_tasks), jnp.float32)
  for leaf in leaves:
    if leaf.ndim < 1 or leaf.shape[0] != num_tasks:
      raise ValueError(
        f"every Jacobian leaf needs leading task axis {num_tasks}, got shape {leaf.shape}")
    flat = leaf.reshape(num_tasks, -1).astype(jnp.float32)
    gram = gram + jnp.matmul(flat, flat.T, precision=jax.lax.Precision.HIGHEST)
  return gram


def combine(weights: jax.Array, jacobian: PyTree) -> PyTree:
  """``Jᵀ w``: contracts the leading task axis of every leaf with ``weights`` f32[T]."""
  weights = jnp.asarray(weights)
  if weights.ndim != 1:
    raise ValueError(f"weights must have shape [T], got {weights.shape}")
  return jax.tree_util.tree_map(
    lambda j: jnp.tensordot(weights.astype(j.dtype), j, axes=1), jacobian)


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  return sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def task_gramian(loss_fn: LossFn, params: PyTree, batch: Any, *, chunk_size: int = 1,
                 return_combine: bool = False):
  """Gramian ``G = J Jᵀ`` f32[T, T] without ever storing the full Jacobian.

  One forward with ``jax.linearize`` (stores the linearisation residuals, like a VJP), then for
  each task i: ``g_i = Jᵀ e_i`` (a backward through the transposed linear map) and
  ``G[i, :] = J g_i`` (a forward-mode JVP through the linearised map). Extra memory O(P)
  (``chunk_size`` tasks at a time: O(chunk_size · P)); compute 1 F + T B + T JVP, i.e. about
  twice ``task_jacobian``'s backward work, traded for T-fold less memory. The result is
  symmetrised ``(G + Gᵀ)/2``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> (losses f32[T], aux)``.
    params: pytree of parameters.
    batch: not differentiated.
    chunk_size: tasks processed together (``jax.lax.map(..., batch_size=chunk_size)``).
    return_combine: also return ``combine(w) -> Jᵀ w`` (pytree like ``params``), the
      "one extra backward" giving the aggregated update from weights ``w`` f32[T]. It is a
      closure: call it inside the same ``jax.jit`` as ``task_gramian``.

  Returns:
    ``(losses f32[T], gramian f32[T, T], aux)`` or, with ``return_combine``,
    ``(losses, gramian, aux, combine)``.
  """
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  losses, jvp_fn, aux = jax.linearize(lambda p: loss_fn(p, batch), params, has_aux=True)
  losses = _check_losses(losses)
  vjp_fn = jax.linear_transpose(jvp_fn, params)
  eye = jnp.eye(losses.shape[0], dtype=losses.dtype)

  def row(e):
    (g,) = vjp_fn(e)
    return jvp_fn(g).astype(jnp.float32)

  gram = _map_rows(row, eye, chunk_size)
  gram = 0.5 * (gram + gram.T)
  if not return_combine:
    return losses, gram, aux

  def combine_fn(weights: jax.Array) -> PyTree:
    weights = jnp.asarray(weights, losses.dtype)
    if weights.shape != losses.shape:
      raise ValueError(f"weights must have shape {losses.shape}, got {weights.shape}")
    return vjp_fn(weights)[0]

  return losses, gram, aux, combine_fn


def feature_jacobian(loss_from_features: LossFn, features: PyTree, *args: Any,
                     chunk_size: int | None = None) -> tuple[jax.Array, PyTree, Any]:
  """Per-task gradients w.r.t. shared features (MGDA-UB, arXiv 1810.04650, section 3.3).

  Args:
    loss_from_features: ``loss_from_features(features, *args) -> (losses f32[T], aux)``:
      the task heads and losses applied to the shared representation.
    features: the shared representation, e.g. f32[B, d] (any pytree).
    *args: passed through, not differentiated (head parameters, labels, ...).
    chunk_size: as in :func:`task_jacobian`.

  Returns:
    ``(losses f32[T], jacobian, aux)``, ``jacobian`` shaped like ``features`` with a leading
    task axis, e.g. f32[T, B, d].

  Train-step flow (one encoder forward, one encoder backward)::

    feats, enc_vjp = jax.vjp(lambda p: encoder(p, x), enc_params)
    losses, jz, _ = feature_jacobian(heads_loss, feats, head_params, labels)
    w = aggregator.weights(gramian_of(jz))          # f32[T]
    (g_enc,) = enc_vjp(combine(w, jz))              # backprop the combined cotangent
    g_heads = jax.grad(lambda hp: w @ heads_loss(feats, hp, labels)[0])(head_params)
  """
  losses, vjp_fn, aux = jax.vjp(lambda z: loss_from_features(z, *args), features,
                                has_aux=True)
  losses = _check_losses(losses)
  _check_chunk(chunk_size)
  eye = jnp.eye(losses.shape[0], dtype=losses.dtype)
  jac = _map_rows(lambda e: vjp_fn(e)[0], eye, chunk_size)
  return losses, jac, aux
