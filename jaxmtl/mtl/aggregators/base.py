"""Shared machinery of the gradient aggregators: Gramians, combination, the base class.

A Jacobian is either a ``[tasks, params]`` matrix or any pytree whose leaves carry a leading task
axis ``[tasks, ...]`` (e.g. the per-task gradients of an NNX ``State``). Nothing here flattens or
concatenates the pytree: the Gramian is a sum of per-leaf ``[tasks, tasks]`` products and the
update is a per-leaf weighted sum over the task axis.

The weighting conventions follow torchjd (https://github.com/TorchJD/torchjd, v0.18.0): a
Gramian-based aggregator maps ``G = J J^T`` (``[tasks, tasks]``) to weights ``w`` (``[tasks]``)
and returns ``J^T w``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

__all__ = [
    "Aggregator", "gramian", "combine", "num_tasks", "normalize_gramian",
    "regularize_gramian", "check_pref_vector", "sum_tasks", "weighted_sum",
]


def num_tasks(jacobian: PyTree) -> int:
  """Size of the leading task axis shared by every leaf of ``jacobian``."""
  leaves_with_path = jax.tree_util.tree_leaves_with_path(jacobian)
  if not leaves_with_path:
    raise ValueError("jacobian has no array leaves; expected [tasks, ...] leaves.")
  sizes = {}
  for path, leaf in leaves_with_path:
    if jnp.ndim(leaf) < 1:
      raise ValueError(
          f"jacobian leaf {jax.tree_util.keystr(path)} is a scalar; every leaf needs a leading "
          "task axis [tasks, ...].")
    sizes[jax.tree_util.keystr(path)] = jnp.shape(leaf)[0]
  if len(set(sizes.values())) != 1:
    raise ValueError(f"jacobian leaves disagree on the number of tasks (leading axis): {sizes}.")
  return next(iter(sizes.values()))


def _acc_dtype(jacobian: PyTree) -> jnp.dtype:
  dtypes = [jnp.result_type(leaf) for leaf in jax.tree_util.tree_leaves(jacobian)]
  return jnp.promote_types(jnp.result_type(*dtypes), jnp.float32)


_GRAM_CHUNK = 1 << 15  # columns per block in `gramian` (measured best of 2^12..2^17 on CPU)


def _column_chunk(k: int) -> int | None:
  """The largest power of two <= 2^15 dividing ``k`` (at least 2^12, and ``k >= 2`` chunks)."""
  c = _GRAM_CHUNK
  while c >= 1 << 12:
    if k % c == 0 and k >= 2 * c:
      return c
    c //= 2
  return None


_PAIRWISE_MAX_TASKS = 4   # up to here the pairwise reduce beats the blocked dot (T=3: 1.9 vs 4.8 ms)
_ROWS_MAX_TASKS = 16      # ... and up to here when the rows are separate buffers (`rows=True`)
_PAIR_BLOCK = 4           # tasks per block of the pairwise reduces
_PAIR_GROUP = 16          # entries per group of the pairwise reduce


def _pair_sums(ra: list, rb: list, same: bool, acc: jnp.dtype) -> dict:
  """``{(i, j): <ra[i], rb[j]>}`` (``j >= i`` when ``same``) as one variadic reduce of the
  products over groups of 16 consecutive entries, then a sum of the group sums."""
  pairs = [(i, j) for i in range(len(ra)) for j in (range(i, len(rb)) if same else
                                                    range(len(rb)))]
  k = ra[0].shape[0]
  g = _PAIR_GROUP if k % _PAIR_GROUP == 0 else 1
  ops = tuple((ra[i] * rb[j]).reshape(-1, g) for i, j in pairs)
  red = jax.lax.reduce(ops, tuple(jnp.zeros((), acc) for _ in ops),
                       lambda xs, ys: tuple(x + y for x, y in zip(xs, ys)), (1,))
  return {p: jnp.sum(r) for p, r in zip(pairs, red)}


def _pairwise_gramian(m: jax.Array, acc: jnp.dtype) -> jax.Array:
  """``m m^T`` (``m`` ``[T, ...]``, ``T <= 16``) from the rows ``m[i]``, never from a stacked
  ``[T, k]`` operand: inside a train step the rows are the T backward passes' outputs, and
  XLA:CPU stacks them slowly (10 rows of a 3.4M-parameter MLP: 60-70 ms with the blocked dot
  below, against 28 ms here; 3 rows: 11 vs 1.6 ms). Tasks go in blocks of 4; each pair of
  blocks is one variadic reduce of its ``r_i * r_j`` products (XLA fuses the products into the
  reduce and runs it near the read bandwidth; wider reduces spill registers: 55 products in
  one reduce ran slower than the stacked dot).
  """
  t = m.shape[0]
  rows = [m[i].reshape(-1).astype(acc) for i in range(t)]
  blocks = [list(range(b, min(t, b + _PAIR_BLOCK))) for b in range(0, t, _PAIR_BLOCK)]
  val = {}
  for a, ba in enumerate(blocks):
    for bb in blocks[a:]:
      sums = _pair_sums([rows[i] for i in ba], [rows[j] for j in bb], ba is bb, acc)
      val.update({(ba[i], bb[j]): v for (i, j), v in sums.items()})
  return jnp.stack([jnp.stack([val[(min(i, j), max(i, j))] for j in range(t)])
                    for i in range(t)])


def _leaf_gramian(m: jax.Array, acc: jnp.dtype, rows: bool = False) -> jax.Array:
  """``m m^T`` for ``m`` ``[tasks, ...]`` (viewed as ``[tasks, k]``), accumulated in ``acc``.

  On leaves of at least 4096 entries, up to 4 tasks (16 with ``rows``):
  :func:`_pairwise_gramian`.

  Otherwise large leaves are summed over column blocks in a ``fori_loop``: XLA:CPU ran one
  ``[10, 2^20] x [2^20, 10]`` dot ~10x slower than 32 blocks of 2^15 columns (200 ms vs
  15-30 ms), and the loop keeps the program small for any number of blocks.
  """
  dot = lambda a: jnp.matmul(a, a.T, preferred_element_type=acc,
                             precision=jax.lax.Precision.HIGHEST)
  t, k = m.shape[0], int(np.prod(m.shape[1:]))
  if t <= (_ROWS_MAX_TASKS if rows else _PAIRWISE_MAX_TASKS) and k >= 1 << 12:
    return _pairwise_gramian(m, acc)
  m = m.reshape(t, k)
  c = _column_chunk(k)
  if c is None:
    return dot(m)
  blocks = m.reshape(t, k // c, c)
  body = lambda i, g: g + dot(jax.lax.dynamic_index_in_dim(blocks, i, axis=1, keepdims=False))
  return jax.lax.fori_loop(0, k // c, body, jnp.zeros((t, t), acc))


def gramian(jacobian: PyTree, *, rows: bool = False) -> jax.Array:
  """Gramian ``G = J J^T`` of a Jacobian, ``[tasks, tasks]``.

  Computed leaf by leaf (``sum_leaf L L^T`` with each leaf viewed as ``[tasks, -1]``, large
  leaves in column blocks), accumulated in at least float32 at HIGHEST matmul precision — no
  flattened copy of the Jacobian is built. ``rows=True`` says that the leaves are stacks of
  separately computed rows inside a jitted program (the unrolled per-task backward passes):
  then up to 16 tasks are reduced from the rows, so that the stack is never built. On a
  Jacobian that already is one array per leaf (``vmap``, or passed in) the blocked dot is
  faster above 4 tasks (``[10, 3.4M]``: 18 vs 28 ms on CPU).
  """
  num_tasks(jacobian)
  acc = _acc_dtype(jacobian)
  out = None
  for leaf in jax.tree_util.tree_leaves(jacobian):
    g = _leaf_gramian(leaf, acc, rows)
    out = g if out is None else out + g
  return 0.5 * (out + out.T)


def sum_tasks(x: jax.Array) -> jax.Array:
  """``sum_t x[t]`` over the leading task axis of ``x`` (``[tasks, ...] -> [...]``).

  Written as an unrolled chain of additions (one fused element-wise loop), not ``x.sum(0)``:
  XLA:CPU reduced a ``[3, 1M]`` array over its leading axis ~100x slower than this (66 ms vs
  0.7 ms, tools/bench_mtl.py's machine). Above 64 tasks a contraction with ones is used.
  """
  n = x.shape[0]
  if n > 64:
    return jnp.tensordot(jnp.ones((n,), x.dtype), x, axes=1)
  out = x[0]
  for t in range(1, n):
    out = out + x[t]
  return out


def combine(jacobian: PyTree, weights: jax.Array) -> PyTree:
  """Update ``J^T w``: each leaf ``[tasks, ...]`` becomes ``sum_t w_t leaf[t]`` (``[...]``).

  Accumulates in at least float32 and returns each leaf in its own dtype.
  """
  def one(leaf):
    acc = jnp.promote_types(leaf.dtype, jnp.float32)
    w = weights.astype(acc)
    if leaf.shape[0] > 64:
      return jnp.tensordot(w, leaf.astype(acc), axes=(0, 0)).astype(leaf.dtype)
    # Up to 64 tasks an unrolled sum of scaled rows: one fused loop that, inside the train
    # step, reads the T backward passes' outputs where they are. The tensordot over the leading
    # axis needs them stacked first: on XLA:CPU 1.8x slower at 3 tasks (3.4M parameters: 3.1 vs
    # 1.7 ms), and `mean@full` at 10 tasks 7.2x a gradient step against 5.6x (tools/bench_mtl.py).
    return weighted_sum([leaf[t].astype(acc) for t in range(leaf.shape[0])], w).astype(
        leaf.dtype)
  return jax.tree_util.tree_map(one, jacobian)


def weighted_sum(rows, weights: jax.Array) -> jax.Array:
  """``sum_t weights[t] * rows[t]`` over a list of equal-shaped arrays, as an unrolled chain
  (one fused loop that reads each row where it lies; see :func:`combine`)."""
  out = weights[0] * rows[0]
  for t in range(1, len(rows)):
    out = out + weights[t] * rows[t]
  return out


def normalize_gramian(g: jax.Array, eps: float) -> jax.Array:
  """``G / trace(G)``, or zeros where ``trace(G) < eps`` (torchjd ``_linalg.normalize``)."""
  tr = jnp.trace(g)
  return jnp.where(tr < eps, jnp.zeros_like(g), g / jnp.where(tr < eps, 1.0, tr))


def regularize_gramian(g: jax.Array, eps: float) -> jax.Array:
  """``G + eps I`` (torchjd ``_linalg.regularize``)."""
  return g + eps * jnp.eye(g.shape[0], dtype=g.dtype)


def check_pref_vector(pref_vector: Any, name: str = "pref_vector") -> tuple[float, ...] | None:
  """Validates a preference vector option and returns it as a hashable tuple (or None)."""
  if pref_vector is None:
    return None
  try:
    arr = np.asarray(pref_vector, dtype=np.float64)
    values = tuple(float(v) for v in arr.ravel())
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be a 1-D sequence of floats or None, got {pref_vector!r}.") from e
  if arr.ndim != 1 or not values:
    raise ValueError(f"{name} must be a non-empty 1-D vector, got {pref_vector!r}.")
  return values


def pref_weights(pref: tuple[float, ...] | None, n: int, dtype: jnp.dtype) -> jax.Array:
  """The preference weights ``[tasks]``: ``pref`` or the mean ``1/tasks`` (torchjd default)."""
  if pref is None:
    return jnp.full((n,), 1.0 / n, dtype)
  if len(pref) != n:
    raise ValueError(f"pref_vector has {len(pref)} entries but the Jacobian has {n} tasks.")
  return jnp.asarray(pref, dtype)


def _check_gramian(g: jax.Array) -> jax.Array:
  g = jnp.asarray(g)
  if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
    raise ValueError(f"gramian must be a non-empty square [tasks, tasks] matrix, got {g.shape}.")
  if not jnp.issubdtype(g.dtype, jnp.floating):
    g = g.astype(jnp.float32)
  return g


@dataclasses.dataclass(frozen=True)
class Aggregator:
  """Base class: Gramian weighting + ``J^T w`` combination.

  Subclasses implement `_weights` (``[tasks, tasks] -> [tasks]``) as light glue around jitted
  kernels whose numerical options are traced, so eager calls compile each kernel once per shape
  and dtype; under an outer `jax.jit` everything is inlined. Stateless aggregators return
  ``None`` as state. Instances are hashable (all options are static) so they can be closed over
  or passed as static arguments to `jax.jit`.
  """

  needs_key = False  # class attribute (not a field)
  stateful = False

  def init(self, num_tasks: int) -> Any:  # pylint: disable=unused-argument
    """Initial state (``None`` for stateless aggregators)."""
    return None

  def _weights(self, g, state, key):  # pragma: no cover - abstract
    raise NotImplementedError

  def weights(self, gramian: jax.Array, *, state: Any = None,
              key: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """Task weights ``[tasks]`` from a Gramian ``[tasks, tasks]``: ``(weights, new_state)``."""
    g = _check_gramian(gramian)
    if self.needs_key and key is None:
      raise ValueError(f"{type(self).__name__} is randomised: pass key=jax.random.key(...).")
    if self.stateful and state is None:
      state = self.init(g.shape[0])
    w, new_state = self._weights(jax.lax.stop_gradient(g), state, key)
    return jax.lax.stop_gradient(w), new_state

  def __call__(self, jacobian: PyTree, *, state: Any = None, key: jax.Array | None = None,
               rows: bool = False) -> tuple[PyTree, jax.Array | None, Any]:
    """Aggregates ``jacobian`` (``[tasks, params]`` or pytree of ``[tasks, ...]``).

    ``rows``: as in :func:`gramian`. Returns ``(update, weights, new_state)``; ``update`` has
    the shape of one task's gradient.
    """
    g = gramian(jacobian, rows=rows)
    w, new_state = self.weights(g, state=state, key=key)
    return combine(jacobian, w), w, new_state
