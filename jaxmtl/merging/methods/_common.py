"""Shared plumbing for the data-free merging methods: validation, flattening, re-assembly.

Two representations of a merging problem:

* :class:`Flat` (:func:`flatten`): the validated leaves, nothing computed. The fast methods hand
  each merged leaf's ``T + 1`` arrays to a small jitted per-leaf kernel
  (:mod:`jaxmtl.merging.methods._fused`) that forms the task vectors ``theta_t - theta_0`` inside
  its fusion, so no ``[T, *s]`` stack is ever materialised.
* :class:`Prepared` (:func:`prepare`): additionally stacks the task vectors of every merged leaf
  ``[T, *s]`` in the compute dtype (float32 for bf16/f16/f32 leaves), for the methods that need
  the stack (SVD merges, per-row sorts). The stack is built by subtracting first
  (``stack([theta_t - theta_0 for t])``): XLA:CPU ran the broadcast form
  ``stack(theta_t) - theta_0[None]`` about 45x slower.

Both add a merged task vector ``[*s]`` back onto the pretrained leaf, casting to the pretrained
leaf's dtype; excluded leaves (``exclude`` path regexes, non-float leaves) come back from the
pretrained model unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# Imported by name: the package re-exports the *function* `task_vectors`, which shadows the
# submodule attribute `jaxmtl.merging.task_vectors` once the package is initialised.
from jaxmtl.merging.task_vectors import (Exclude, check_compatible, compute_dtype, excluded_mask,
                                         leaf_paths, path_str)

PyTree = Any


@dataclasses.dataclass
class Prepared:
  """A flattened merging problem.

  Attributes:
    treedef: structure of the pretrained pytree.
    paths: leaf path strings (``"encoder/layers_0/kernel"``).
    pre: pretrained leaves, original dtypes.
    excluded: per leaf, True where the leaf is not merged.
    stacks: per leaf, the task vectors stacked ``[T, *s]`` in the compute dtype, or None for
      excluded leaves.
    num_tasks: ``T``.
  """
  treedef: Any
  paths: list[str]
  pre: list[jax.Array]
  excluded: list[bool]
  stacks: list[jax.Array | None]
  num_tasks: int

  @property
  def merged_indices(self) -> list[int]:
    return [i for i, e in enumerate(self.excluded) if not e]


@dataclasses.dataclass
class Flat:
  """A validated, flattened merging problem (nothing computed yet).

  Attributes:
    treedef: structure of the pretrained pytree.
    paths: leaf path strings.
    pre: pretrained leaves, original dtypes.
    others: ``others[t][i]``: leaf ``i`` of finetuned model ``t`` (or of task vector ``t`` when
      ``is_tv``), original dtypes.
    excluded: per leaf, True where the leaf is not merged.
    is_tv: True when ``others`` are task vectors ``theta_t - theta_0`` rather than models.
  """
  treedef: Any
  paths: list[str]
  pre: list[jax.Array]
  others: list[list[jax.Array]]
  excluded: list[bool]
  is_tv: bool

  @property
  def num_tasks(self) -> int:
    return len(self.others)

  @property
  def merged_indices(self) -> list[int]:
    return [i for i, e in enumerate(self.excluded) if not e]

  def leaf_others(self, i: int) -> list[jax.Array]:
    """The ``T`` finetuned (or task-vector) arrays of leaf ``i``."""
    return [o[i] for o in self.others]

  def unflatten(self, leaves: Sequence[Any]) -> PyTree:
    return jax.tree_util.tree_unflatten(self.treedef, list(leaves))


def flatten(pretrained: PyTree, finetuned: Sequence[PyTree] | None,
            task_vectors: Sequence[PyTree] | None, exclude: Exclude, method: str) -> Flat:
  """Validates inputs and flattens them (see :class:`Flat`).

  Exactly one of ``finetuned`` (models ``theta_t``) and ``task_vectors`` (``theta_t - theta_0``)
  must be given; both are sequences of ``T >= 1`` pytrees shaped like ``pretrained``.
  """
  if (finetuned is None) == (task_vectors is None):
    raise ValueError(f"{method}: pass exactly one of `finetuned` (models) and `task_vectors=`")
  others = finetuned if finetuned is not None else task_vectors
  is_tv = finetuned is None
  if is_tv:
    _check_task_vectors(pretrained, others)
  else:
    check_compatible(pretrained, others, what="finetuned")
  pre, treedef = jax.tree_util.tree_flatten(pretrained)
  return Flat(treedef, leaf_paths(pretrained), list(pre),
              [jax.tree_util.tree_leaves(o) for o in others],
              excluded_mask(pretrained, exclude), is_tv)


def task_vector_leaf(a: jax.Array, o: jax.Array, is_tv: bool) -> jax.Array:
  """``theta_t - theta_0`` (or the given task vector) of one leaf in the compute dtype."""
  dt = compute_dtype(jnp.result_type(a))
  return jnp.asarray(o, dt) if is_tv else jnp.asarray(o, dt) - jnp.asarray(a, dt)


def prepare(pretrained: PyTree, finetuned: Sequence[PyTree] | None,
            task_vectors: Sequence[PyTree] | None, exclude: Exclude,
            method: str) -> Prepared:
  """Validates inputs and stacks the task vectors of every merged leaf.

  Exactly one of ``finetuned`` (models ``theta_t``) and ``task_vectors`` (``theta_t - theta_0``)
  must be given; both are sequences of ``T >= 1`` pytrees shaped like ``pretrained``.
  """
  flat = flatten(pretrained, finetuned, task_vectors, exclude, method)
  stacks: list[jax.Array | None] = []
  for i, (a, e) in enumerate(zip(flat.pre, flat.excluded)):
    # subtract per task, then stack (the broadcast subtraction of a stack is ~45x slower).
    stacks.append(None if e else jnp.stack([task_vector_leaf(a, o, flat.is_tv)
                                            for o in flat.leaf_others(i)]))
  return Prepared(flat.treedef, flat.paths, flat.pre, flat.excluded, stacks, flat.num_tasks)


def _check_task_vectors(pretrained: PyTree, tvs: Sequence[PyTree]) -> None:
  if isinstance(tvs, (str, bytes)) or not isinstance(tvs, Sequence):
    raise TypeError(f"task_vectors must be a sequence of pytrees, got {type(tvs).__name__}")
  if len(tvs) == 0:
    raise ValueError("task_vectors must hold at least one task vector, got an empty sequence")
  ref, ref_def = jax.tree_util.tree_flatten_with_path(pretrained)
  for i, tv in enumerate(tvs):
    got, got_def = jax.tree_util.tree_flatten_with_path(tv)
    if got_def != ref_def:
      raise ValueError(f"task_vectors[{i}] has tree structure {got_def}, pretrained has "
                       f"{ref_def}")
    for (p, a), (_, b) in zip(ref, got):
      if jnp.shape(a) != jnp.shape(b):
        raise ValueError(f"leaf {path_str(p)!r}: pretrained has shape {jnp.shape(a)} but "
                         f"task_vectors[{i}] has shape {jnp.shape(b)}")


def finish(prep: Prepared, deltas: Sequence[jax.Array | None],
           scaling: float | jax.Array = 1.0) -> PyTree:
  """``theta_0 + scaling * delta`` per merged leaf, cast to the pretrained dtypes."""
  out = []
  for a, e, d in zip(prep.pre, prep.excluded, deltas):
    if e or d is None:
      out.append(a)
    else:
      dt = compute_dtype(a.dtype)
      out.append((jnp.asarray(a, dt) + scaling * d.astype(dt)).astype(a.dtype))
  return jax.tree_util.tree_unflatten(prep.treedef, out)


def map_merged(prep: Prepared, fn: Callable[[jax.Array], jax.Array]) -> list[jax.Array | None]:
  """Applies ``fn([T, *s]) -> [*s]`` to every merged leaf's stack."""
  return [None if s is None else fn(s) for s in prep.stacks]


def check_choice(method: str, name: str, value: Any, valid: Sequence[Any]) -> None:
  if value not in valid:
    raise ValueError(f"{method}: {name}={value!r} is not valid; choose one of {list(valid)}")


def check_fraction(method: str, name: str, value: float, *, low_open: bool = False,
                   high_open: bool = False) -> None:
  try:
    v = float(value)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{method}: {name} must be a number, got {value!r}") from e
  lo_ok = v > 0 if low_open else v >= 0
  hi_ok = v < 1 if high_open else v <= 1
  if not (lo_ok and hi_ok):
    lo = "(0" if low_open else "[0"
    hi = "1)" if high_open else "1]"
    raise ValueError(f"{method}: {name}={value!r} must lie in {lo}, {hi}")


def rows(x: jax.Array) -> jax.Array:
  """``[*s]`` -> ``[R, n]``: rows along the last axis (a 0-/1-D leaf is one row)."""
  if x.ndim <= 1:
    return x.reshape(1, -1)
  return x.reshape(-1, x.shape[-1])


def freeze(value: Any) -> Any:
  """Makes an option hashable for ``jax.jit`` static arguments (lists -> tuples, dicts ->
  sorted item tuples)."""
  if isinstance(value, dict):
    return tuple(sorted((k, freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(freeze(v) for v in value)
  return value


def jit_static(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """``jax.jit`` with the given keyword options static: one compiled program per method and
  option set (also fine inside an outer ``jax.jit``)."""
  return functools.partial(jax.jit, static_argnames=names + ("exclude",))
