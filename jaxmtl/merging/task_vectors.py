"""Task vectors over arbitrary pytrees: compute, add, scale, apply.

A task vector is ``tau_t = theta_t - theta_0``, the element-wise difference between a finetuned
model and the pretrained model it started from (Ilharco et al., "Editing Models with Task
Arithmetic", arXiv 2212.04089; reference implementation ``mlfoundations/task_vectors``).

Every function here works on any pytree (nested dicts, lists, Flax NNX ``State``, ...).

Conventions shared by all of ``jaxmtl.merging``:

* **Leaf paths.** A leaf's path is rendered by :func:`path_str` as ``"encoder/layers_0/kernel"``
  (dict keys, attribute names and sequence indices joined by ``/``; the trailing ``value``
  attribute that wraps every Flax NNX ``Variable`` is dropped).
* **Exclusion.** ``exclude`` is a regex or a sequence of regexes matched with ``re.fullmatch``
  against the path string (so ``r".*head.*"`` matches any path containing ``head``). Excluded
  leaves are *not merged*: every merging method returns them from the **pretrained** model
  unchanged, and :func:`task_vectors` returns zeros for them. Leaves whose dtype is not
  floating point (step counters, integer buffers) are always treated as excluded.
* **Precision.** Low-precision leaves (bf16, f16) are promoted to float32 for the arithmetic;
  results are cast back to the pretrained leaf's dtype. Task vectors themselves are returned in
  the promoted dtype (float32 for bf16/f16/f32 inputs, float64 for float64 inputs), so no
  precision is lost between computing and applying them.
* **Validation.** Pretrained and finetuned trees must have the same structure, and each leaf the
  same shape and dtype; otherwise a ``ValueError`` names the model index, the leaf path and both
  shapes/dtypes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Exclude = str | Sequence[str] | None

__all__ = [
  "path_str",
  "leaf_paths",
  "excluded_mask",
  "compute_dtype",
  "check_compatible",
  "task_vectors",
  "add_task_vectors",
  "scale_task_vector",
  "apply_task_vector",
]


def _key_str(k: Any) -> str:
  if isinstance(k, jax.tree_util.DictKey):
    return str(k.key)
  if isinstance(k, jax.tree_util.GetAttrKey):
    return str(k.name)
  if isinstance(k, jax.tree_util.SequenceKey):
    return str(k.idx)
  if isinstance(k, jax.tree_util.FlattenedIndexKey):
    return str(k.key)
  return str(k)


def path_str(path: Sequence[Any]) -> str:
  """Renders a ``jax.tree_util`` key path as ``"encoder/layers_0/kernel"``.

  A trailing attribute key named ``value`` (Flax NNX ``Variable`` wrappers) is dropped, so an
  NNX ``State`` and the equivalent nested dict give the same path strings.
  """
  keys = list(path)
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name in (
      "value", "raw_value"):
    keys = keys[:-1]
  return "/".join(_key_str(k) for k in keys)


def leaf_paths(tree: PyTree) -> list[str]:
  """Path strings of ``tree``'s leaves, in ``jax.tree_util.tree_leaves`` order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _compile_exclude(exclude: Exclude) -> list[re.Pattern[str]]:
  if exclude is None:
    return []
  pats = [exclude] if isinstance(exclude, str) else list(exclude)
  out = []
  for p in pats:
    if not isinstance(p, str):
      raise TypeError(f"exclude must be a regex string or a sequence of them, got {p!r}")
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"exclude pattern {p!r} is not a valid regex: {e}") from e
  return out


def excluded_mask(tree: PyTree, exclude: Exclude = None) -> list[bool]:
  """Per leaf (``tree_leaves`` order): True where the leaf is kept out of merging.

  A leaf is excluded when any pattern in ``exclude`` ``re.fullmatch``-es its :func:`path_str`,
  or when its dtype is not floating point.
  """
  pats = _compile_exclude(exclude)
  out = []
  for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    s = path_str(p)
    not_float = not jnp.issubdtype(_shape_dtype(leaf)[1], jnp.inexact)
    out.append(not_float or any(pat.fullmatch(s) for pat in pats))
  return out


def compute_dtype(dtype: Any) -> np.dtype:
  """The dtype arithmetic on a leaf of ``dtype`` runs in: at least float32."""
  return np.dtype(jnp.promote_types(dtype, jnp.float32))


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
  if hasattr(x, "shape") and hasattr(x, "dtype"):   # arrays: no jnp.result_type (~30 us each)
    return tuple(x.shape), np.dtype(x.dtype)
  return tuple(np.shape(x)), np.dtype(jnp.result_type(x))


def check_compatible(pretrained: PyTree, others: Sequence[PyTree], what: str = "finetuned") -> None:
  """Raises ValueError unless every tree in ``others`` matches ``pretrained``.

  Structure, leaf shapes and leaf dtypes must match; the error names the model index
  (``finetuned[i]``), the leaf path and both shapes/dtypes.
  """
  if isinstance(others, (str, bytes)) or not isinstance(others, Sequence):
    raise TypeError(f"{what} must be a sequence of pytrees, got {type(others).__name__}")
  if len(others) == 0:
    raise ValueError(f"{what} must hold at least one model, got an empty sequence")
  ref, ref_def = jax.tree_util.tree_flatten_with_path(pretrained)
  ref_paths = [path_str(p) for p, _ in ref]
  for i, tree in enumerate(others):
    got, got_def = jax.tree_util.tree_flatten_with_path(tree)
    if got_def != ref_def:
      got_paths = [path_str(p) for p, _ in got]
      missing = [p for p in ref_paths if p not in set(got_paths)]
      extra = [p for p in got_paths if p not in set(ref_paths)]
      raise ValueError(
        f"{what}[{i}] has a different tree structure from pretrained: "
        f"paths missing in {what}[{i}]: {missing[:5]}, extra paths: {extra[:5]} "
        f"(pretrained structure {ref_def}, {what}[{i}] structure {got_def})")
    for (p, a), (_, b) in zip(ref, got):
      sa, da = _shape_dtype(a)
      sb, db = _shape_dtype(b)
      if sa != sb or da != db:
        raise ValueError(
          f"leaf {path_str(p)!r}: pretrained has shape {sa} dtype {da} but {what}[{i}] has "
          f"shape {sb} dtype {db}")


def task_vectors(pretrained: PyTree, finetuned: Sequence[PyTree], *,
                 exclude: Exclude = None) -> list[PyTree]:
  """Task vectors ``tau_t = theta_t - theta_0`` for each finetuned model.

  Args:
    pretrained: pytree ``theta_0``; each leaf any shape ``[*s]``.
    finetuned: sequence of ``T`` pytrees with the same structure, shapes and dtypes.
    exclude: path regex(es) of leaves kept out of merging (their task vectors are zero).

  Returns:
    list of ``T`` pytrees with ``pretrained``'s structure; each leaf ``[*s]`` in
    :func:`compute_dtype` of the pretrained leaf (float32 for bf16/f16/f32).
  """
  check_compatible(pretrained, finetuned)
  excl = excluded_mask(pretrained, exclude)
  pre_leaves, treedef = jax.tree_util.tree_flatten(pretrained)
  out = []
  for ft in finetuned:
    leaves = []
    for e, a, b in zip(excl, pre_leaves, jax.tree_util.tree_leaves(ft)):
      if e:
        leaves.append(jnp.zeros_like(a))
      else:
        dt = compute_dtype(a.dtype)
        leaves.append(jnp.asarray(b, dt) - jnp.asarray(a, dt))
    out.append(jax.tree_util.tree_unflatten(treedef, leaves))
  return out


def add_task_vectors(tvs: Sequence[PyTree]) -> PyTree:
  """Element-wise sum ``sum_t tau_t`` of task vectors (same structure; leaves ``[*s]``)."""
  if len(tvs) == 0:
    raise ValueError("add_task_vectors needs at least one task vector")
  check_compatible(tvs[0], tvs[1:], what="task_vectors[1:]") if len(tvs) > 1 else None
  return jax.tree_util.tree_map(lambda *xs: sum(xs[1:], xs[0]), *tvs)


def scale_task_vector(tv: PyTree, scale: float | jax.Array) -> PyTree:
  """``scale * tau`` leaf-wise (dtype of each leaf preserved)."""
  return jax.tree_util.tree_map(lambda x: (x * scale).astype(jnp.result_type(x)), tv)


def apply_task_vector(pretrained: PyTree, tv: PyTree, scale: float | jax.Array = 1.0, *,
                      exclude: Exclude = None) -> PyTree:
  """``theta_0 + scale * tau`` with the pretrained structure, shapes and dtypes.

  Arithmetic runs in :func:`compute_dtype` (float32 for bf16) and is cast back to each
  pretrained leaf's dtype. Excluded leaves (``exclude`` regexes, non-float leaves) are returned
  from ``pretrained`` unchanged. ``tv`` must have the same structure and shapes (any float
  dtype).
  """
  pre_leaves, treedef = jax.tree_util.tree_flatten(pretrained)
  tv_leaves, tv_def = jax.tree_util.tree_flatten(tv)
  if tv_def != treedef:
    raise ValueError(f"task vector structure {tv_def} differs from pretrained structure {treedef}")
  excl = excluded_mask(pretrained, exclude)
  paths = leaf_paths(pretrained)
  out = []
  for path, e, a, t in zip(paths, excl, pre_leaves, tv_leaves):
    if np.shape(a) != np.shape(t):
      raise ValueError(f"leaf {path!r}: pretrained has shape {np.shape(a)} but the task vector "
                       f"has shape {np.shape(t)}")
    if e:
      out.append(a)
    else:
      dt = compute_dtype(a.dtype)
      out.append((jnp.asarray(a, dt) + scale * jnp.asarray(t, dt)).astype(a.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)
