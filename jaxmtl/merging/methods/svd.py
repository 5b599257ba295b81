"""SVD-based merges on matrix leaves: TSV-M, Iso-C, Iso-CTS.

* TSV-M: Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging",
  arXiv 2412.00081. Reference: AntoAndGar/task_singular_vectors and FusionBench
  ``task_singular_vector/utils/TSVM_utils.compute_and_sum_svd_mem_reduction``.
* Iso-C / Iso-CTS: Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
  Task-Specific Subspaces", arXiv 2502.04959. Reference: danielm1405/iso-merging, reproduced in
  FusionBench ``isotropic_merging/iso_utils.py``.

As in the references, only 2-D leaves ``[m, n]`` are merged through SVDs; every other leaf
(biases, norms, conv kernels of rank 4, ...) and every 2-D leaf matched by ``svd_exclude`` (the
references' ``exclude_keys``, e.g. embeddings) is merged by the *mean* of the task vectors.
All SVDs are thin (``full_matrices=False``) and run in float32 or wider; results do not depend
on the SVD's sign conventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxmtl.merging.methods import _common
from jaxmtl.merging.task_vectors import Exclude, _compile_exclude

PyTree = Any

__all__ = ["tsv", "iso_c", "iso_cts"]


def _svd_leaves(prep: _common.Prepared, svd_exclude: Exclude) -> list[bool]:
  pats = _compile_exclude(svd_exclude)
  return [s is not None and s.ndim == 3 and not any(p.fullmatch(path) for p in pats)
          for s, path in zip(prep.stacks, prep.paths)]


def _polar(a: jax.Array) -> jax.Array:
  """``U @ Vh`` from the thin SVD of ``a`` (the references' orthogonalisation)."""
  u, _, vh = jnp.linalg.svd(a, full_matrices=False)
  return u @ vh


def _tsv_matrix(s: jax.Array) -> jax.Array:
  t = s.shape[0]
  u, sv, vh = jnp.linalg.svd(s, full_matrices=False)   # [T,m,k], [T,k], [T,k,n]
  k = sv.shape[-1]
  r = int(k * (1 / t))                                   # reference: int(s.shape[0] * sv_reduction)
  if r == 0:
    return jnp.zeros(s.shape[1:], s.dtype)
  # The reference zero-pads U [m, k], s [k], Vh [k, n] when T * r < k; the padded columns meet
  # zero singular values, so orthogonalising only the T * r used columns gives the same matrix
  # and avoids the ill-conditioned SVD of a rank-deficient matrix.
  cat_u = jnp.concatenate([u[i, :, :r] for i in range(t)], axis=1)      # [m, T r]
  cat_s = jnp.concatenate([sv[i, :r] for i in range(t)])                 # [T r]
  cat_vh = jnp.concatenate([vh[i, :r, :] for i in range(t)], axis=0)    # [T r, n]
  return (_polar(cat_u) * cat_s) @ _polar(cat_vh)


def tsv(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
        task_vectors: Sequence[PyTree] | None = None, scaling: float | jax.Array = 1.0,
        svd_exclude: Exclude = None, exclude: Exclude = None) -> PyTree:
  """TSV-M: Task Singular Vectors Merging.

  Per 2-D leaf ``[m, n]`` with ``k = min(m, n)``: take each task's top ``r = int(k / T)``
  singular triplets, concatenate them into ``U [m, k]``, ``s [k]``, ``Vh [k, n]`` (unused slots
  zero), orthogonalise ``U`` and ``Vh`` by their polar factors (``U_u Vh_u`` from their own SVDs)
  and return ``theta_0 + scaling * U' diag(s) Vh'``. Other leaves: mean of task vectors.

  Args:
    scaling: the reference's ``alpha`` (default 1).
    svd_exclude: path regex(es) of 2-D leaves averaged instead (reference ``exclude_keys``).
  """
  return _tsv(pretrained, finetuned, task_vectors, scaling,
               svd_exclude=_common.freeze(svd_exclude), exclude=_common.freeze(exclude))


@_common.jit_static("svd_exclude")
def _tsv(pretrained, finetuned, task_vectors, scaling, *, svd_exclude, exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "tsv")
  use_svd = _svd_leaves(prep, svd_exclude)
  deltas = [None if s is None else (_tsv_matrix(s) if sv else jnp.mean(s, 0))
            for s, sv in zip(prep.stacks, use_svd)]
  return _common.finish(prep, deltas, scaling)


def _iso_c_matrix(s: jax.Array) -> jax.Array:
  u, sv, vh = jnp.linalg.svd(jnp.sum(s, 0), full_matrices=False)
  return (u * jnp.mean(sv)) @ vh


def iso_c(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
          task_vectors: Sequence[PyTree] | None = None, scaling: float | jax.Array = 1.0,
          svd_exclude: Exclude = None, exclude: Exclude = None) -> PyTree:
  """Iso-C: isotropic merging in the common subspace.

  Per 2-D leaf: ``M = sum_t tau_t = U diag(s) Vh``; the merged vector is
  ``U diag(mean(s)) Vh`` (flattened spectrum). Other leaves: mean of task vectors.
  ``scaling`` is the reference's ``alpha``/``scaling_factor`` (FusionBench default 1.0; the
  paper tunes it on validation data).
  """
  return _iso_c(pretrained, finetuned, task_vectors, scaling,
               svd_exclude=_common.freeze(svd_exclude), exclude=_common.freeze(exclude))


@_common.jit_static("svd_exclude")
def _iso_c(pretrained, finetuned, task_vectors, scaling, *, svd_exclude, exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "iso_c")
  use_svd = _svd_leaves(prep, svd_exclude)
  deltas = [None if s is None else (_iso_c_matrix(s) if sv else jnp.mean(s, 0))
            for s, sv in zip(prep.stacks, use_svd)]
  return _common.finish(prep, deltas, scaling)


def _iso_cts_matrix(s: jax.Array, common_space_fraction: float) -> jax.Array:
  t, m, n = s.shape
  k = min(m, n)
  c = int(k * common_space_fraction)
  c = k - round((k - c) / t) * t                          # task-specific part divisible by T
  per_task = int((k - c) / t)
  u, sv, vh = jnp.linalg.svd(jnp.sum(s, 0), full_matrices=False)
  cu, cs, cvh = u[:, :c], sv[:c], vh[:c, :]
  us, ss, vhs = [], [], []
  for i in range(t):
    w_ts = s[i] - cu @ (cu.T @ s[i])
    ut, st, vht = jnp.linalg.svd(w_ts, full_matrices=False)
    us.append(ut[:, :per_task])
    ss.append(st[:per_task])
    vhs.append(vht[:per_task, :])
  used = t * per_task + c
  comb_u = jnp.concatenate(us + [cu, jnp.zeros((m, k - used), s.dtype)], axis=1)
  comb_s = jnp.concatenate(ss + [cs, jnp.zeros((k - used,), s.dtype)])
  comb_vh = jnp.concatenate(vhs + [cvh, jnp.zeros((k - used, n), s.dtype)], axis=0)
  iso = jnp.mean(comb_s)
  return (_polar(comb_u) * iso) @ _polar(comb_vh)


def iso_cts(pretrained: PyTree, finetuned: Sequence[PyTree] | None = None, *,
            task_vectors: Sequence[PyTree] | None = None, common_space_fraction: float = 0.8,
            scaling: float | jax.Array = 1.0, svd_exclude: Exclude = None,
            exclude: Exclude = None) -> PyTree:
  """Iso-CTS: isotropic merging in common and task-specific subspaces.

  Per 2-D leaf ``[m, n]``, ``k = min(m, n)``: the top ``c`` singular directions of
  ``sum_t tau_t`` form the common space, with ``c = k - round((k - int(k * fraction)) / T) * T``;
  each task contributes the top ``(k - c) / T`` directions of its component orthogonal to the
  common left space; the concatenated ``U`` / ``Vh`` are orthogonalised by polar factors and
  all singular values replaced by their mean. Other leaves: mean of task vectors.

  Args:
    common_space_fraction: reference default 0.8, in [0, 1].
    scaling: reference ``alpha``/``scaling_factor`` (FusionBench default 1.0).
  """
  _common.check_fraction("iso_cts", "common_space_fraction", common_space_fraction)
  return _iso_cts(pretrained, finetuned, task_vectors, scaling,
                  common_space_fraction=float(common_space_fraction),
                  svd_exclude=_common.freeze(svd_exclude), exclude=_common.freeze(exclude))


@_common.jit_static("common_space_fraction", "svd_exclude")
def _iso_cts(pretrained, finetuned, task_vectors, scaling, *, common_space_fraction, svd_exclude,
             exclude):
  prep = _common.prepare(pretrained, finetuned, task_vectors, exclude, "iso_cts")
  use_svd = _svd_leaves(prep, svd_exclude)
  deltas = [None if s is None else
            (_iso_cts_matrix(s, common_space_fraction) if sv else jnp.mean(s, 0))
            for s, sv in zip(prep.stacks, use_svd)]
  return _common.finish(prep, deltas, scaling)
