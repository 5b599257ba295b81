"""Exact k-th largest value over many arrays without sorting them: streaming radix select.

TIES-Merging's official code (prateeksy/ties-merging; also FusionBench and AdaMerging) trims each
task vector to its top-k magnitudes over *all* parameters at once, computing the threshold with
``torch.kthvalue`` on one flattened vector. Here the same threshold is found exactly with a
radix select over the floats' order-preserving integer keys: one pass per byte of the dtype
(4 passes for float32), each pass visiting the arrays one by one and accumulating a 256-bin
histogram of the next byte among the entries that share the prefix found so far. Memory is
``O(256)`` beyond the current array; no array is ever sorted or concatenated, so the same code
runs over sharded arrays, or over shards streamed from disk (pass a callable that yields them).

The functions are jit-compatible when handed a sequence of arrays (counts are int32 under jit
unless ``jax_enable_x64`` is on, so at most 2**31 - 1 entries in total there; outside jit, larger
totals are counted in int64 on the host).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Leaves = Sequence[jax.Array] | Callable[[], Iterable[jax.Array]]

__all__ = ["global_topk_threshold", "batched_topk_threshold", "count_greater"]

_UINT = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _iterate(leaves: Leaves) -> Iterable[jax.Array]:
  return leaves() if callable(leaves) else leaves


def _ordered_key(x: jax.Array) -> jax.Array:
  """Float ``[*s]`` -> unsigned int ``[*s]`` whose integer order is the float order."""
  u = _UINT[x.dtype.itemsize]
  nbits = 8 * x.dtype.itemsize
  b = jax.lax.bitcast_convert_type(x, u)
  sign = jnp.asarray(1 << (nbits - 1), u)
  # negative floats: flip all bits; non-negative: set the sign bit.
  return jnp.where((b & sign) != 0, ~b, b | sign)


def _from_key(k: jax.Array, dtype: np.dtype) -> jax.Array:
  u = _UINT[np.dtype(dtype).itemsize]
  nbits = 8 * np.dtype(dtype).itemsize
  sign = jnp.asarray(1 << (nbits - 1), u)
  b = jnp.where((k & sign) != 0, k & ~sign, ~k)
  return jax.lax.bitcast_convert_type(b.astype(u), dtype)


def _common_dtype(leaves: Leaves) -> tuple[np.dtype, int, int]:
  dtypes, total, batch = [], 0, None
  for x in _iterate(leaves):
    dtypes.append(np.dtype(jnp.result_type(x)))
    total += int(np.size(x))
    batch = np.shape(x)[0] if np.ndim(x) else 1
  if not dtypes:
    raise ValueError("global_topk_threshold: no arrays given")
  dt = np.dtype(jnp.result_type(*dtypes))
  if not jnp.issubdtype(dt, jnp.floating) or dt.itemsize not in _UINT:
    raise TypeError("global_topk_threshold: needs float16/bfloat16/float32/float64 arrays, "
                    f"got {dt}")
  return dt, total, batch


def global_topk_threshold(leaves: Leaves, k: int | jax.Array) -> jax.Array:
  """The k-th largest entry (1-indexed, duplicates counted) over all entries of ``leaves``.

  Equal to ``jnp.sort(jnp.concatenate([x.ravel() for x in leaves]))[::-1][k - 1]`` but computed
  by a streaming radix select (one pass per byte, leaf by leaf). To select magnitudes pass
  ``[jnp.abs(x) for x in ...]``.

  Args:
    leaves: a sequence of float arrays of any shapes, or a zero-argument callable returning a
      fresh iterable of them (called once per pass, for shards read from disk).
    k: rank, ``1 <= k <= total number of entries``.

  Returns:
    scalar of the arrays' common dtype. NaNs are not supported.
  """
  if callable(leaves):
    batched: Leaves = lambda: (jnp.asarray(x)[None] for x in leaves())
  else:
    batched = [jnp.asarray(x)[None] for x in leaves]
  return batched_topk_threshold(batched, jnp.reshape(jnp.asarray(k), (1,)) if not isinstance(
    k, (int, np.integer)) else int(k))[0]


def batched_topk_threshold(leaves: Leaves, k: int | jax.Array) -> jax.Array:
  """:func:`global_topk_threshold` for ``B`` independent problems at once.

  Args:
    leaves: arrays ``[B, *s_i]`` (or a callable yielding them); problem ``b`` ranks the entries
      ``x[b]`` of every leaf together.
    k: int or ``[B]`` ranks, 1-indexed.

  Returns:
    ``[B]`` thresholds.
  """
  dt, total, b = _common_dtype(leaves)
  per_problem = total // b
  if isinstance(k, (int, np.integer)) and not 1 <= int(k) <= per_problem:
    raise ValueError(f"global_topk_threshold: k={k} must lie in [1, {per_problem}]")
  u = _UINT[dt.itemsize]
  nbits = 8 * dt.itemsize
  host = per_problem >= 2**31 - 1 and not jax.config.jax_enable_x64
  cdt = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
  xp = np if host else jnp
  prefix = jnp.zeros((b,), u)
  k_rem = np.broadcast_to(np.asarray(k, np.int64), (b,)) if host else jnp.broadcast_to(
    jnp.asarray(k, cdt), (b,))
  offsets = (256 * jnp.arange(b, dtype=jnp.int32))[:, None]
  for p in range(dt.itemsize):
    shift = nbits - 8 * (p + 1)
    hist = np.zeros((b, 256), np.int64) if host else jnp.zeros((b, 256), cdt)
    for x in _iterate(leaves):
      key = _ordered_key(jnp.asarray(x, dt).reshape(b, -1))
      digit = ((key >> shift) & 0xFF).astype(jnp.int32) + offsets
      if p == 0:
        h = jnp.bincount(digit.ravel(), length=256 * b)
      else:
        match = (key >> (shift + 8)) == (prefix >> (shift + 8))[:, None]
        h = jnp.bincount(digit.ravel(), weights=match.ravel().astype(jnp.int32),
                         length=256 * b)
      h = h.reshape(b, 256)
      hist = hist + (np.asarray(h, np.int64) if host else h.astype(cdt))
    at_least = xp.cumsum(hist[:, ::-1], axis=1)[:, ::-1]   # [B, 256]: #entries with digit >= d
    d = xp.sum(at_least >= k_rem[:, None], axis=1) - 1       # largest digit whose tail reaches k
    above = xp.take_along_axis(at_least - hist, d[:, None], axis=1)[:, 0]
    k_rem = k_rem - above
    prefix = prefix | (jnp.asarray(d).astype(u) << shift)
  return _from_key(prefix, dt)


def count_greater(leaves: Leaves, threshold: jax.Array, *, or_equal: bool = False) -> jax.Array:
  """Number of entries ``> threshold`` (``>=`` with ``or_equal``) over all ``leaves``."""
  _, total, _ = _common_dtype(leaves)
  host = total >= 2**31 - 1 and not jax.config.jax_enable_x64
  cdt = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32
  n = np.int64(0) if host else jnp.asarray(0, cdt)
  for x in _iterate(leaves):
    c = jnp.sum(x >= threshold if or_equal else x > threshold, dtype=jnp.int32)
    n = n + (np.int64(c) if host else c.astype(cdt))
  return n
