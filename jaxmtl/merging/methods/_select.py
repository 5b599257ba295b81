"""Exact per-task global k-th largest ``|tau_t|`` over many leaves, without sorting them.

Used by global TIES (:func:`jaxmtl.merging.ties`, ``trim_scope="global"``) outside ``jax.jit``.
For task ``t`` it returns the k-th largest key ``bitcast(|tau_t|, uint32)`` over all merged
leaves (keys order like the magnitudes), the ``torch.kthvalue`` threshold of the official
``topk_values_mask``. Floyd-Rivest style, every step is exact and verified by exact counts:

1. *Host sample*: ``bitcast(|tau_t|)`` of ~32K entries per task (2,048 runs of 16 consecutive
   entries spread over every merged leaf) places thresholds ("edges") around the target rank.
2. *Mini pass* (``d >= 4M`` entries per task): :func:`code_leaf` counts, exactly, the entries
   of a 1-in-8 subsample of blocks above each edge; interpolating those counts places the
   edges of the full pass within a few standard deviations of the subsample quantile.
3. *Full pass*: exact counts above each edge over all entries, plus a bit per group of 8
   entries and per (task, gap between edges) saying whether the group holds an entry of that
   gap. The gap holding rank ``k`` (a few thousand entries) is extracted: the device packs
   that gap's presence bits 32 groups to a word (:func:`gap_flags`), the host lists the set
   bits, the device gathers those groups' keys with the counting arithmetic
   (:func:`gap_keys`); their population is checked against the exact count and the rank
   selected with ``np.partition``.
4. If a full pass misses (target outside the edges, too many candidates, counts that do not
   match) further full passes narrow the bracket ``[lo, hi)`` (exact counts at both ends) until
   it holds a single key or a small extractable gap: always exact, just slower.

Sharded inputs skip the host steps that would read whole arrays (step 3's extraction and the
small-problem shortcut) and narrow with full passes only, so nothing is gathered to one device.
Problems with at most ``_SMALL`` entries per task pull all keys to the host and partition them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxmtl.merging.methods import diagnostics
from jaxmtl.merging.methods._fused import (MAX_TASKS_PER_PASS, _bucket, code_leaf,
                                           edges_per_task, gap_flags, gap_keys, host_keys,
                                           keys_leaf, sub_size)

__all__ = ["kth_largest_keys"]

_SMALL = 1 << 20          # entries per task up to which all keys go to the host
_SAMPLE_RUNS = 2048       # host sample: runs of _RUN consecutive entries per task
_RUN = 16
_MINI_STRIDE = 8          # mini pass: one block of 512 entries in every 8
_MINI_MIN = 1 << 22       # entries per task from which the mini pass pays for itself
_EXTRACT_MAX = 1 << 23    # most candidate entries gathered to the host in one extraction
_MAX_PASSES = 64
_KEY_END = 1 << 32        # one past the largest uint32 key
_INF_KEY = 0x7F800000



def kth_largest_keys(pre: Sequence, others: Sequence[Sequence], is_tv: bool, k: int, *,
                     host: bool = True) -> np.ndarray:
  """Per task, the k-th largest key ``bitcast(|tau_t|)`` over all given leaves (1-indexed).

  Args:
    pre: merged pretrained leaves; others: ``others[t][i]`` finetuned (or task-vector) leaf
      ``i`` of task ``t``; is_tv: whether ``others`` are task vectors.
    k: rank, ``1 <= k <= total entries per task``.
    host: allow the host-side steps (False for sharded leaves).

  Returns:
    ``uint32 [T]`` keys; ``view(float32)`` gives the threshold magnitudes.
  """
  t_all = len(others)
  out = np.zeros(t_all, np.uint32)
  for t0 in range(0, t_all, MAX_TASKS_PER_PASS):
    tasks = list(range(t0, min(t_all, t0 + MAX_TASKS_PER_PASS)))
    out[tasks] = _Chunk(pre, [others[t] for t in tasks], is_tv, k, host).run()
  return out


def _bump(name: str, n: int = 1) -> None:
  diagnostics.bump(name, n)   # counted only inside diagnostics.collect()


def _host_flat(x) -> np.ndarray:
  """A zero-copy host view of a single-device leaf (the first shard of a sharded one)."""
  shards = getattr(x, "addressable_shards", None)
  if shards is not None and len(shards) > 1:
    x = shards[0].data
  return np.asarray(x).reshape(-1)


# lane of a single set bit b of a uint32: _DEBRUIJN[(b * 0x077CB531 mod 2**32) >> 27]
_DEBRUIJN = np.array([0, 1, 28, 2, 29, 14, 24, 3, 30, 22, 20, 15, 25, 17, 4, 8, 31, 27, 13, 23,
                      21, 19, 16, 7, 26, 12, 18, 6, 11, 5, 10, 9], np.int64)


def _set_bits(words: np.ndarray) -> list[np.ndarray]:
  """Per row of ``uint32 [R, W]`` words, the positions ``32 w + l`` of the set bits ``l`` of its
  words ``w`` (ascending). Vectorised over all rows; peels one lowest set bit per round (flags
  are sparse: most words hold none or one)."""
  r_n, w_n = words.shape
  flat = np.flatnonzero(words)
  w = words.reshape(-1)[flat].astype(np.uint32)
  keys = []
  while w.size:
    low = w & (~w + np.uint32(1))
    keys.append(flat * 32 + _DEBRUIJN[(low * np.uint32(0x077CB531)) >> np.uint32(27)])
    w = w ^ low
    more = w != 0
    flat, w = flat[more], w[more]
  # each round's keys ascend: a stable (merging) sort of a few runs is about linear
  key = np.sort(np.concatenate(keys), kind="stable") if keys else np.zeros(0, np.int64)
  cuts = np.searchsorted(key, np.arange(1, r_n) * (w_n * 32))
  return [k - r * w_n * 32 for r, k in enumerate(np.split(key, cuts))]


def _key_value(key: int) -> float:
  return float(np.uint32(min(key, _INF_KEY)).view(np.float32))


def _value_key(v: float) -> int:
  return int(np.float32(max(v, 0.0)).view(np.uint32))


class _Chunk:
  """Selection for up to 8 tasks (one :func:`code_leaf` call per leaf and pass)."""

  def __init__(self, pre, others, is_tv, k, host):
    self.pre, self.others, self.is_tv, self.k, self.host = pre, others, is_tv, k, host
    self.tn = len(others)
    self.e = edges_per_task(self.tn)
    self.sizes = [int(np.size(a)) for a in pre]
    self.d = sum(self.sizes)
    if not 1 <= k <= self.d:
      raise ValueError(f"k={k} must lie in [1, {self.d}]")
    # bracket per task: count(>= lo) >= k > count(>= hi); keys in [0, 2**32)
    self.lo = [0] * self.tn
    self.c_lo = [self.d] * self.tn
    self.hi = [_KEY_END] * self.tn
    self.c_hi = [0] * self.tn
    self.result: list[int | None] = [None] * self.tn

  # ------------------------------------------------------------------ passes

  def _leaf_others(self, i):
    return [o[i] for o in self.others]

  def _host(self, x) -> np.ndarray:
    """Flat host view of a leaf: zero-copy ``np.asarray`` when nothing is sharded (``host``),
    else the first shard (:func:`_host_flat`; ``addressable_shards`` costs ~6 us a call)."""
    return np.asarray(x).reshape(-1) if self.host else _host_flat(x)

  def _count(self, edges: np.ndarray, stride: int, presence: bool):
    """Exact counts ``[T, E]`` (int64) over all leaves (or the 1-in-``stride`` subsample)."""
    _bump("mini_passes" if stride > 1 else "full_passes")
    ej = jnp.asarray(edges, jnp.uint32)
    host_total = np.zeros(edges.shape, np.int64)
    total = jnp.zeros(edges.shape, jnp.int32)
    pres, tails, acc = [], [], 0
    for i, a in enumerate(self.pre):   # dispatched asynchronously; counts summed on device
      if acc + self.sizes[i] >= 2**31 - 1:   # ... and moved to int64 before int32 can wrap
        host_total += np.asarray(total)
        total, acc = jnp.zeros(edges.shape, jnp.int32), 0
      total, p, tl = code_leaf(total, a, self._leaf_others(i), ej, is_tv=self.is_tv,
                               stride=stride, presence=presence, loop=self.host)
      acc += self.sizes[i]
      pres.append(p)
      tails.append(tl)
    return host_total + np.asarray(total), pres, tails

  def _update(self, edges: np.ndarray, counts: np.ndarray) -> None:
    for t in range(self.tn):
      for key, c in zip(edges[t].tolist(), counts[t].tolist()):
        if c >= self.k and key > self.lo[t]:
          self.lo[t], self.c_lo[t] = key, c
        if c < self.k and key < self.hi[t]:
          self.hi[t], self.c_hi[t] = key, c
      if self.hi[t] - self.lo[t] == 1:
        self.result[t] = self.lo[t]

  # ------------------------------------------------------------------ small problems

  def _exact_small(self) -> list[int]:
    keys = [[] for _ in range(self.tn)]
    for i, a in enumerate(self.pre):
      kk = np.asarray(keys_leaf(a, self._leaf_others(i), is_tv=self.is_tv))
      for t in range(self.tn):
        keys[t].append(kk[t])
    out = []
    for t in range(self.tn):
      allk = np.concatenate(keys[t])
      out.append(int(np.partition(allk, self.d - self.k)[self.d - self.k]))
    _bump("host_small")
    return out

  # ------------------------------------------------------------------ edge placement

  def _sample(self) -> list[np.ndarray]:
    """Sorted host-sample keys per task."""
    step = max(_RUN, (self.d // _SAMPLE_RUNS) // _RUN * _RUN)
    av_all, ov_all = [], [[] for _ in range(self.tn)]
    offset = 0
    for i, a in enumerate(self.pre):
      n = self.sizes[i]
      first = (-offset) % step
      offset += n
      if first > n - _RUN:
        continue
      av = self._host(a)
      ovs = [self._host(o) for o in self._leaf_others(i)]
      lim = min([av.size] + [o.size for o in ovs])   # a sharded leaf: its first shard only
      starts = np.arange(first, min(n, lim) - _RUN + 1, step)
      if not len(starts):
        continue
      idx = (starts[:, None] + np.arange(_RUN)).reshape(-1)
      av_all.append(av[idx].astype(np.float32, copy=False))
      for t, ov in enumerate(ovs):
        ov_all[t].append(ov[idx].astype(np.float32, copy=False))
    if not av_all:
      return [np.zeros(0, np.uint32) for _ in range(self.tn)]
    av = np.concatenate(av_all)
    return [np.sort(host_keys(av, np.concatenate(ov_all[t]), self.is_tv))
            for t in range(self.tn)]

  def _spread(self) -> np.ndarray:
    """Standard-normal offsets of the edges around the target (ascending)."""
    return np.linspace(-2.6, 2.6, self.e)

  def _edges_from_sample(self, sample: list[np.ndarray], total: float, widen: float):
    """Edges at ``count(>= edge) ~ q * total - c * sigma`` read off the sorted sample."""
    q = self.k / self.d
    edges = np.zeros((self.tn, self.e), np.uint32)
    for t in range(self.tn):
      s = sample[t]
      n0 = s.size
      if n0 < 2:
        edges[t] = self._uniform_edges(t)
        continue
      sig = math.sqrt(n0 * q * (1 - q)) + 1.0
      # ascending c -> larger values -> fewer entries above
      idx = n0 - q * n0 + widen * sig * self._spread()
      keys = s[np.clip(np.floor(idx).astype(np.int64), 0, n0 - 1)]
      edges[t] = self._distinct_inside(t, keys)
    return edges

  def _edges_from_counts(self, edges: np.ndarray, counts: np.ndarray, total: int,
                         sample: list[np.ndarray], widen: float) -> np.ndarray:
    """Full-pass edges interpolated from exact subsample counts (in subsample units)."""
    q = self.k / self.d
    out = np.zeros_like(edges)
    for t in range(self.tn):
      target = q * total
      # std of the full-data quantile in subsample counts; the subsample is groups of 8
      # neighbours, counted as total / 2 independent draws
      sig = math.sqrt(2.0 * total * q * (1 - q)) + 1.0
      pts_v = [0.0] + [_key_value(int(x)) for x in edges[t]]
      pts_c = [float(total)] + [float(c) for c in counts[t]]
      top = float(sample[t][-1]) if sample[t].size else float(edges[t][-1])
      pts_v.append(max(_key_value(int(top)) * 2.0, pts_v[-1] * 2.0 + 1e-30))
      pts_c.append(0.0)
      ranks = target - widen * sig * self._spread()        # descending counts
      vals = [self._inverse(pts_v, pts_c, r) for r in ranks]
      out[t] = self._distinct_inside(t, np.array([_value_key(v) for v in vals], np.uint32))
    return out

  @staticmethod
  def _inverse(pts_v, pts_c, r: float) -> float:
    """Value where the piecewise-linear count(>= v) through the points equals ``r``."""
    for j in range(len(pts_v) - 1):
      c0, c1 = pts_c[j], pts_c[j + 1]
      if c0 >= r >= c1:
        if c0 == c1:
          return pts_v[j]
        return pts_v[j] + (pts_v[j + 1] - pts_v[j]) * (c0 - r) / (c0 - c1)
    return pts_v[0] if r > pts_c[0] else pts_v[-1]

  def _distinct_inside(self, t: int, keys) -> np.ndarray:
    """``E`` ascending keys strictly inside ``(lo, hi)``: the given ones, topped up with uniform
    ones where they coincide or fall outside, then padded by repetition."""
    lo, hi = self.lo[t], self.hi[t]
    ks = sorted({int(x) for x in keys if lo < int(x) < hi})[:self.e]
    for x in self._uniform_edges(t).tolist():
      if len(ks) >= self.e:
        break
      if lo < x < hi and x not in ks:
        ks.append(x)
    ks = sorted(ks) or [lo]
    while len(ks) < self.e:
      ks.append(ks[-1])
    return np.array(ks, np.uint32)

  def _uniform_edges(self, t: int) -> np.ndarray:
    """``E`` keys spread uniformly strictly inside ``(lo, hi)`` (``lo + 1`` always included,
    which resolves a spike of entries equal to ``lo`` in one pass)."""
    lo, hi = self.lo[t], min(self.hi[t], _INF_KEY + 1)
    if hi <= lo + 1:
      hi = self.hi[t]
    width = hi - lo
    if width <= self.e + 1:
      ks = list(range(lo + 1, hi))
    else:
      ks = [lo + 1] + [lo + (width * (j + 1)) // (self.e + 1) for j in range(1, self.e)]
    ks = sorted(set(min(max(x, lo + 1), hi - 1) for x in ks if hi - 1 >= lo + 1)) or [lo]
    while len(ks) < self.e:
      ks.append(ks[-1])
    return np.array(ks[:self.e], np.uint32)

  def _narrow_edges(self, t: int, attempt: int) -> np.ndarray:
    """Edges inside the current bracket for a task the last pass did not resolve: around the
    target interpolated from the exact counts at both ends (widening on each attempt), then
    uniform in key space, which shrinks the bracket at least ``E + 1``-fold per pass."""
    lo, hi = self.lo[t], self.hi[t]
    if attempt >= 2 or hi - lo <= self.e + 1 or hi >= _KEY_END:
      return self._uniform_edges(t)
    p = self.c_lo[t] - self.c_hi[t]
    frac = (self.c_lo[t] - self.k) / max(p, 1)          # target's position from lo
    spread = max(4.0 / math.sqrt(max(p, 1)), 0.02) * (4.0 ** attempt)
    fr = np.clip(frac + spread * np.linspace(-1.0, 1.0, self.e - 1), 0.0, 1.0)
    v_lo, v_hi = _key_value(lo), _key_value(hi)
    if v_hi > 4 * max(v_lo, 1e-38):   # the bracket spans binades: interpolate keys instead
      keys = [lo + int(f * (hi - lo)) for f in fr]
    else:
      keys = [_value_key(v_lo + f * (v_hi - v_lo)) for f in fr]
    return self._distinct_inside(t, [lo + 1] + keys)   # lo + 1: resolves a spike at lo

  # ------------------------------------------------------------------ extraction

  def _extract(self, tasks: list[int], edges: np.ndarray, pres, tails) -> None:
    """Selects the exact rank on the host for ``tasks`` whose bracket is one gap of ``edges``:
    the groups of 8 entries flagged by the presence bits of that gap are found from packed
    flags (:func:`gap_flags`), their keys gathered on the device (:func:`gap_keys`) and kept
    when inside the gap; their number must equal the exact count of the gap."""
    bits = []
    for t in tasks:
      j = int(np.searchsorted(edges[t], self.lo[t], side="right")) - 1
      bits.append(t * (self.e - 1) + j)
    bvec = jnp.asarray(bits, jnp.int32)
    flags = [gap_flags(p, bvec) if p is not None and p.shape[0] else None for p in pres]
    found = {i: _set_bits(np.asarray(f)) for i, f in enumerate(flags) if f is not None}
    width = {}   # one padded gather length per leaf shape: few programs to compile
    for i, per in found.items():
      shape = np.shape(self.pre[i])
      width[shape] = max(width.get(shape, 0), max(g.size for g in per))
    gathers = []   # (per-task group indices, device keys), all dispatched before any is read
    for i, per in found.items():
      if not max(g.size for g in per):
        continue
      idx = np.zeros((len(tasks), _bucket(width[np.shape(self.pre[i])])), np.int32)
      for r, g in enumerate(per):
        idx[r, :g.size] = g
      gathers.append((per, gap_keys(self.pre[i], [self.others[t][i] for t in tasks],
                                    jnp.asarray(idx), is_tv=self.is_tv)))
    cand = {t: [] for t in tasks}
    for tail in tails:
      tail = np.asarray(tail)
      if tail.size:
        for t in tasks:
          cand[t].append(tail[t])
    for per, keys in gathers:
      kk = np.asarray(keys)
      for r, t in enumerate(tasks):
        cand[t].append(kk[r, :per[r].size].reshape(-1))
    for t in tasks:
      c = np.concatenate(cand[t]) if cand[t] else np.zeros(0, np.uint32)
      c = c[(c >= self.lo[t]) & (c < self.hi[t])]
      p = self.c_lo[t] - self.c_hi[t]
      if c.size != p:   # host and device disagree: keep narrowing on the device instead
        _bump("extract_mismatch")
        continue
      r = self.k - self.c_hi[t]                  # r-th largest inside the gap
      self.result[t] = int(np.partition(c, c.size - r)[c.size - r])
    _bump("extractions")
    _bump("extracted_entries", int(sum(self.c_lo[t] - self.c_hi[t] for t in tasks)))

  # ------------------------------------------------------------------ driver

  def run(self) -> list[int]:
    if self.d <= _SMALL and self.host:
      return self._exact_small()
    sample = self._sample()
    edges = self._edges_from_sample(sample, self.d, 1.0)
    if self.d >= _MINI_MIN:
      mini_total = sum(sub_size(n, _MINI_STRIDE) for n in self.sizes)
      # wide edges (+-4 sigma of the sample): the subsample pass must bracket every task
      medges = self._edges_from_sample(sample, mini_total, 4.0 / 2.6)
      mcounts, _, _ = self._count(medges, _MINI_STRIDE, False)
      edges = self._edges_from_counts(medges, mcounts, mini_total, sample, 1.0)
    attempts = [0] * self.tn
    for _ in range(_MAX_PASSES):
      counts, pres, tails = self._count(edges, 1, self.host)
      self._update(edges, counts)
      todo = [t for t in range(self.tn) if self.result[t] is None]
      if not todo:
        break
      if self.host:
        gap = [t for t in todo if self.lo[t] in edges[t].tolist()
               and self.hi[t] in edges[t].tolist()]
        size = sum(8 * (self.c_lo[t] - self.c_hi[t]) for t in gap)
        if gap and size <= _EXTRACT_MAX:
          self._extract(gap, edges, pres, tails)
        todo = [t for t in range(self.tn) if self.result[t] is None]
        if not todo:
          break
      new = np.array(edges)
      for t in range(self.tn):
        if self.result[t] is None:
          new[t] = self._narrow_edges(t, attempts[t])
          attempts[t] += 1
      edges = new
    else:
      raise RuntimeError("kth_largest_keys did not converge; please report this input")
    return [int(r) for r in self.result]
